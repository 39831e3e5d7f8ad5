//! The login relay (`pgtier::login::relay`), where the proxy reads the
//! cluster's authentication messages: AuthenticationSASL's mechanism list
//! (rewritten without SCRAM-SHA-256-PLUS), SASLContinue/SASLFinal and the
//! client's SASL answers passed through, NegotiateProtocolVersion, and
//! BackendKeyData (replaced by the proxy's own key). The cluster's bytes and
//! the client's are the fuzzer's; the relay runs over real socket pairs.
//!
//! Whatever they say, the relay ends (no hang), never panics, holds a slot
//! exactly when it logged in and gives it and the cancel key back when the
//! session is dropped, never shows the client a `-PLUS` mechanism, and never
//! hands the client the cluster's own cancel secret.
//!
//! The private SASL parsing itself is in `src/login/mod.rs`; this reaches it the
//! way the cluster does.
//!
//! Shared by the fuzz target of the same name (`fuzz/fuzz_targets/`) and the
//! seed replay in the test suite (`tests/it/fuzz_seeds.rs`), so the two
//! check one definition.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use pgtier::backend::cancel::CancelKeys;
use pgtier::config::FleetConfig;
use pgtier::limits::fleet::Fleet;
use pgtier::limits::tenants::Tenants;
use pgtier::login::{relay, Admission};
use pgtier::protocol::frame::FrameHeader;
use pgtier::protocol::startup::{StartupMessage, MAX_CANCEL_SECRET};
use pgtier::stream::Stream;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

const TENANT: &str = "fuzz";
const AUTH_SASL: u32 = 10;

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime")
    })
}

/// Byte 0: protocol minor (bits 0–1) and whether a `_pq_.` option is asked
/// for (bit 2), the tenant's cap (bits 3–4); bytes 1–2: how many of the
/// rest the cluster says; the remainder is what the client says.
struct Input<'a> {
    minor: u16,
    option: bool,
    max_connections: u32,
    cluster: &'a [u8],
    client: &'a [u8],
}

fn input(data: &[u8]) -> Option<Input<'_>> {
    let (&flags, rest) = data.split_first()?;
    let (len, rest) = rest.split_first_chunk::<2>()?;
    let split = usize::from(u16::from_be_bytes(*len)).min(rest.len());
    let (cluster, client) = rest.split_at(split);
    Some(Input {
        minor: u16::from(flags & 3),
        option: flags & 4 != 0,
        max_connections: u32::from((flags >> 3) & 3),
        cluster,
        client,
    })
}

/// Whole frames in `bytes` (the relay only ever writes whole frames).
fn frames(bytes: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut rest = bytes;
    while let Ok(Some(header)) = FrameHeader::parse(rest) {
        assert!(
            header.frame_len <= rest.len(),
            "a partial frame to the client"
        );
        out.push(&rest[..header.frame_len]);
        rest = &rest[header.frame_len..];
    }
    assert!(
        rest.is_empty(),
        "bytes that are no frame sent to the client"
    );
    out
}

/// Well-formed BackendKeyData bodies in a stream of frames.
fn key_bodies(bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut rest = bytes;
    while let Ok(Some(header)) = FrameHeader::parse(rest) {
        let Some(frame) = rest.get(..header.frame_len) else {
            break;
        };
        let body = &frame[5..];
        if frame[0] == b'K' && (8..=4 + MAX_CANCEL_SECRET).contains(&body.len()) {
            out.push(body.to_vec());
        }
        rest = &rest[header.frame_len..];
    }
    out
}

async fn relay_once(input: Input<'_>) {
    let (proxy_client, mut client) = UnixStream::pair().expect("a socket pair");
    let (proxy_cluster, mut cluster) = UnixStream::pair().expect("a socket pair");
    let (to_proxy_from_cluster, to_proxy_from_client) =
        (input.cluster.to_vec(), input.client.to_vec());
    // Each peer says all it has, then ends its side, then listens.
    let cluster_side = tokio::spawn(async move {
        let _ = cluster.write_all(&to_proxy_from_cluster).await;
        let _ = cluster.shutdown().await;
        let mut heard = Vec::new();
        let _ = cluster.read_to_end(&mut heard).await;
        heard
    });
    let client_side = tokio::spawn(async move {
        let _ = client.write_all(&to_proxy_from_client).await;
        let _ = client.shutdown().await;
        let mut heard = Vec::new();
        let _ = client.read_to_end(&mut heard).await;
        heard
    });

    let mut params = vec![
        ("user".to_owned(), "u".to_owned()),
        ("database".to_owned(), TENANT.to_owned()),
    ];
    params.push(("application_name".to_owned(), "fuzz".to_owned()));
    let startup = StartupMessage {
        minor_version: input.minor,
        params,
        unsupported_options: if input.option {
            vec!["_pq_.fuzz".to_owned()]
        } else {
            Vec::new()
        },
    };
    let tenants = Tenants::default();
    let cancel_keys = Arc::new(CancelKeys::default());
    let fleet = Fleet::new(
        &FleetConfig::default(),
        std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
    );
    let mut client_stream = Stream::Unix(proxy_client);
    let mut cluster_stream = Stream::Unix(proxy_cluster);
    let admission = Admission {
        tenants: &tenants,
        name: TENANT,
        max_connections: input.max_connections,
        tier: "free",
        cancel_keys: &cancel_keys,
        fleet: &fleet,
        notice: Vec::new(),
        refuse_once_authenticated: None,
    };
    let result = tokio::time::timeout(
        Duration::from_secs(10),
        relay(&mut client_stream, &mut cluster_stream, &startup, admission),
    )
    .await
    .expect("the relay ends once both sides have said all they will");
    let held = tenants.get(TENANT).map_or(0, |t| t.connections());
    match result {
        Ok(logged_in) => {
            assert_eq!(held, 1, "a login holds exactly one slot");
            drop(logged_in);
        }
        Err(_) => assert_eq!(held, 0, "a failed login holds no slot"),
    }
    assert_eq!(tenants.get(TENANT).map_or(0, |t| t.connections()), 0);
    assert!(cancel_keys.is_empty(), "no cancel key outlives its session");
    drop(client_stream);
    drop(cluster_stream);

    let heard_by_client = client_side.await.expect("client task");
    let _heard_by_cluster = cluster_side.await.expect("cluster task");
    let cluster_keys = key_bodies(input.cluster);
    for frame in frames(&heard_by_client) {
        let body = &frame[5..];
        match frame[0] {
            b'R' if body.get(..4) == Some(&AUTH_SASL.to_be_bytes()[..]) => {
                let list = &body[4..];
                assert!(list.ends_with(b"\0\0"), "a terminated list: {list:?}");
                let mechanisms: Vec<&[u8]> = list[..list.len() - 1]
                    .split(|&b| b == 0)
                    .filter(|m| !m.is_empty())
                    .collect();
                assert!(!mechanisms.is_empty(), "something is offered");
                assert!(
                    !mechanisms.contains(&&b"SCRAM-SHA-256-PLUS"[..]),
                    "-PLUS offered to the client: {list:?}"
                );
            }
            b'K' if (8..=4 + MAX_CANCEL_SECRET).contains(&body.len()) => {
                assert!(
                    !cluster_keys.iter().any(|k| k == body),
                    "the cluster's own cancel key reached the client"
                );
            }
            _ => {}
        }
    }
}

/// One input, as the fuzz target runs it.
pub fn run(data: &[u8]) {
    if let Some(input) = input(data) {
        runtime().block_on(relay_once(input));
    }
}
