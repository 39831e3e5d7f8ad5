//! Which protocol version the cluster speaks (3.2 from PostgreSQL 18, 3.0
//! before): asked once with a StartupMessage that logs nothing in, so
//! that a client asking for 3.2 in proxy mode is offered no more than the
//! cluster will speak when the proxy logs in for it.

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::config::Config;
use crate::login::frames::MAX_LOGIN_FRAME;
use crate::protocol::startup::{StartupMessage, PROTOCOL_3_0, PROTOCOL_3_2};
use crate::runtime::shared::Shared;

/// Learns the newest protocol the cluster speaks: a StartupMessage for 3.2
/// that is answered either with a NegotiateProtocolVersion (an older
/// cluster) or anything else (it speaks 3.2). Nothing is logged in; the
/// connection is closed after the first answer. A cluster that has not
/// answered within `cluster.connect_timeout` gives `None` (the caller
/// tries again later; its other work must not wait on a silent cluster).
pub async fn probe_cluster_protocol(shared: &Shared) -> Option<u32> {
    let config = shared.config();
    tokio::time::timeout(config.cluster.connect_timeout, probe(shared, &config))
        .await
        .ok()
        .flatten()
}

async fn probe(shared: &Shared, config: &Config) -> Option<u32> {
    let mut stream = crate::backend::connect::connect(&config.cluster, &shared.cluster_tls())
        .await
        .ok()?;
    let probe = StartupMessage {
        minor_version: 2,
        params: vec![
            (
                "user".to_owned(),
                config
                    .auth
                    .user
                    .clone()
                    .unwrap_or_else(|| "pgtier".to_owned()),
            ),
            ("database".to_owned(), config.auth.database.clone()),
            ("application_name".to_owned(), "pgtier probe".to_owned()),
        ],
        unsupported_options: Vec::new(),
    };
    stream.write_all(&probe.encode(PROTOCOL_3_2)).await.ok()?;
    let mut buf = BytesMut::with_capacity(256);
    let header = loop {
        if let Ok(Some(h)) = crate::protocol::frame::FrameHeader::parse(&buf) {
            break h;
        }
        if stream.read_buf(&mut buf).await.ok()? == 0 || buf.len() > MAX_LOGIN_FRAME {
            return None;
        }
    };
    let newest = match header.tag {
        b'v' => {
            let mut body = buf.get(5..9)?;
            body.get_u32().max(PROTOCOL_3_0)
        }
        _ => PROTOCOL_3_2,
    };
    let _ = stream.shutdown().await;
    Some(newest)
}
