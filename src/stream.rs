//! One byte-stream type for both legs, plaintext or TLS, so the handshake,
//! the relay and the pump are written once.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf, ReadHalf, WriteHalf};
use tokio::net::{TcpStream, UnixStream};

/// A TCP connection, possibly wrapped in TLS (as the server side toward
/// clients, or as the client side toward the cluster), or a Unix socket to a
/// cluster on the same host.
#[derive(Debug)]
pub enum Stream {
    Plain(TcpStream),
    Unix(UnixStream),
    ServerTls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    ClusterTls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Stream {
    pub fn is_tls(&self) -> bool {
        matches!(self, Stream::ServerTls(_) | Stream::ClusterTls(_))
    }
}

/// A stream's read side, apart from its write side, so that the pump's two
/// directions run at once. A socket (TCP or Unix) splits without a lock and
/// can be waited on without a buffer ([`ReadSide::wait_readable`]); a TLS
/// stream, whose two sides share one TLS state, splits behind tokio's lock.
#[derive(Debug)]
pub enum ReadSide {
    Tcp(tokio::net::tcp::OwnedReadHalf),
    Unix(tokio::net::unix::OwnedReadHalf),
    Tls(ReadHalf<Stream>),
}

/// A stream's write side; see [`ReadSide`].
#[derive(Debug)]
pub enum WriteSide {
    Tcp(tokio::net::tcp::OwnedWriteHalf),
    Unix(tokio::net::unix::OwnedWriteHalf),
    Tls(WriteHalf<Stream>),
}

impl Stream {
    pub fn split(self) -> (ReadSide, WriteSide) {
        match self {
            Stream::Plain(s) => {
                let (r, w) = s.into_split();
                (ReadSide::Tcp(r), WriteSide::Tcp(w))
            }
            Stream::Unix(s) => {
                let (r, w) = s.into_split();
                (ReadSide::Unix(r), WriteSide::Unix(w))
            }
            tls => {
                let (r, w) = tokio::io::split(tls);
                (ReadSide::Tls(r), WriteSide::Tls(w))
            }
        }
    }

    /// The stream `split` made these two sides of.
    ///
    /// # Panics
    /// If they are sides of different streams: `split`'s callers keep
    /// both and give them back together.
    pub fn unsplit(read: ReadSide, write: WriteSide) -> Stream {
        const APART: &str = "the two sides of one stream";
        match (read, write) {
            (ReadSide::Tcp(r), WriteSide::Tcp(w)) => Stream::Plain(r.reunite(w).expect(APART)),
            (ReadSide::Unix(r), WriteSide::Unix(w)) => Stream::Unix(r.reunite(w).expect(APART)),
            (ReadSide::Tls(r), WriteSide::Tls(w)) => r.unsplit(w),
            _ => panic!("{APART}"),
        }
    }
}

impl ReadSide {
    /// A socket: waits until a read would not block, without a buffer
    /// (`Ok(true)`). Else (TLS, whose readiness is its own state's, not the
    /// socket's) returns `Ok(false)` at once: only a read can tell.
    pub async fn wait_readable(&self) -> io::Result<bool> {
        match self {
            ReadSide::Tcp(r) => r.readable().await.map(|()| true),
            ReadSide::Unix(r) => r.readable().await.map(|()| true),
            ReadSide::Tls(_) => Ok(false),
        }
    }
}

/// `AsyncRead` for an enum of streams: each call goes to the variant's
/// stream (every variant holds one, boxed or not).
macro_rules! delegate_read {
    ($ty:ident: $($variant:ident),+) => {
        impl AsyncRead for $ty {
            fn poll_read(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &mut ReadBuf<'_>,
            ) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    $($ty::$variant(s) => Pin::new(s).poll_read(cx, buf),)+
                }
            }
        }
    };
}

/// `AsyncWrite` for an enum of streams; see [`delegate_read`].
macro_rules! delegate_write {
    ($ty:ident: $($variant:ident),+) => {
        impl AsyncWrite for $ty {
            fn poll_write(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &[u8],
            ) -> Poll<io::Result<usize>> {
                match self.get_mut() {
                    $($ty::$variant(s) => Pin::new(s).poll_write(cx, buf),)+
                }
            }

            fn poll_write_vectored(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                bufs: &[io::IoSlice<'_>],
            ) -> Poll<io::Result<usize>> {
                match self.get_mut() {
                    $($ty::$variant(s) => Pin::new(s).poll_write_vectored(cx, bufs),)+
                }
            }

            fn is_write_vectored(&self) -> bool {
                match self {
                    $($ty::$variant(s) => s.is_write_vectored(),)+
                }
            }

            fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    $($ty::$variant(s) => Pin::new(s).poll_flush(cx),)+
                }
            }

            fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    $($ty::$variant(s) => Pin::new(s).poll_shutdown(cx),)+
                }
            }
        }
    };
}

delegate_read!(Stream: Plain, Unix, ServerTls, ClusterTls);
delegate_write!(Stream: Plain, Unix, ServerTls, ClusterTls);
delegate_read!(ReadSide: Tcp, Unix, Tls);
delegate_write!(WriteSide: Tcp, Unix, Tls);
