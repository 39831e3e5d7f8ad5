//! The client→cluster frame walk (`pgtier::session::walk::walk_from_client`): any
//! bytes a logged-in client sends, split into reads anywhere, with no hook
//! and with a hook that takes some frames whole and peeks at others. The
//! walk never reaches past its buffer, and split, unsplit and the
//! protocol's reference reading (tests/it/walks/mod.rs) agree on every frame
//! boundary, every frame handed to the hook, and every request counted.
#![no_main]

#[path = "../../tests/it/walks/mod.rs"]
mod walks;
#[path = "../checks/frames_from_client.rs"]
mod check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| check::run(data));
