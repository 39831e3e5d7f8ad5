//! Property tests of the pump's frame walks: random frame streams, split
//! into reads at random points, give the same frame boundaries, the same
//! frames handed (whole or peeked) to a hook, and the same counts as the
//! unsplit stream and as the protocol's reference reading
//! (`tests/it/walks/mod.rs`, which the fuzz targets share).
//!
//! No cluster, no sockets: these run in well under a second.

use crate::walks;

use bytes::BytesMut;
use pgtier::protocol::frame::{put_frame, Scanner};
use pgtier::session::hook::NoHook;
use pgtier::session::walk::{walk_from_cluster, Splices};
use proptest::prelude::*;
use walks::{Direction, Rule};

/// Tags of both directions, so each walk meets the tags it counts (`Q`,
/// `S`, `F`, `X`; `Z`) among others.
const TAGS: &[u8] = b"QPBEDSFXHCcdfpZTRKNA12ns";

/// One frame: a tag and a body; ReadyForQuery carries its status byte.
fn frame() -> impl Strategy<Value = Vec<u8>> {
    (
        prop::sample::select(TAGS),
        prop::collection::vec(any::<u8>(), 0..300),
        prop::sample::select(&b"ITE"[..]),
    )
        .prop_map(|(tag, body, status)| {
            let mut out = BytesMut::new();
            if tag == b'Z' {
                put_frame(&mut out, tag, &[status]);
            } else {
                put_frame(&mut out, tag, &body);
            }
            out.to_vec()
        })
}

/// Up to 24 frames, sometimes followed by a few bytes of anything (a torn
/// header, a length below 4, the start of a huge frame).
fn stream() -> impl Strategy<Value = Vec<u8>> {
    (
        prop::collection::vec(frame(), 0..24),
        prop_oneof![
            3 => Just(Vec::new()),
            1 => prop::collection::vec(any::<u8>(), 1..12),
        ],
    )
        .prop_map(|(frames, tail)| {
            let mut stream = frames.concat();
            stream.extend(tail);
            stream
        })
}

/// A stream and where its reads end.
fn split_stream() -> impl Strategy<Value = (Vec<u8>, Vec<usize>)> {
    stream().prop_flat_map(|s| {
        let len = s.len().max(1);
        (Just(s), prop::collection::vec(0..len, 0..16))
    })
}

/// No hook, or one that takes some tags whole (up to a size that some
/// frames exceed) and peeks at others.
fn rule() -> impl Strategy<Value = Rule> {
    prop_oneof![
        Just(Rule::PASS_ALL),
        (0usize..400, 0usize..40)
            .prop_map(|(whole_max, peek_len)| Rule::mixed(whole_max, peek_len)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1_000))]

    #[test]
    fn client_streams_split_anywhere_walk_the_same((stream, cuts) in split_stream(), rule in rule()) {
        walks::check(Direction::FromClient, rule, &stream, &cuts);
    }

    #[test]
    fn cluster_streams_split_anywhere_walk_the_same((stream, cuts) in split_stream(), rule in rule()) {
        walks::check(Direction::FromCluster, rule, &stream, &cuts);
    }
}

/// The model itself, on a stream whose reading is known by hand, so that
/// a model that agreed with a wrong walk could not go unnoticed.
#[test]
fn the_model_reads_a_known_stream() {
    let mut stream = BytesMut::new();
    put_frame(&mut stream, b'Q', b"select 1\0");
    put_frame(&mut stream, b'D', &[0u8; 20]);
    put_frame(&mut stream, b'S', b"");
    put_frame(&mut stream, b'X', b"");
    let out = walks::model(Direction::FromClient, Rule::mixed(100, 7), &stream);
    // 'Q' = 81 ≡ 0 (mod 3): whole; 'D' = 68 ≡ 2: passes; 'S' = 83 ≡ 2;
    // 'X': the pump's own, never the hook's; the walk ends there.
    assert_eq!(
        out.seen,
        vec![
            walks::Seen::Asked {
                tag: b'Q',
                frame_len: 14
            },
            walks::Seen::Whole(stream[..14].to_vec()),
            walks::Seen::Asked {
                tag: b'D',
                frame_len: 25
            },
            walks::Seen::Asked {
                tag: b'S',
                frame_len: 5
            },
        ]
    );
    assert_eq!((out.requests, out.terminate), (2, true));
    assert_eq!(out.forwarded, stream.len());
    assert_eq!(out.error, None);
    walks::check(
        Direction::FromClient,
        Rule::mixed(100, 7),
        &stream,
        &[3, 20],
    );
}

/// A ReadyForQuery without its status byte once got the status of the
/// *previous* ReadyForQuery of the same read (or idle when there was none
/// in it): the status depended on how the stream was split. It is now the
/// protocol error it is, however the stream is split.
#[test]
fn a_ready_for_query_without_status_reads_the_same_however_split() {
    let mut stream = BytesMut::new();
    put_frame(&mut stream, b'Z', b"T");
    put_frame(&mut stream, b'Z', b"");
    // One read.
    let mut scanner = Scanner::default();
    let whole = walk_from_cluster(&mut scanner, &stream, &mut NoHook, &mut Splices::default())
        .map(|r| r.status);
    // The malformed one is not walked, so none of it is forwarded (found
    // by the frames_from_cluster fuzz target: it was walked, then refused).
    assert!(whole.is_err());
    assert_eq!(scanner.walked(), 6, "only the well-formed ReadyForQuery");
    // Two reads, split between the messages; the status of the last
    // ReadyForQuery is what the pump keeps.
    let mut scanner = Scanner::default();
    let first = walk_from_cluster(
        &mut scanner,
        &stream[..6],
        &mut NoHook,
        &mut Splices::default(),
    );
    assert!(first.is_ok());
    let mut scanner = Scanner::default();
    let split = walk_from_cluster(
        &mut scanner,
        &stream[6..],
        &mut NoHook,
        &mut Splices::default(),
    )
    .map(|r| r.status);
    assert_eq!(
        scanner.walked(),
        0,
        "nothing of the malformed ReadyForQuery"
    );
    assert_eq!(
        whole, split,
        "one read says {whole:?}, two reads say {split:?}"
    );
}
