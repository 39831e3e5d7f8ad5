//! The cluster→client frame walk (`pgtier::session::walk::walk_from_cluster`), as
//! `frames_from_client` does for the other direction, with the
//! ReadyForQuery messages the pump reads itself counted and compared.
#![no_main]

#[path = "../../tests/it/walks/mod.rs"]
mod walks;
#[path = "../checks/frames_from_cluster.rs"]
mod check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| check::run(data));
