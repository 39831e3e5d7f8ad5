//! One byte-stream type for both legs, plaintext or TLS, so the handshake,
//! the relay and the pump are written once.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
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
/// directions run at once. A socket (TCP or Unix) splits without a lock; a
/// TLS stream, whose two sides share one TLS state, splits behind a lock
/// ([`TlsHalf`]). Either can be waited on without a buffer
/// ([`ReadSide::wait_readable`]).
#[derive(Debug)]
pub enum ReadSide {
    Tcp(tokio::net::tcp::OwnedReadHalf),
    Unix(tokio::net::unix::OwnedReadHalf),
    Tls(TlsHalf),
}

/// A stream's write side; see [`ReadSide`].
#[derive(Debug)]
pub enum WriteSide {
    Tcp(tokio::net::tcp::OwnedWriteHalf),
    Unix(tokio::net::unix::OwnedWriteHalf),
    Tls(TlsHalf),
}

/// One side of a TLS stream: the stream behind a lock both sides share.
/// Like `tokio::io::split`'s halves, but the read side can look inside to
/// wait for data without a buffer: an idle session then holds none.
///
/// The lock is held only inside a poll, never across an await; both sides
/// of a session are polled by its one task, so it is never contended.
#[derive(Debug)]
pub struct TlsHalf(Arc<Mutex<Stream>>);

impl TlsHalf {
    fn lock(&self) -> MutexGuard<'_, Stream> {
        // A poll that panicked has ended the session: whatever it left
        // behind is only read to close the stream.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Ready when a read would find data (or the end): plaintext the TLS
    /// state holds already, a close_notify it has seen, or bytes on the
    /// socket.
    fn poll_readable(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let stream = self.lock();
        let (tcp, wants_more) = match &*stream {
            Stream::ServerTls(s) => (s.get_ref().0, s.get_ref().1.wants_read()),
            Stream::ClusterTls(s) => (s.get_ref().0, s.get_ref().1.wants_read()),
            // Not made by `split`; a read tells.
            Stream::Plain(_) | Stream::Unix(_) => return Poll::Ready(Ok(())),
        };
        if !wants_more {
            return Poll::Ready(Ok(()));
        }
        tcp.poll_read_ready(cx)
    }
}

impl AsyncRead for TlsHalf {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.lock()).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsHalf {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.lock()).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.lock()).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.lock().is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.lock()).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.lock()).poll_shutdown(cx)
    }
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
                let shared = Arc::new(Mutex::new(tls));
                (
                    ReadSide::Tls(TlsHalf(Arc::clone(&shared))),
                    WriteSide::Tls(TlsHalf(shared)),
                )
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
            (ReadSide::Tls(r), WriteSide::Tls(w)) => {
                assert!(Arc::ptr_eq(&r.0, &w.0), "{APART}");
                drop(w);
                let Ok(stream) = Arc::try_unwrap(r.0) else {
                    panic!("{APART}");
                };
                stream.into_inner().unwrap_or_else(|e| e.into_inner())
            }
            _ => panic!("{APART}"),
        }
    }
}

impl ReadSide {
    /// Waits until a read would not block, without a buffer: a socket until
    /// it is readable, TLS until its state holds plaintext (or the end) or
    /// its socket is readable.
    pub async fn wait_readable(&self) -> io::Result<()> {
        match self {
            ReadSide::Tcp(r) => r.readable().await,
            ReadSide::Unix(r) => r.readable().await,
            ReadSide::Tls(r) => std::future::poll_fn(|cx| r.poll_readable(cx)).await,
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Whether `f` is ready at its first poll.
    async fn ready_at_once<F: Future>(f: F) -> bool {
        tokio::pin!(f);
        std::future::poll_fn(|cx| Poll::Ready(f.as_mut().poll(cx).is_ready())).await
    }

    /// A TLS side waits without a buffer, and is ready as soon as a read
    /// would find something: bytes on the socket, plaintext the TLS state
    /// decrypted but a short read left behind (missing that would hang a
    /// session with data waiting), or the peer's close_notify.
    #[tokio::test]
    async fn a_tls_side_is_ready_exactly_when_a_read_would_find_something() {
        let dir = tempfile::tempdir().unwrap();
        let certs = pgtier_sandbox::Certs::generate(dir.path()).unwrap();
        let key = crate::tls::load_certified_key(&certs.cert_path, &certs.key_path).unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(crate::tls::server_config(
            crate::tls::CertStore::new(key),
        ));
        let connector = tokio_rustls::TlsConnector::from(
            crate::tls::cluster_client_config(Some(&certs.ca_path)).unwrap(),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (accepted, connected) = tokio::join!(
            async {
                acceptor
                    .accept(listener.accept().await.unwrap().0)
                    .await
                    .unwrap()
            },
            async {
                let tcp = TcpStream::connect(addr).await.unwrap();
                let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
                connector.connect(name, tcp).await.unwrap()
            }
        );
        let (mut rx, _tx) = Stream::ServerTls(Box::new(accepted)).split();
        let mut client = connected;

        assert!(!ready_at_once(rx.wait_readable()).await, "nothing sent yet");
        client.write_all(b"hello").await.unwrap();
        client.flush().await.unwrap();
        tokio::time::timeout(Duration::from_secs(5), rx.wait_readable())
            .await
            .expect("ready once the client sent")
            .unwrap();
        let mut two = [0u8; 2];
        rx.read_exact(&mut two).await.unwrap();
        assert_eq!(&two, b"he");
        assert!(
            ready_at_once(rx.wait_readable()).await,
            "three bytes decrypted and not yet read"
        );
        let mut rest = [0u8; 3];
        rx.read_exact(&mut rest).await.unwrap();
        assert_eq!(&rest, b"llo");
        assert!(!ready_at_once(rx.wait_readable()).await, "all read");

        client.shutdown().await.unwrap();
        tokio::time::timeout(Duration::from_secs(5), rx.wait_readable())
            .await
            .expect("ready at the close")
            .unwrap();
        assert_eq!(rx.read(&mut rest).await.unwrap(), 0, "the end");
    }
}
