//! One attacker's client: TCP from a chosen loopback address, SSLRequest,
//! TLS without resumption, a StartupMessage and SCRAM-SHA-256 by hand
//! (the ClientKey cached per password, salt and iteration count), read
//! until the proxy refuses or lets the login in.

use std::sync::Arc;

use anyhow::{anyhow, bail, Result};

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use ring::{digest, hmac};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use pgtier_testkit::wire::frames::frame;
use pgtier_testkit::wire::{startup_packet, try_read_message, SSL_REQUEST};

use super::*;

pub(super) enum Outcome {
    Refused { code: String, message: String },
    Accepted(Box<TlsStream<TcpStream>>),
}

/// (password, salt, iterations).
type KeyCacheKey = (String, Vec<u8>, u32);

pub(super) struct Client {
    connector: TlsConnector,
    port: u16,
    many_sources: bool,
    /// ClientKey per (password, salt, iterations): see the module doc.
    keys: Mutex<HashMap<KeyCacheKey, pgtier::login::scram::Key>>,
}

/// The next source address, across runs: 127.1.x.y, 64,516 of them, so
/// that within a run no (address, role) pair repeats and pgtier's
/// per-address delay after failures never engages.
fn source_address() -> Ipv4Addr {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let k = NEXT.fetch_add(1, Ordering::Relaxed) % (254 * 254);
    Ipv4Addr::new(127, 1, (1 + k / 254) as u8, (1 + k % 254) as u8)
}

impl Client {
    pub(super) fn new(port: u16, ca_pem: &str, many_sources: bool) -> Result<Client> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            roots.add(cert?)?;
        }
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
        config.resumption = rustls::client::Resumption::disabled();
        Ok(Client {
            connector: TlsConnector::from(Arc::new(config)),
            port,
            many_sources,
            keys: Mutex::new(HashMap::new()),
        })
    }

    async fn connect(&self) -> Result<TcpStream> {
        let to = SocketAddr::from(([127, 0, 0, 1], self.port));
        let tcp = if self.many_sources {
            let socket = TcpSocket::new_v4()?;
            socket.bind(SocketAddr::V4(SocketAddrV4::new(source_address(), 0)))?;
            socket.connect(to).await?
        } else {
            TcpStream::connect(to).await?
        };
        tcp.set_nodelay(true)?;
        Ok(tcp)
    }

    fn client_key(&self, password: &str, salt: &[u8], iterations: u32) -> [u8; 32] {
        let key = (password.to_owned(), salt.to_vec(), iterations);
        if let Some(k) = lock(&self.keys).get(&key) {
            return *k;
        }
        let k = pgtier::login::scram::client_key(password, salt, iterations);
        lock(&self.keys).insert(key, k);
        k
    }

    /// One login: SSLRequest, TLS, StartupMessage, SCRAM-SHA-256 (never
    /// -PLUS: a client that cannot bind, which every server must
    /// accept), up to ReadyForQuery or an ErrorResponse.
    pub(super) async fn attempt(&self, login: &Login) -> Result<Outcome> {
        let mut tcp = self.connect().await?;
        tcp.write_all(&SSL_REQUEST).await?;
        let mut answer = [0u8; 1];
        tcp.read_exact(&mut answer).await?;
        if answer[0] != b'S' {
            bail!("SSLRequest answered {:?}", answer[0] as char);
        }
        let mut tls = self
            .connector
            .connect(ServerName::try_from("localhost")?, tcp)
            .await?;
        tls.write_all(&startup_packet(&[
            ("user", &login.role),
            ("database", &login.database),
        ]))
        .await?;
        let nonce = BASE64.encode(rand::random::<[u8; 18]>());
        let client_first_bare = format!("n=,r={nonce}");
        loop {
            let (tag, body) = try_read_message(&mut tls, MAX_FRAME).await?;
            match tag {
                b'E' => {
                    let (code, message) = error_fields(&body);
                    return Ok(Outcome::Refused { code, message });
                }
                b'Z' => return Ok(Outcome::Accepted(Box::new(tls))),
                b'R' => {
                    let code = body
                        .get(..4)
                        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
                        .ok_or_else(|| anyhow!("short authentication message"))?;
                    let data = &body[4..];
                    match code {
                        // AuthenticationOk, SASLFinal: the answer follows.
                        0 | 12 => {}
                        10 => {
                            let offered = data.split(|&b| b == 0).any(|m| m == b"SCRAM-SHA-256");
                            if !offered {
                                bail!("SCRAM-SHA-256 not offered");
                            }
                            let first = format!("n,,{client_first_bare}");
                            let mut msg = b"SCRAM-SHA-256\0".to_vec();
                            msg.extend_from_slice(&(first.len() as u32).to_be_bytes());
                            msg.extend_from_slice(first.as_bytes());
                            tls.write_all(&frame(b'p', &msg)).await?;
                        }
                        11 => {
                            let server_first = std::str::from_utf8(data)?;
                            let final_ =
                                self.client_final(login, &client_first_bare, &nonce, server_first)?;
                            tls.write_all(&frame(b'p', final_.as_bytes())).await?;
                        }
                        other => bail!("unexpected authentication request {other}"),
                    }
                }
                // ParameterStatus, BackendKeyData, NoticeResponse,
                // NegotiateProtocolVersion.
                b'S' | b'K' | b'N' | b'v' => {}
                other => bail!("unexpected message {:?} during login", other as char),
            }
        }
    }

    /// client-final-message for `server_first` (RFC 5802).
    fn client_final(
        &self,
        login: &Login,
        client_first_bare: &str,
        nonce: &str,
        server_first: &str,
    ) -> Result<String> {
        let mut combined = None;
        let mut salt = None;
        let mut iterations = None;
        for part in server_first.split(',') {
            match part.split_at_checked(2) {
                Some(("r=", v)) => combined = Some(v),
                Some(("s=", v)) => salt = Some(BASE64.decode(v)?),
                Some(("i=", v)) => iterations = Some(v.parse::<u32>()?),
                _ => {}
            }
        }
        let (Some(combined), Some(salt), Some(iterations)) = (combined, salt, iterations) else {
            bail!("malformed server-first-message");
        };
        if !combined.starts_with(nonce) {
            bail!("the server's nonce does not extend ours");
        }
        let client_key = self.client_key(&login.password, &salt, iterations);
        // "biws" = base64("n,,"): no channel binding.
        let without_proof = format!("c=biws,r={combined}");
        let auth_message = format!("{client_first_bare},{server_first},{without_proof}");
        let stored_key = digest::digest(&digest::SHA256, &client_key);
        let signature = hmac::sign(
            &hmac::Key::new(hmac::HMAC_SHA256, stored_key.as_ref()),
            auth_message.as_bytes(),
        );
        let proof: Vec<u8> = client_key
            .iter()
            .zip(signature.as_ref())
            .map(|(k, s)| k ^ s)
            .collect();
        Ok(format!("{without_proof},p={}", BASE64.encode(proof)))
    }
}

/// SQLSTATE and message of an ErrorResponse body.
fn error_fields(body: &[u8]) -> (String, String) {
    let mut code = String::from("?????");
    let mut message = String::new();
    for field in body.split(|&b| b == 0) {
        match field.split_first() {
            Some((b'C', v)) => code = String::from_utf8_lossy(v).into_owned(),
            Some((b'M', v)) => message = String::from_utf8_lossy(v).into_owned(),
            _ => {}
        }
    }
    (code, message)
}

pub(super) async fn terminate(mut stream: TlsStream<TcpStream>) {
    let _ = stream.write_all(&frame(b'X', &[])).await;
    let _ = stream.shutdown().await;
}
