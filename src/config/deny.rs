//! The statement kinds a tier denies (`deny = [...]`), as a set: one byte
//! that a session copies and tests for every statement the gate
//! classifies, rather than a list of names.

use crate::rules::classify::DenyKind;

/// The statement kinds a tier denies, as a set.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct DenySet(u8);

impl DenySet {
    pub fn contains(self, kind: DenyKind) -> bool {
        self.0 & Self::bit(kind) != 0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn kinds(self) -> impl Iterator<Item = DenyKind> {
        DenyKind::ALL.into_iter().filter(move |k| self.contains(*k))
    }

    fn bit(kind: DenyKind) -> u8 {
        1 << (kind as u8)
    }

    /// Reads `deny = [...]`; unknown names are an error naming them.
    pub(super) fn parse(names: &[String]) -> Result<DenySet, String> {
        let mut set = DenySet::default();
        for name in names {
            let kind = DenyKind::parse(name).ok_or_else(|| {
                format!(
                    "{name:?} is not a statement kind (known: {})",
                    DenyKind::ALL.map(DenyKind::as_str).join(", ")
                )
            })?;
            set.0 |= Self::bit(kind);
        }
        Ok(set)
    }
}
