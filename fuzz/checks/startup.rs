//! The startup-phase decoder: the first bytes any client on the internet
//! may send. A packet is a length (checked first, before anything is
//! allocated) and a body; whatever the body, decoding ends in a packet or an
//! error, and what it accepts is what PostgreSQL accepts, read as
//! PostgreSQL reads it: no parameter twice, `database` and `user` cut to 63
//! bytes (and forwarded so).
//!
//! Shared by the fuzz target of the same name (`fuzz/fuzz_targets/`) and the
//! seed replay in the test suite (`tests/it/fuzz_seeds.rs`), so the two
//! check one definition.

use pgtier::protocol::startup::{
    check_length, decode, StartupError, StartupMessage, StartupPacket, MAX_CANCEL_SECRET,
    MAX_NAME_BYTES, MAX_STARTUP_PACKET_LEN, MIN_STARTUP_PACKET_LEN,
};

/// One input, as the fuzz target runs it.
pub fn run(data: &[u8]) {
    let Some((len, body)) = data.split_first_chunk::<4>() else {
        return;
    };
    let claimed = u32::from_be_bytes(*len);
    let in_range = (MIN_STARTUP_PACKET_LEN..=MAX_STARTUP_PACKET_LEN).contains(&(claimed as usize));
    match check_length(claimed) {
        Ok(n) => assert!(in_range && n == claimed as usize),
        Err(e) => assert!(!in_range && e == StartupError::BadLength),
    }
    // The handshake decodes exactly the body the length announced; the
    // fuzzer's body is any body.
    check(body);
}

fn check(body: &[u8]) {
    match decode(body) {
        Ok(StartupPacket::SslRequest | StartupPacket::GssEncRequest) => {
            assert_eq!(body.len(), 4, "requests have no payload");
        }
        Ok(StartupPacket::Cancel(key)) => {
            assert!((4..=MAX_CANCEL_SECRET).contains(&key.secret.len()));
            let packet = key.request_packet();
            assert_eq!(&packet[4..], body, "a cancel request round-trips");
        }
        Ok(StartupPacket::Startup(msg)) => {
            assert!(!msg.user().is_empty(), "a user name is required");
            assert!(!msg.database().is_empty(), "the tenant is never empty");
            // The tenant and the role are the names the cluster uses.
            assert!(msg.database().len() <= MAX_NAME_BYTES);
            assert!(msg.user().len() <= MAX_NAME_BYTES);
            let mut names: Vec<String> = msg
                .params
                .iter()
                .map(|(k, _)| k.to_ascii_lowercase())
                .collect();
            names.sort();
            names.dedup();
            assert_eq!(names.len(), msg.params.len(), "a parameter twice: {msg:?}");
            // PostgreSQL reads parameters up to the first empty name: that
            // is the terminator, and it must be the last byte.
            assert!(
                msg.params.iter().all(|(k, _)| !k.is_empty()),
                "an empty parameter name before the end: {msg:?}"
            );
            // What the cluster is sent decodes to the same parameters, in
            // the same order, without the protocol options.
            let encoded = msg.encode(msg.version());
            let claimed = u32::from_be_bytes([encoded[0], encoded[1], encoded[2], encoded[3]]);
            assert_eq!(claimed as usize, encoded.len());
            let again = decode(&encoded[4..]).expect("the re-encoded startup decodes");
            let expected = StartupMessage {
                unsupported_options: Vec::new(),
                ..msg
            };
            assert_eq!(again, StartupPacket::Startup(expected));
        }
        Err(_) => {}
    }
}
