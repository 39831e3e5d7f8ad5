//! PostgreSQL's token boundaries, as `scan.l` draws them: comments, quoted
//! identifiers, every string form, dollar quoting, `;` between statements,
//! and identifier names as PostgreSQL reads them (plain, `"…"`, `U&"…"`).
//! Only boundaries matter here (they decide which words are keywords and
//! where statements end), so string contents and numbers are not decoded.
//! Shared by the lexical fast path, the leading-keyword fallback, the
//! parse-tree walk and the DO-block checks.

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Tok {
    /// An unquoted identifier or keyword.
    Word,
    /// `"…"` or `U&"…"`: never a keyword.
    QuotedIdent,
    /// Any string constant: `'…'`, `E'…'`, `N'…'`, `B'…'`, `X'…'`, `U&'…'`, `$tag$…$tag$`.
    Str,
    /// `$1`.
    Param,
    Number,
    LParen,
    RParen,
    Semi,
    /// Operators and other punctuation, one byte at a time.
    Other,
}

fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
}

/// PostgreSQL's `ident_start`: letters, `_` and every byte of a multi-byte
/// character (so a non-breaking space is part of an identifier, as there).
fn is_ident_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_' || b >= 0x80
}

/// PostgreSQL's `ident_cont`: `$` continues an identifier (`a$$b` is one
/// identifier, not the start of a dollar quote).
fn is_ident_cont(b: u8) -> bool {
    is_ident_start(b) || b.is_ascii_digit() || b == b'$'
}

/// A tokenizer that follows PostgreSQL's `scan.l` as far as token boundaries
/// go; it does not decode string contents or check numbers, because only the
/// boundaries decide which words are keywords and where statements end.
pub(super) struct Lexer<'a> {
    pub(super) src: &'a [u8],
    pos: usize,
    /// `standard_conforming_strings`: whether `'…'` takes backslashes literally.
    scs: bool,
    /// A backslash was seen inside an ordinary `'…'` string, so the text lexes
    /// differently with `standard_conforming_strings` off.
    pub(super) scs_sensitive: bool,
    /// A string, quoted identifier, dollar quote or comment ran to the end.
    pub(super) unterminated: bool,
}

impl<'a> Lexer<'a> {
    pub(super) fn new(sql: &'a str, scs: bool) -> Self {
        Lexer {
            src: sql.as_bytes(),
            pos: 0,
            scs,
            scs_sensitive: false,
            unterminated: false,
        }
    }

    fn at(&self, i: usize) -> u8 {
        self.src.get(i).copied().unwrap_or(0)
    }

    /// The next token as (kind, start, end), or None at the end.
    pub(super) fn next_token(&mut self) -> Option<(Tok, usize, usize)> {
        let src = self.src;
        loop {
            while self.pos < src.len() && is_space(src[self.pos]) {
                self.pos += 1;
            }
            let start = self.pos;
            let b = *src.get(start)?;
            let next = self.at(start + 1);
            let tok = match b {
                b'-' if next == b'-' => {
                    self.pos = src[start..]
                        .iter()
                        .position(|&c| c == b'\n' || c == b'\r')
                        .map_or(src.len(), |p| start + p);
                    continue;
                }
                b'/' if next == b'*' => {
                    self.block_comment();
                    continue;
                }
                b'\'' => {
                    self.quoted(
                        start + 1,
                        if self.scs { Esc::Plain } else { Esc::Backslash },
                    );
                    Tok::Str
                }
                b'"' => {
                    self.quoted(start + 1, Esc::Ident);
                    Tok::QuotedIdent
                }
                b'$' => self.dollar(start),
                b'(' => {
                    self.pos += 1;
                    Tok::LParen
                }
                b')' => {
                    self.pos += 1;
                    Tok::RParen
                }
                b';' => {
                    self.pos += 1;
                    Tok::Semi
                }
                b'0'..=b'9' => self.number(start),
                b'.' if next.is_ascii_digit() => self.number(start),
                _ if is_ident_start(b) => self.word_or_prefixed(start, b, next),
                _ => {
                    self.pos += 1;
                    Tok::Other
                }
            };
            return Some((tok, start, self.pos));
        }
    }

