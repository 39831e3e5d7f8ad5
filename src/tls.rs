//! TLS toward clients (with a certificate that can be replaced while the proxy
//! runs) and toward the cluster.

use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use thiserror::Error;

/// The ALPN protocol PostgreSQL 17 clients use for direct TLS connections.
pub const ALPN_POSTGRESQL: &[u8] = b"postgresql";

#[derive(Debug, Error)]
pub enum TlsError {
    #[error("cannot read certificate chain {path}: {message}")]
    Cert { path: String, message: String },
    #[error("cannot read private key {path}: {message}")]
    Key { path: String, message: String },
    #[error("certificate {cert} and key {key} do not form a usable pair: {message}")]
    Pair {
        cert: String,
        key: String,
        message: String,
    },
    #[error("cannot read cluster CA {path}: {message}")]
    Ca { path: String, message: String },
}

/// The ring provider, the only one compiled in.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Loads a PEM chain and key and checks they belong together.
pub fn load_certified_key(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsError::Cert {
            path: cert.display().to_string(),
            message: e.to_string(),
        })?;
    if chain.is_empty() {
        return Err(TlsError::Cert {
            path: cert.display().to_string(),
            message: "no CERTIFICATE block found".to_owned(),
        });
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Key {
        path: key.display().to_string(),
        message: e.to_string(),
    })?;
    let pair_error = |message: String| TlsError::Pair {
        cert: cert.display().to_string(),
        key: key.display().to_string(),
        message,
    };
    let certified = CertifiedKey::from_der(chain, key_der, &provider())
        .map_err(|e| pair_error(e.to_string()))?;
    Ok(certified)
}

/// Serves whatever certificate is current; [`CertStore::replace`] swaps it for
/// new handshakes without touching established sessions.
#[derive(Debug)]
pub struct CertStore {
    current: ArcSwap<CertifiedKey>,
    /// The current certificate's `tls-server-end-point` channel-binding
    /// data, for SCRAM-SHA-256-PLUS (None for signature algorithms without
    /// a defined hash).
    binding: ArcSwap<Option<Vec<u8>>>,
}

impl CertStore {
    pub fn new(key: CertifiedKey) -> Arc<Self> {
        let binding = end_point_binding(&key);
        Arc::new(CertStore {
            current: ArcSwap::from_pointee(key),
            binding: ArcSwap::from_pointee(binding),
        })
    }

    pub fn replace(&self, key: CertifiedKey) {
        self.binding.store(Arc::new(end_point_binding(&key)));
        self.current.store(Arc::new(key));
    }

    /// Channel-binding data of the certificate clients are served now.
    pub fn channel_binding(&self) -> Option<Vec<u8>> {
        (*self.binding.load_full()).clone()
    }
}

fn end_point_binding(key: &CertifiedKey) -> Option<Vec<u8>> {
    key.cert
        .first()
        .and_then(|cert| crate::login::scram::tls_server_end_point(cert.as_ref()))
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// The most plaintext pgtier puts into one TLS record toward a client:
/// PostgreSQL's own send buffer (`PQ_SEND_BUFFER_SIZE`, 8 KiB), so no record
/// is larger than one PostgreSQL would send.
///
/// Why it matters: libpq reads into the free part of its input buffer, and
/// when a record is larger than that space OpenSSL decrypts all of it and
/// keeps the rest inside the SSL object. The socket is then empty although
/// data is pending. libpq's own waits check `SSL_pending`, but a client that
/// waits on the socket itself (psycopg, any event loop built on `PQsocket`)
/// sleeps forever in the middle of a result. With 16 KiB records (the TLS
/// maximum, rustls' default) psycopg hung within a few dozen COPY rounds.
pub const MAX_TLS_PLAINTEXT: usize = 8192;

/// The TLS record header rustls counts in `max_fragment_size`.
const TLS_RECORD_HEADER: usize = 5;

/// The rustls server configuration for client connections, shaped like
/// PostgreSQL's own TLS (see [`MAX_TLS_PLAINTEXT`]):
/// - records carry at most 8 KiB of plaintext;
/// - no session tickets and no session cache: PostgreSQL disables both
///   (`SSL_OP_NO_TICKET`, `SSL_SESS_CACHE_OFF`) and libpq never resumes a
///   session, so tickets would only cost every handshake two extra messages
///   and the proxy a cache;
/// - ALPN `postgresql`, which direct-TLS clients (PostgreSQL 17+) require.
pub fn server_config(certs: Arc<CertStore>) -> Arc<rustls::ServerConfig> {
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("the ring provider supports the default protocol versions")
        .with_no_client_auth()
        .with_cert_resolver(certs);
    config.alpn_protocols = vec![ALPN_POSTGRESQL.to_vec()];
    config.max_fragment_size = Some(MAX_TLS_PLAINTEXT + TLS_RECORD_HEADER);
    config.send_tls13_tickets = 0;
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    Arc::new(config)
}

/// The rustls client configuration for the link to the cluster: verified
/// against `ca` when given, otherwise encrypted only (libpq's
/// `sslmode=require`).
pub fn cluster_client_config(ca: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("the ring provider supports the default protocol versions");
    let config = match ca {
        Some(path) => {
            let mut roots = rustls::RootCertStore::empty();
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
                .map_err(|e| TlsError::Ca {
                    path: path.display().to_string(),
                    message: e.to_string(),
                })?;
            for cert in certs {
                roots.add(cert).map_err(|e| TlsError::Ca {
                    path: path.display().to_string(),
                    message: e.to_string(),
                })?;
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        None => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(EncryptOnly(provider())))
            .with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// Accepts any cluster certificate but still checks the handshake signatures,
/// so the link is encrypted against passive listeners (what `sslmode=require`
/// gives libpq users).
#[derive(Debug)]
struct EncryptOnly(Arc<CryptoProvider>);

impl ServerCertVerifier for EncryptOnly {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
