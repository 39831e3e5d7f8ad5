//! The client→cluster frame walk (`pgtier::session::walk::walk_from_client`): any
//! bytes a logged-in client sends, split into reads anywhere, with no hook
//! and with a hook that takes some frames whole and peeks at others. The
//! walk never reaches past its buffer, and split, unsplit and the
//! protocol's reference reading (tests/it/walks/mod.rs) agree on every frame
//! boundary, every frame handed to the hook, and every request counted.
//!
//! Shared by the fuzz target of the same name (`fuzz/fuzz_targets/`) and the
//! seed replay in the test suite (`tests/it/fuzz_seeds.rs`), so the two
//! check one definition.

use crate::walks::{check_bytes, Direction};

/// One input, as the fuzz target runs it (see `walks::check_bytes`).
pub fn run(data: &[u8]) {
    check_bytes(Direction::FromClient, data);
}
