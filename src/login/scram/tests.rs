//! The exchange's tests: RFC 7677's vectors, round trips of the server
//! side with a libpq-like client and with the proxy's own client side,
//! channel binding and downgrades, and malformed input.

use super::*;

/// RFC 7677's example: user "user", password "pencil".
const RFC_CLIENT_FIRST: &str = "n,,n=user,r=rOprNGfwEbeRWgbNEkqO";
const RFC_SALT: &str = "W22ZaJ0SNY7soEsUEjb6gQ==";

fn verifier() -> Verifier {
    Verifier::from_password("pencil", &BASE64.decode(RFC_SALT).unwrap(), 4096)
}

#[test]
fn rfc_7677_keys_and_proof() {
    // From RFC 7677 section 3: the proof and the server signature for
    // the fixed nonces there.
    let v = verifier();
    let server_first =
        "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
    let without_proof = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
    let auth = format!("n=user,r=rOprNGfwEbeRWgbNEkqO,{server_first},{without_proof}");
    let salted = {
        let mut out = [0u8; 32];
        ring::pbkdf2::derive(
            ring::pbkdf2::PBKDF2_HMAC_SHA256,
            std::num::NonZeroU32::new(4096).unwrap(),
            &BASE64.decode(RFC_SALT).unwrap(),
            b"pencil",
            &mut out,
        );
        out
    };
    let client_key = hmac_sha256(&salted, b"Client Key");
    let proof = xor(&client_key, &hmac_sha256(&v.stored_key, auth.as_bytes()));
    assert_eq!(
        BASE64.encode(proof),
        "dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
    );
    let server_signature = hmac_sha256(&v.server_key, auth.as_bytes());
    assert_eq!(
        BASE64.encode(server_signature),
        "6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
    );
    assert_eq!(Verifier::parse(Some(&v.encode())), Ok(v));
}

/// A client that knows the password, as libpq computes it.
fn client_final(
    v_password: &str,
    gs2: &str,
    cbind: &[u8],
    client_first_bare: &str,
    server_first: &str,
) -> String {
    let nonce = attribute(server_first, 0, 'r').unwrap();
    let salt = BASE64
        .decode(attribute(server_first, 1, 's').unwrap())
        .unwrap();
    let iterations: u32 = attribute(server_first, 2, 'i').unwrap().parse().unwrap();
    let v = Verifier::from_password(v_password, &salt, iterations);
    let mut binding = gs2.as_bytes().to_vec();
    binding.extend_from_slice(cbind);
    let without_proof = format!("c={},r={nonce}", BASE64.encode(binding));
    let auth = format!("{client_first_bare},{server_first},{without_proof}");
    let mut salted = [0u8; 32];
    ring::pbkdf2::derive(
        ring::pbkdf2::PBKDF2_HMAC_SHA256,
        std::num::NonZeroU32::new(iterations).unwrap(),
        &salt,
        v_password.as_bytes(),
        &mut salted,
    );
    let client_key = hmac_sha256(&salted, b"Client Key");
    let proof = xor(&client_key, &hmac_sha256(&v.stored_key, auth.as_bytes()));
    format!("{without_proof},p={}", BASE64.encode(proof))
}

#[test]
fn the_right_password_verifies_and_its_client_key_logs_in_elsewhere() {
    let v = verifier();
    let mut server = ServerExchange::new(v.clone(), None);
    assert_eq!(server.mechanisms(), &[SCRAM_SHA_256]);
    let server_first = server
        .client_first(SCRAM_SHA_256, RFC_CLIENT_FIRST.as_bytes())
        .unwrap();
    assert!(server_first.starts_with("r=rOprNGfwEbeRWgbNEkqO"));
    let last = client_final(
        "pencil",
        "n,,",
        b"",
        "n=user,r=rOprNGfwEbeRWgbNEkqO",
        &server_first,
    );
    let verified = server.client_final(last.as_bytes()).unwrap();
    assert!(verified.server_final.starts_with("v="));

    // The recovered key answers a second exchange against the same
    // verifier (the cluster's), and the cluster's signature checks out.
    let (mut client, first) = ClientExchange::new(&v, verified.client_key, None);
    let mut cluster = ServerExchange::new(v.clone(), None);
    let (_, bare) = first.split_at(3);
    let sf = cluster
        .client_first(SCRAM_SHA_256, first.as_bytes())
        .unwrap();
    assert!(sf.contains(&bare[bare.find("r=").unwrap() + 2..]));
    let cf = client.server_first(sf.as_bytes()).unwrap();
    let done = cluster.client_final(cf.as_bytes()).unwrap();
    assert_eq!(done.client_key, verified.client_key);
    client.server_final(done.server_final.as_bytes()).unwrap();
}

