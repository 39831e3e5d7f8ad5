//! Proxy-side SCRAM: every message a client (or, as the proxy's own
//! client, the cluster) can send into an exchange, and every stored
//! verifier auth_query can return. Whatever the bytes: an answer or an
//! error, never a panic; a verified client is one whose proof really
//! matches (its ClientKey hashes to the StoredKey).
#![no_main]

#[path = "../checks/scram.rs"]
mod check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| check::run(data));
