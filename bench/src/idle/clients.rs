//! Clients that log in over TLS by hand and then sit idle.

use std::sync::Arc;

use anyhow::{bail, Result};

use crate::tenants::Tenants;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use pgtier_testkit::wire::{startup_packet, try_read_message, SSL_REQUEST};

/// Largest message a login reads: a bound on what a broken peer can make
/// the harness allocate, far above anything a login sends.
const MAX_LOGIN_MESSAGE: usize = 1 << 20;

pub async fn open(
    port: u16,
    ca_pem: &str,
    sessions: usize,
    tenants: &Tenants,
) -> Result<Vec<TlsStream<TcpStream>>> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert?)?;
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = TlsConnector::from(Arc::new(config));
    // Bounded concurrency: the listen backlog, not pgtier, would
    // otherwise be what is measured.
    let permits = Arc::new(tokio::sync::Semaphore::new(64));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..sessions {
        let connector = connector.clone();
        let permits = Arc::clone(&permits);
        let db = tenants.standard[i % tenants.standard.len()].name.clone();
        tasks.spawn(async move {
            let _permit = permits.acquire_owned().await?;
            login(&connector, port, &db).await
        });
    }
    let mut held = Vec::with_capacity(sessions);
    let mut first_error = None;
    while let Some(joined) = tasks.join_next().await {
        match joined? {
            Ok(stream) => held.push(stream),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    if let Some(e) = first_error {
        bail!(
            "{} of {sessions} idle sessions failed to log in, e.g.: {e:#}",
            sessions - held.len()
        );
    }
    Ok(held)
}

async fn login(connector: &TlsConnector, port: u16, db: &str) -> Result<TlsStream<TcpStream>> {
    let mut tcp = TcpStream::connect(("127.0.0.1", port)).await?;
    tcp.set_nodelay(true)?;
    tcp.write_all(&SSL_REQUEST).await?;
    let mut answer = [0u8; 1];
    tcp.read_exact(&mut answer).await?;
    if answer[0] != b'S' {
        bail!("SSLRequest answered {:?}", answer[0] as char);
    }
    let mut tls = connector
        .connect(ServerName::try_from("localhost")?, tcp)
        .await?;
    tls.write_all(&startup_packet(&[("user", db), ("database", db)]))
        .await?;
    tls.flush().await?;
    // Read messages until ReadyForQuery.
    loop {
        let (tag, body) = try_read_message(&mut tls, MAX_LOGIN_MESSAGE).await?;
        match tag {
            b'Z' => return Ok(tls),
            b'E' => bail!("login refused: {}", String::from_utf8_lossy(&body)),
            _ => {}
        }
    }
}
