//! The authentication phase's framing, which both login modes speak: the
//! Authentication request codes, the bound on one login message, reading
//! one whole frame, and flushing what is pending to the client. Its own
//! file so that proxy mode (`login::proxy`) does not borrow these from the
//! passthrough relay.

use std::io;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

use crate::login::LoginError;
use crate::protocol::frame::FrameHeader;
use crate::stream::Stream;

/// Larger authentication-phase messages than this are refused: real ones are
/// a few hundred bytes.
pub(crate) const MAX_LOGIN_FRAME: usize = 64 * 1024;

/// Authentication request codes (the `R` message's first field).
pub(crate) const AUTH_OK: u32 = 0;
pub(crate) const AUTH_CLEARTEXT: u32 = 3;
pub(crate) const AUTH_MD5: u32 = 5;
pub(crate) const AUTH_SASL: u32 = 10;
pub(crate) const AUTH_SASL_CONTINUE: u32 = 11;
pub(crate) const AUTH_SASL_FINAL: u32 = 12;

/// Writes `pending` to the client and flushes it (TLS keeps what a write
/// could not send until a flush), then empties it.
pub(crate) async fn flush_to(
    client: &mut Stream,
    pending: &mut BytesMut,
) -> Result<(), LoginError> {
    client
        .write_all(pending)
        .await
        .map_err(LoginError::ClientIo)?;
    client.flush().await.map_err(LoginError::ClientIo)?;
    pending.clear();
    Ok(())
}

pub(crate) enum ReadError {
    Io(io::Error),
    Protocol(String),
}

/// Reads until `buf` starts with one whole frame of at most
/// [`MAX_LOGIN_FRAME`] bytes and returns its header.
pub(crate) async fn read_frame(
    stream: &mut (impl AsyncRead + Unpin),
    buf: &mut BytesMut,
) -> Result<FrameHeader, ReadError> {
    loop {
        match FrameHeader::parse(buf) {
            Err(e) => return Err(ReadError::Protocol(e.to_string())),
            Ok(Some(h)) if h.frame_len > MAX_LOGIN_FRAME => {
                return Err(ReadError::Protocol(format!(
                    "message type {:?} of {} bytes is too long for the login phase",
                    h.tag as char, h.frame_len
                )))
            }
            Ok(Some(h)) if buf.len() >= h.frame_len => return Ok(h),
            _ => {}
        }
        buf.reserve(4096);
        let n = stream.read_buf(buf).await.map_err(ReadError::Io)?;
        if n == 0 {
            return Err(ReadError::Io(io::ErrorKind::UnexpectedEof.into()));
        }
    }
}
