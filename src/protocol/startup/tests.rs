//! Tests of the startup packets' parsing: what is accepted, what is
//! refused (with the SQLSTATE and metrics label the client and the
//! operator see), that random bytes never panic, and cancel requests of
//! both protocol versions.

use super::*;
use crate::refusal::Refusal;

/// The SQLSTATE the client is refused with.
fn code(e: &StartupError) -> &'static str {
    Refusal::Startup(e.clone()).render().code
}

/// The refusal's metrics label.
fn label(e: &StartupError) -> &'static str {
    Refusal::Startup(e.clone()).reason().as_str()
}

fn startup_body(version: u32, params: &[(&str, &str)]) -> Vec<u8> {
    let mut body = version.to_be_bytes().to_vec();
    for (k, v) in params {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    body
}

#[test]
fn database_defaults_to_user() {
    let body = startup_body(PROTOCOL_3_0, &[("user", "alice")]);
    let StartupPacket::Startup(msg) = decode(&body).unwrap() else {
        panic!("not a startup")
    };
    assert_eq!(msg.database(), "alice");
    assert_eq!(msg.version(), PROTOCOL_3_0);
}

#[test]
fn protocol_options_and_newer_minor_need_negotiation() {
    let body = startup_body(
        PROTOCOL_3_0 + 2,
        &[("user", "a"), ("database", "d"), ("_pq_.x", "1")],
    );
    let StartupPacket::Startup(msg) = decode(&body).unwrap() else {
        panic!("not a startup")
    };
    assert_eq!(msg.version(), PROTOCOL_3_2);
    assert_eq!(msg.unsupported_options, vec!["_pq_.x".to_owned()]);
    // The cluster gets the version asked for, without the options.
    let encoded = msg.encode(PROTOCOL_3_0);
    assert_eq!(
        decode(&encoded[4..]).unwrap(),
        StartupPacket::Startup(StartupMessage {
            minor_version: 0,
            params: msg.params.clone(),
            unsupported_options: vec![],
        })
    );
}

#[test]
fn malformed_packets_are_errors_not_panics() {
    assert_eq!(decode(&[]), Err(StartupError::BadLength));
    assert_eq!(decode(&[0, 3, 0, 0]), Err(StartupError::MissingTerminator));
    assert_eq!(
        decode(&[0, 3, 0, 0, b'u', 0]),
        Err(StartupError::MissingTerminator)
    );
    assert_eq!(
        decode(&startup_body(PROTOCOL_3_0, &[("database", "x")])),
        Err(StartupError::NoUser)
    );
    // As PostgreSQL: no user name is 28000, not a protocol violation.
    assert_eq!(code(&StartupError::NoUser), "28000");
    assert_eq!(
        code(&StartupError::UnsupportedVersion { major: 2, minor: 0 }),
        "0A000"
    );
    assert_eq!(code(&StartupError::BadLength), "08P01");
    assert_eq!(
        decode(&startup_body(2 << 16, &[("user", "x")])),
        Err(StartupError::UnsupportedVersion { major: 2, minor: 0 })
    );
    assert!(check_length(7).is_err());
    assert!(check_length(10_001).is_err());
    // Every prefix of a valid packet decodes to something or an error.
    let body = startup_body(PROTOCOL_3_0, &[("user", "alice"), ("database", "db")]);
    for cut in 0..body.len() {
        let _ = decode(&body[..cut]);
    }
}

/// Found by `fuzz/fuzz_targets/startup.rs`: parameters after an empty
/// name were accepted (PostgreSQL stops at the empty name, and refuses
/// the packet unless that was the last byte).
#[test]
fn an_empty_parameter_name_before_the_end_is_refused() {
    let crash = b"\0\x03\0\0user\0alice\0database\0shoo\0appl\0\0\0\0-\x06n_name\0p#ql\0\0";
    assert_eq!(decode(crash), Err(StartupError::MissingTerminator));
    let mut body = PROTOCOL_3_0.to_be_bytes().to_vec();
    body.extend_from_slice(b"user\0a\0\0\0database\0b\0\0");
    assert_eq!(decode(&body), Err(StartupError::MissingTerminator));
    // An empty value is still a value.
    let body = startup_body(PROTOCOL_3_0, &[("user", "a"), ("options", "")]);
    assert!(matches!(decode(&body), Ok(StartupPacket::Startup(_))));
}

fn decode_startup(params: &[(&str, &str)]) -> Result<StartupMessage, StartupError> {
    match decode(&startup_body(PROTOCOL_3_0, params))? {
        StartupPacket::Startup(msg) => Ok(msg),
        other => panic!("not a startup: {other:?}"),
    }
}

/// PostgreSQL keeps the last value of a parameter given twice; the
/// proxy used to read the first, so `database=acme, database=hobby`
/// was counted as acme and opened hobby. Any name twice is refused,
/// wherever it stands and whatever the other parameters.
#[test]
fn a_parameter_given_twice_is_refused_wherever_it_stands() {
    let dup = |name: &str| Err(StartupError::DuplicateParameter(name.to_owned()));
    for params in [
        &[("user", "u"), ("database", "a"), ("database", "b")][..],
        &[("database", "a"), ("user", "u"), ("database", "b")],
        &[("database", "a"), ("database", "a"), ("user", "u")],
        &[("database", "a"), ("database", ""), ("user", "u")],
        &[("database", ""), ("user", "u"), ("database", "b")],
    ] {
        assert_eq!(decode_startup(params), dup("database"), "{params:?}");
    }
    for params in [
        &[("user", "x"), ("user", "hobby")][..],
        &[("user", "x"), ("database", "d"), ("user", "hobby")],
        &[("user", ""), ("user", "hobby")],
        &[("user", "hobby"), ("user", "")],
    ] {
        assert_eq!(decode_startup(params), dup("user"), "{params:?}");
    }
    assert_eq!(
        decode_startup(&[("user", "u"), ("options", "-c a=1"), ("options", "")]),
        dup("options")
    );
    assert_eq!(
        decode_startup(&[
            ("user", "u"),
            ("client_encoding", "UTF8"),
            ("application_name", "x"),
            ("client_encoding", "SJIS"),
        ]),
        dup("client_encoding")
    );
    // Setting names are case-insensitive to PostgreSQL: one setting.
    assert_eq!(
        decode_startup(&[
            ("user", "u"),
            ("client_encoding", "UTF8"),
            ("Client_Encoding", "SJIS")
        ]),
        dup("Client_Encoding")
    );
    assert_eq!(
        decode_startup(&[("user", "u"), ("_pq_.x", "1"), ("_pq_.x", "2")]),
        dup("_pq_.x")
    );
    let err = decode_startup(&[("user", "u"), ("user", "v")]).unwrap_err();
    assert_eq!(code(&err), "08P01");
    assert_eq!(label(&err), "duplicate_parameter");
    assert_eq!(
        err.to_string(),
        "invalid startup packet layout: parameter \"user\" given twice"
    );
    // `Database` is a setting to PostgreSQL (an unknown one, which it
    // refuses), not the database; next to `database` it is the same
    // name in another case, so refused like any other pair.
    let msg = decode_startup(&[("user", "u"), ("Database", "e")]).unwrap();
    assert_eq!(msg.database(), "u");
    assert_eq!(
        decode_startup(&[("user", "u"), ("database", "d"), ("Database", "e")]),
        dup("Database")
    );
}

#[test]
fn settings_are_found_whatever_their_case() {
    let msg = decode_startup(&[("user", "u"), ("Client_Encoding", "SJIS")]).unwrap();
    assert_eq!(msg.setting("client_encoding"), Some("SJIS"));
    assert_eq!(msg.param("client_encoding"), None);
    assert_eq!(msg.setting("timezone"), None);
}

/// PostgreSQL (15, 17 and 18 alike) cuts `database` and `user` to 63
/// bytes before the lookup: `<63 bytes>zzz` is the same database as
/// `<63 bytes>`, so it must be the same tenant, and the cluster gets
/// the name the proxy counts.
#[test]
fn names_are_cut_to_63_bytes_as_the_cluster_cuts_them() {
    let name63 = "d".repeat(63);
    for suffix in ["", "z", "zzz", &"z".repeat(100)] {
        let long = format!("{name63}{suffix}");
        let user = format!("{}{suffix}", "u".repeat(63));
        let msg = decode_startup(&[("user", &user), ("database", &long)]).unwrap();
        assert_eq!(msg.database(), name63);
        assert_eq!(msg.user(), "u".repeat(63));
        let StartupPacket::Startup(forwarded) = decode(&msg.encode(PROTOCOL_3_0)[4..]).unwrap()
        else {
            panic!("not a startup")
        };
        assert_eq!(forwarded.param("database"), Some(name63.as_str()));
        assert_eq!(forwarded.param("user"), Some("u".repeat(63).as_str()));
    }
    // No database: the user's (truncated) name, which is what
    // PostgreSQL's default-then-truncate gives too.
    for database in [None, Some("")] {
        let long_user = format!("{}xyz", "h".repeat(63));
        let mut params = vec![("user", long_user.as_str())];
        params.extend(database.map(|d| ("database", d)));
        let msg = decode_startup(&params).unwrap();
        assert_eq!(msg.database(), "h".repeat(63));
        assert_eq!(msg.user(), "h".repeat(63));
    }
    // Other parameters are not names: left alone, whatever their case.
    let long = "x".repeat(80);
    let msg = decode_startup(&[
        ("user", "u"),
        ("application_name", &long),
        ("Database", &long),
    ])
    .unwrap();
    assert_eq!(msg.param("application_name"), Some(long.as_str()));
    assert_eq!(msg.param("Database"), Some(long.as_str()));
    assert_eq!(msg.database(), "u");
}

/// A cut at byte 63 that falls inside a character names something no
/// UTF-8 database holds and the proxy cannot represent: refused. A
/// character that ends at byte 63, or starts at byte 64, is fine.
#[test]
fn a_cut_inside_a_multibyte_character_is_refused() {
    for (ch, width) in [("é", 2), ("€", 3), ("𝄞", 4)] {
        for pad in 63 - width..=63 {
            let name = format!("{}{ch}tail", "a".repeat(pad));
            let cut_inside = pad < 63 && pad + width > 63;
            for key in ["database", "user"] {
                let params = [("user", "u"), (key, name.as_str())];
                let params = if key == "user" {
                    &params[1..]
                } else {
                    &params[..]
                };
                let got = decode_startup(params);
                if cut_inside {
                    let err = got.unwrap_err();
                    assert_eq!(err, StartupError::NameCutInCharacter { what: key });
                    assert_eq!(code(&err), "08P01");
                    assert_eq!(label(&err), "name_cut_in_character");
                } else {
                    let msg = got.unwrap();
                    let value = msg.param(key).unwrap();
                    assert_eq!(value.as_bytes(), &name.as_bytes()[..63], "{key} {pad} {ch}");
                }
            }
        }
    }
    // Exactly 63 bytes ending in a multibyte character: untouched.
    let name = format!("{}é", "a".repeat(61));
    assert_eq!(name.len(), 63);
    assert_eq!(decode_startup(&[("user", &name)]).unwrap().database(), name);
}

/// A walsender connection may open no database at all (`replication=
/// true`) and speaks commands the proxy does not read.
#[test]
fn replication_connections_are_refused() {
    for value in ["true", "database", "false", "0", ""] {
        let err = decode_startup(&[("user", "u"), ("replication", value)]).unwrap_err();
        assert_eq!(err, StartupError::Replication);
        assert_eq!(code(&err), "0A000");
        assert_eq!(label(&err), "replication");
    }
}

#[test]
fn random_bytes_never_panic() {
    // A small deterministic generator: the same million bytes every run.
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for _ in 0..20_000 {
        let len = (next() % 64) as usize;
        let mut body: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        // Half the cases start like a real v3 startup, to get past the
        // version check into the parameter parser.
        if next() % 2 == 0 && body.len() >= 4 {
            body[..4].copy_from_slice(&PROTOCOL_3_0.to_be_bytes());
        }
        let _ = decode(&body);
        let _ = check_length(next() as u32);
    }
}

#[test]
fn cancel_requests_of_both_protocol_versions_round_trip() {
    for secret_len in [4, 32, MAX_CANCEL_SECRET] {
        let key = CancelKey {
            pid: 42,
            secret: vec![7u8; secret_len].into(),
        };
        let packet = key.request_packet();
        assert_eq!(packet.len(), 12 + secret_len);
        assert_eq!(
            u32::from_be_bytes(packet[..4].try_into().unwrap()) as usize,
            packet.len()
        );
        assert_eq!(decode(&packet[4..]), Ok(StartupPacket::Cancel(key.clone())));
        assert_eq!(
            CancelKey::from_backend_key_data(&key.backend_key_data()),
            Some(key)
        );
    }
    let mut short = CANCEL_REQUEST_CODE.to_be_bytes().to_vec();
    short.extend_from_slice(&[0, 0, 0, 1, 9, 9, 9]);
    assert_eq!(decode(&short), Err(StartupError::BadCancel));
    let mut long = CANCEL_REQUEST_CODE.to_be_bytes().to_vec();
    long.extend_from_slice(&vec![1u8; 4 + MAX_CANCEL_SECRET + 1]);
    assert_eq!(decode(&long), Err(StartupError::BadCancel));
}