#[test]
fn a_wrong_password_is_a_wrong_proof() {
    let mut server = ServerExchange::new(verifier(), None);
    let sf = server
        .client_first(SCRAM_SHA_256, RFC_CLIENT_FIRST.as_bytes())
        .unwrap();
    let last = client_final("pencil2", "n,,", b"", "n=user,r=rOprNGfwEbeRWgbNEkqO", &sf);
    assert_eq!(
        server.client_final(last.as_bytes()).unwrap_err(),
        ScramError::Proof
    );
}

#[test]
fn channel_binding_is_checked_and_downgrades_refused() {
    let channel = vec![9u8; 32];
    // Bound: the client's c= must carry our certificate hash.
    let mut server = ServerExchange::new(verifier(), Some(channel.clone()));
    assert_eq!(server.mechanisms(), &[SCRAM_SHA_256_PLUS, SCRAM_SHA_256]);
    let first = "p=tls-server-end-point,,n=,r=abc";
    let sf = server
        .client_first(SCRAM_SHA_256_PLUS, first.as_bytes())
        .unwrap();
    let good = client_final(
        "pencil",
        "p=tls-server-end-point,,",
        &channel,
        "n=,r=abc",
        &sf,
    );
    assert!(server.client_final(good.as_bytes()).is_ok());

    let mut server = ServerExchange::new(verifier(), Some(channel.clone()));
    let sf = server
        .client_first(SCRAM_SHA_256_PLUS, first.as_bytes())
        .unwrap();
    let bad = client_final(
        "pencil",
        "p=tls-server-end-point,,",
        &[1u8; 32],
        "n=,r=abc",
        &sf,
    );
    assert_eq!(
        server.client_final(bad.as_bytes()).unwrap_err(),
        ScramError::ChannelBindingMismatch
    );

    // 'y' where PLUS was offered is a downgrade; 'n' is fine; PLUS
    // without TLS is not offered.
    let mut server = ServerExchange::new(verifier(), Some(channel));
    assert_eq!(
        server
            .client_first(SCRAM_SHA_256, b"y,,n=,r=abc")
            .unwrap_err(),
        ScramError::ChannelBindingNegotiation
    );
    let mut server = ServerExchange::new(verifier(), None);
    assert!(server.client_first(SCRAM_SHA_256, b"y,,n=,r=abc").is_ok());
    let mut server = ServerExchange::new(verifier(), None);
    assert_eq!(
        server
            .client_first(SCRAM_SHA_256_PLUS, first.as_bytes())
            .unwrap_err(),
        ScramError::Mechanism(SCRAM_SHA_256_PLUS.to_owned())
    );
}

#[test]
fn verifiers_of_other_kinds_are_named() {
    assert_eq!(Verifier::parse(None), Err(VerifierError::Missing));
    assert_eq!(
        Verifier::parse(Some("md5a0e4f7a1bf4c0d6b7b6f3f55a5a1f5c3")),
        Err(VerifierError::Md5)
    );
    assert_eq!(Verifier::parse(Some("hunter2")), Err(VerifierError::Plain));
    assert_eq!(
        Verifier::parse(Some("SCRAM-SHA-256$4096:abc$x:y")),
        Err(VerifierError::Malformed)
    );
    assert_eq!(
        Verifier::parse(Some("SCRAM-SHA-256$0:c2FsdA==$AAAA:AAAA")),
        Err(VerifierError::Malformed)
    );
    assert!(format!("{:?}", verifier()).contains("4096"));
    assert!(!format!("{:?}", verifier()).contains("stored"));
}

#[test]
fn malformed_messages_are_errors_never_panics() {
    let mut state = 0x1234_5678_9abc_def0u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let alphabet = b"nyp=,r=s=i=c=biws,tls-server-end-point abc";
    let v = verifier();
    for _ in 0..5_000 {
        let len = (next() % 48) as usize;
        let msg: Vec<u8> = (0..len)
            .map(|_| alphabet[(next() % alphabet.len() as u64) as usize])
            .collect();
        let mut server = ServerExchange::new(v.clone(), Some(vec![1; 32]));
        let _ = server.client_first(SCRAM_SHA_256, &msg);
        let _ = server.client_final(&msg);
        let mut server = ServerExchange::new(v.clone(), None);
        if server.client_first(SCRAM_SHA_256, b"n,,n=,r=x").is_ok() {
            let _ = server.client_final(&msg);
        }
        let (mut client, _) = ClientExchange::new(&v, [0; 32], None);
        let _ = client.server_first(&msg);
        let _ = client.server_final(&msg);
        let _ = Verifier::parse(std::str::from_utf8(&msg).ok());
        let _ = tls_server_end_point(&msg);
    }
}
