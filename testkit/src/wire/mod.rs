//! Raw protocol frames built and read by hand, one set for the integration
//! tests and the benchmark: what a client sends before and at login, and
//! reading whatever the server sends back.
//!
//! Deliberately independent of the product's own codec: a test that built
//! its frames with the code under test could not catch that code's bugs.

pub mod frames;

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};

/// Protocol 3.0 as a StartupMessage names it.
pub const PROTOCOL_3_0: u32 = 3 << 16;

/// An SSLRequest: length 8, code 80877103.
pub const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];

/// A CancelRequest (code 80877102) carrying `key`: BackendKeyData's
/// process ID and secret as the server sent them (8 bytes under protocol
/// 3.0; 3.2 secrets are longer).
pub fn cancel_request(key: &[u8]) -> Vec<u8> {
    let mut packet = ((8 + key.len()) as u32).to_be_bytes().to_vec();
    packet.extend([0x04, 0xd2, 0x16, 0x2e]);
    packet.extend(key);
    packet
}

/// A StartupMessage (protocol 3.0) with `params`.
pub fn startup_packet(params: &[(&str, &str)]) -> Vec<u8> {
    startup_packet_of(PROTOCOL_3_0, params)
}

/// A StartupMessage of protocol `version` with `params`.
pub fn startup_packet_of(version: u32, params: &[(&str, &str)]) -> Vec<u8> {
    let mut body = version.to_be_bytes().to_vec();
    for (k, v) in params {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut packet = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    packet.extend(body);
    packet
}

/// One backend message as raw-frame tests read it: its type and body.
pub type Message = (u8, Vec<u8>);

/// Reads one whole message whose length (counting itself) is at most
/// `max_len`: a bound on what a broken peer can make the reader allocate,
/// not a protocol limit. A longer or shorter-than-possible length is an
/// error, as is a close in the middle.
pub async fn try_read_message(
    s: &mut (impl AsyncRead + Unpin),
    max_len: usize,
) -> std::io::Result<Message> {
    let tag = s.read_u8().await?;
    let len = s.read_u32().await? as usize;
    if !(4..=max_len).contains(&len) {
        return Err(std::io::Error::other(format!(
            "message {:?} of length {len}",
            tag as char
        )));
    }
    let mut body = vec![0; len - 4];
    s.read_exact(&mut body).await?;
    Ok((tag, body))
}

/// Reads one whole message (up to 64 MiB); panics on a close, a reset or
/// 10 s of silence: for tests, where any of those is a failure.
pub async fn read_message(s: &mut (impl AsyncRead + Unpin)) -> Message {
    tokio::time::timeout(Duration::from_secs(10), try_read_message(s, 64 << 20))
        .await
        .expect("the proxy answered within 10 s")
        .unwrap_or_else(|e| panic!("reading a message: {e}"))
}