    /// `/* … */`, nested as in PostgreSQL.
    fn block_comment(&mut self) {
        let src = self.src;
        let mut depth = 0usize;
        let mut i = self.pos;
        while i < src.len() {
            match (src[i], self.at(i + 1)) {
                (b'/', b'*') => {
                    depth += 1;
                    i += 2;
                }
                (b'*', b'/') => {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        self.pos = i;
                        return;
                    }
                }
                _ => i += 1,
            }
        }
        self.unterminated = true;
        self.pos = src.len();
    }

    /// The body of a quoted token starting at `i` (just past the opening
    /// quote), up to and including the closing quote.
    fn quoted(&mut self, mut i: usize, esc: Esc) {
        let src = self.src;
        let quote = if esc == Esc::Ident { b'"' } else { b'\'' };
        while i < src.len() {
            let c = src[i];
            if c == quote {
                if esc != Esc::Bits && self.at(i + 1) == quote {
                    i += 2; // '' or "" stands for one quote
                    continue;
                }
                self.pos = i + 1;
                return;
            }
            if c == b'\\' {
                match esc {
                    Esc::Backslash => {
                        i += 2;
                        continue;
                    }
                    Esc::Plain => self.scs_sensitive = true,
                    Esc::Ident | Esc::Bits | Esc::Unicode => {}
                }
            }
            i += 1;
        }
        self.unterminated = true;
        self.pos = src.len();
    }

    /// `$1`, `$tag$…$tag$`, or a lone `$`.
    fn dollar(&mut self, start: usize) -> Tok {
        let src = self.src;
        let next = self.at(start + 1);
        if next.is_ascii_digit() {
            let mut i = start + 1;
            while i < src.len() && src[i].is_ascii_digit() {
                i += 1;
            }
            self.pos = i;
            return Tok::Param;
        }
        // The tag: dolq_start dolq_cont*, where neither includes `$`.
        let mut i = start + 1;
        if i < src.len() && is_ident_start(src[i]) {
            i += 1;
            while i < src.len() && (is_ident_start(src[i]) || src[i].is_ascii_digit()) {
                i += 1;
            }
        }
        if self.at(i) != b'$' {
            self.pos = start + 1;
            return Tok::Other;
        }
        let delim = &src[start..=i];
        let body = i + 1;
        // PostgreSQL ends the string at the first occurrence of the same
        // delimiter (a longer `$x$` that merely contains it gives back its
        // last `$`, so every `$` is a candidate start).
        self.pos = match src[body..].windows(delim.len()).position(|w| w == delim) {
            Some(p) => body + p + delim.len(),
            None => {
                self.unterminated = true;
                src.len()
            }
        };
        Tok::Str
    }

    /// A number, with any trailing junk PostgreSQL would reject; never a `$`,
    /// which starts a dollar quote right after a number (`1$$…$$`).
    fn number(&mut self, start: usize) -> Tok {
        let src = self.src;
        let mut i = start;
        while i < src.len() {
            let c = src[i];
            if c.is_ascii_alphanumeric() || c == b'_' || c == b'.' || c >= 0x80 {
                i += 1;
                if (c == b'e' || c == b'E') && matches!(self.at(i), b'+' | b'-') {
                    i += 1;
                }
            } else {
                break;
            }
        }
        self.pos = i;
        Tok::Number
    }

    /// An identifier, or a string with a one-letter prefix (`E'…'`, `B'…'`,
    /// `X'…'`, `N'…'`, `U&'…'`, `U&"…"`).
    fn word_or_prefixed(&mut self, start: usize, b: u8, next: u8) -> Tok {
        let lower = b.to_ascii_lowercase();
        if next == b'\'' {
            match lower {
                b'e' => {
                    self.quoted(start + 2, Esc::Backslash);
                    return Tok::Str;
                }
                b'b' | b'x' => {
                    self.quoted(start + 2, Esc::Bits);
                    return Tok::Str;
                }
                b'n' => {
                    let esc = if self.scs { Esc::Plain } else { Esc::Backslash };
                    self.quoted(start + 2, esc);
                    return Tok::Str;
                }
                _ => {}
            }
        }
        if lower == b'u' && next == b'&' {
            match self.at(start + 2) {
                b'\'' => {
                    self.quoted(start + 3, Esc::Unicode);
                    return Tok::Str;
                }
                b'"' => {
                    self.quoted(start + 3, Esc::Ident);
                    return Tok::QuotedIdent;
                }
                _ => {}
            }
        }
        let src = self.src;
        let mut i = start + 1;
        while i < src.len() && is_ident_cont(src[i]) {
            i += 1;
        }
        self.pos = i;
        Tok::Word
    }
}

