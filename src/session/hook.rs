//! The interface the pump offers a session's rules: per direction, a hook
//! that asks for the few frames it wants to see and says what to do with
//! them. Its own module so that rules (the quota gate, the ping watch) and
//! the pump depend on it, not on each other.

use bytes::BytesMut;

use crate::protocol::frame::{FrameHeader, Interest};

/// What a hook decides about a frame it was handed whole.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Pass it on unchanged.
    Forward,
    /// Send these bytes (whole messages) in its place.
    Replace(BytesMut),
}

/// A session's rules for one direction: the few frames they want to see,
/// and what to do with them. Called from the pump's loop, in stream order.
pub trait Hook {
    /// Once per batch of reads, before its frames are walked: the moment to
    /// notice a reloaded configuration.
    fn batch(&mut self) {}
    /// What to hand over of a frame whose header has arrived (asked once
    /// per frame).
    fn interest(&mut self, header: &FrameHeader) -> Interest;
    /// A frame the hook asked for: all of it (`Interest::Whole`), or its
    /// first bytes (`Interest::Peek`, whose verdict must be `Forward`).
    fn frame(&mut self, header: &FrameHeader, bytes: &[u8]) -> Verdict;
}

/// No rules: every frame passes.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoHook;

impl Hook for NoHook {
    fn interest(&mut self, _: &FrameHeader) -> Interest {
        Interest::Pass
    }

    fn frame(&mut self, _: &FrameHeader, _: &[u8]) -> Verdict {
        Verdict::Forward
    }
}
