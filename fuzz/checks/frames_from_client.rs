//! The client→cluster frame walk (`pgtier::pump::walk_from_client`): any
//! bytes a logged-in client sends, split into reads anywhere, with no hook
//! and with a hook that takes some frames whole and peeks at others. The
//! walk never reaches past its buffer, and split, unsplit and the
//! protocol's reference reading (tests/it/walks/mod.rs) agree on every frame
//! boundary, every frame handed to the hook, and every request counted.
//!
//! Shared by the fuzz target of the same name (`fuzz/fuzz_targets/`) and the
//! seed replay in the test suite (`tests/it/fuzz_seeds.rs`), so the two
//! check one definition.

use crate::walks::{Direction, Rule};
use arbitrary::Arbitrary;

#[derive(Debug, Arbitrary)]
struct Input {
    /// `None`: no hook; else the largest frame taken whole, and how much
    /// of a frame is peeked at.
    hook: Option<(u16, u16)>,
    /// Where reads end (offsets into the stream).
    cuts: Vec<u16>,
    stream: Vec<u8>,
}

/// One input, as the fuzz target runs it: the bytes read as an
/// [`Input`] the way libFuzzer's `fuzz_target!` reads them.
pub fn run(data: &[u8]) {
    let Ok(input) = Input::arbitrary_take_rest(arbitrary::Unstructured::new(data)) else {
        return;
    };
    let rule = match input.hook {
        None => Rule::PASS_ALL,
        Some((whole_max, peek_len)) => Rule::mixed(usize::from(whole_max), usize::from(peek_len)),
    };
    let cuts: Vec<usize> = input.cuts.iter().map(|&c| usize::from(c)).collect();
    crate::walks::check(Direction::FromClient, rule, &input.stream, &cuts);
}