/// How a quoted token treats `\` and doubled quotes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Esc {
    /// `'…'` with `standard_conforming_strings` on: `''` only; a `\` is noted.
    Plain,
    /// `E'…'`, or `'…'` with it off: `\x` and `''`.
    Backslash,
    /// `U&'…'`: `''` only, whatever the setting.
    Unicode,
    /// `B'…'`, `X'…'`: the first quote ends it.
    Bits,
    /// `"…"`: `""` only.
    Ident,
}

/// Whether `sql` has a backslash inside an ordinary string, i.e. would lex
/// differently with `standard_conforming_strings` off.
pub(super) fn lexes_differently_without_scs(sql: &str) -> bool {
    if !sql.as_bytes().contains(&b'\\') {
        return false;
    }
    let mut lexer = Lexer::new(sql, true);
    while lexer.next_token().is_some() {}
    lexer.scs_sensitive
}

/// Whether `sql` ends inside a string, quoted identifier or comment when read
/// with `standard_conforming_strings` off.
pub(super) fn unterminated_without_scs(sql: &str) -> bool {
    let mut lexer = Lexer::new(sql, false);
    while lexer.next_token().is_some() {}
    lexer.unterminated
}

pub(super) fn word_is(src: &[u8], start: usize, end: usize, kw: &[u8]) -> bool {
    end - start == kw.len() && src[start..end].eq_ignore_ascii_case(kw)
}

/// An identifier token as PostgreSQL reads its name.
pub(super) enum Ident<'a> {
    /// A word, or a `"…"` identifier's content (a doubled quote cannot be
    /// part of any name that matters here, so it is left as is).
    Plain(&'a [u8]),
    /// A `U&"…"` identifier's content, escapes still to decode.
    Unicode(&'a [u8]),
}

pub(super) fn ident_of(src: &[u8], tok: Tok, start: usize, end: usize) -> Option<Ident<'_>> {
    match tok {
        Tok::Word => Some(Ident::Plain(&src[start..end])),
        Tok::QuotedIdent if src[start] == b'"' => {
            Some(Ident::Plain(src.get(start + 1..end.saturating_sub(1))?))
        }
        Tok::QuotedIdent => Some(Ident::Unicode(src.get(start + 3..end.saturating_sub(1))?)),
        _ => None,
    }
}

/// A `U&"…"` identifier's name with `esc` as its escape character (`\`
/// unless UESCAPE says otherwise); None when it does not decode.
pub(super) fn decode_unicode_ident(body: &[u8], esc: u8) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(body.len());
    let mut i = 0;
    while i < body.len() {
        let b = body[i];
        if b == b'"' && body.get(i + 1) == Some(&b'"') {
            out.push(b'"');
            i += 2;
        } else if b != esc {
            out.push(b);
            i += 1;
        } else if body.get(i + 1) == Some(&esc) {
            out.push(esc);
            i += 2;
        } else {
            let (skip, digits) = if body.get(i + 1) == Some(&b'+') {
                (2, 6)
            } else {
                (1, 4)
            };
            let hex = body.get(i + skip..i + skip + digits)?;
            let code = u32::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?;
            let mut buf = [0u8; 4];
            out.extend_from_slice(char::from_u32(code)?.encode_utf8(&mut buf).as_bytes());
            i += skip + digits;
        }
    }
    Some(out)
}
