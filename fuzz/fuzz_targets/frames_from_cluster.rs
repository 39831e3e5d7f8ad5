//! The cluster→client frame walk (`pgtier::pump::walk_from_cluster`), as
//! `frames_from_client` does for the other direction, with the
//! ReadyForQuery messages the pump reads itself counted and compared.
#![no_main]

#[path = "../../tests/it/walks/mod.rs"]
mod walks;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use walks::{Direction, Rule};

#[derive(Debug, Arbitrary)]
struct Input {
    /// `None`: no hook; else the largest frame taken whole, and how much
    /// of a frame is peeked at.
    hook: Option<(u16, u16)>,
    /// Where reads end (offsets into the stream).
    cuts: Vec<u16>,
    stream: Vec<u8>,
}

fuzz_target!(|input: Input| {
    let rule = match input.hook {
        None => Rule::PASS_ALL,
        Some((whole_max, peek_len)) => Rule::mixed(usize::from(whole_max), usize::from(peek_len)),
    };
    let cuts: Vec<usize> = input.cuts.iter().map(|&c| usize::from(c)).collect();
    walks::check(Direction::FromCluster, rule, &input.stream, &cuts);
});
