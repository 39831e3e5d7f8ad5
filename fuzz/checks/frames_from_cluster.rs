//! The cluster→client frame walk (`pgtier::session::walk::walk_from_cluster`), as
//! `frames_from_client` does for the other direction, with the
//! ReadyForQuery messages the pump reads itself counted and compared.
//!
//! Shared by the fuzz target of the same name (`fuzz/fuzz_targets/`) and the
//! seed replay in the test suite (`tests/it/fuzz_seeds.rs`), so the two
//! check one definition.

use crate::walks::{check_bytes, Direction};

/// One input, as the fuzz target runs it (see `walks::check_bytes`).
pub fn run(data: &[u8]) {
    check_bytes(Direction::FromCluster, data);
}
