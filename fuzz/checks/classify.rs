//! The statement classifier on any text a client can send: the Query
//! string as UTF-8 when it is, and lossily decoded as well (the proxy
//! classifies what it can read). It must never panic, must give the same
//! answer every time and through the cache, and a lexical verdict must be
//! the verdict.
//!
//! Shared by the fuzz target of the same name (`fuzz/fuzz_targets/`) and the
//! seed replay in the test suite (`tests/it/fuzz_seeds.rs`), so the two
//! check one definition.

use std::sync::OnceLock;

use pgtier::rules::classify::{classify, classify_lexical, Classifier};

fn classifier() -> &'static Classifier {
    static CLASSIFIER: OnceLock<Classifier> = OnceLock::new();
    CLASSIFIER.get_or_init(Classifier::new)
}

fn check(sql: &str) {
    let first = classify(sql);
    assert_eq!(first, classify(sql), "deterministic");
    assert_eq!(*classifier().classify(sql), first, "the cache agrees");
    assert_eq!(*classifier().classify(sql), first, "a cache hit agrees");
    if let Some(lexical) = classify_lexical(sql) {
        assert_eq!(lexical, first, "the fast path's verdict is the verdict");
    }
}

/// One input, as the fuzz target runs it.
pub fn run(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        check(text);
    }
    check(&String::from_utf8_lossy(data));
}
