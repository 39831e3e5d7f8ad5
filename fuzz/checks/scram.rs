//! Proxy-side SCRAM: every message a client (or, as the proxy's own
//! client, the cluster) can send into an exchange, and every stored
//! verifier auth_query can return. Whatever the bytes: an answer or an
//! error, never a panic; a verified client is one whose proof really
//! matches (its ClientKey hashes to the StoredKey).
//!
//! Shared by the fuzz target of the same name (`fuzz/fuzz_targets/`) and the
//! seed replay in the test suite (`tests/it/fuzz_seeds.rs`), so the two
//! check one definition.

use arbitrary::Arbitrary;
use pgtier::login::scram::{
    client_key, tls_server_end_point, ClientExchange, ServerExchange, Verifier, SCRAM_SHA_256,
    SCRAM_SHA_256_PLUS,
};

#[derive(Debug, Arbitrary)]
struct Input<'a> {
    plus: bool,
    bound: bool,
    first: &'a [u8],
    last: &'a [u8],
    verifier: &'a str,
    cluster_first: &'a [u8],
    cluster_final: &'a [u8],
    cert: &'a [u8],
}

/// One input, as the fuzz target runs it: the bytes read as an
/// [`Input`] the way libFuzzer's `fuzz_target!` reads them.
pub fn run(data: &[u8]) {
    let Ok(input) = Input::arbitrary_take_rest(arbitrary::Unstructured::new(data)) else {
        return;
    };
    let verifier = Verifier::from_password("pencil", b"0123456789abcdef", 16);
    let channel = input.bound.then(|| vec![7u8; 32]);
    let mechanism = if input.plus {
        SCRAM_SHA_256_PLUS
    } else {
        SCRAM_SHA_256
    };
    let mut server = ServerExchange::new(verifier.clone(), channel);
    if server.client_first(mechanism, input.first).is_ok() {
        if let Ok(verified) = server.client_final(input.last) {
            // Only the password's own key can pass.
            assert_eq!(
                verified.client_key,
                client_key("pencil", b"0123456789abcdef", 16),
                "a proof that is not the password's was accepted"
            );
        }
    }
    let _ = Verifier::parse(Some(input.verifier));
    let _ = tls_server_end_point(input.cert);
    let (mut client, _first) = ClientExchange::new(&verifier, [3u8; 32], None);
    if client.server_first(input.cluster_first).is_ok() {
        let _ = client.server_final(input.cluster_final);
    }
}
