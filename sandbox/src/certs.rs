//! A private CA and a server certificate signed by it, written as PEM files.
//!
//! A real CA (rather than one self-signed leaf) lets clients run with
//! `sslmode=verify-full` against `ca.crt`, exactly as they would in
//! production, and lets the same files serve the proxy and a TLS cluster.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

use super::SandboxError;

/// The names the server certificate is valid for: every way a local client
/// may spell the loopback host.
pub const SERVER_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// PEM files of a sandbox CA and server certificate.
#[derive(Debug, Clone)]
pub struct Certs {
    /// The directory holding the files.
    pub dir: PathBuf,
    /// The CA certificate, PEM (what clients trust).
    pub ca_pem: String,
    /// The server chain, PEM: leaf first, then the CA.
    pub cert_pem: String,
    /// The server's private key, PKCS#8 PEM (ECDSA P-256).
    pub key_pem: String,
    /// `dir/ca.crt`
    pub ca_path: PathBuf,
    /// `dir/server.crt` (leaf then CA)
    pub cert_path: PathBuf,
    /// `dir/server.key`, mode 0600 (PostgreSQL refuses a key others can read).
    pub key_path: PathBuf,
}

impl Certs {
    /// Generates a fresh CA and server certificate into `dir` (created if
    /// missing): `ca.crt`, `server.crt` and `server.key`.
    pub fn generate(dir: &Path) -> Result<Certs, SandboxError> {
        std::fs::create_dir_all(dir)
            .map_err(SandboxError::io(format!("creating {}", dir.display())))?;

        let ca_key = KeyPair::generate()?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "pgtier sandbox CA");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca_params.self_signed(&ca_key)?;
        let issuer = Issuer::new(ca_params, ca_key);

        let server_key = KeyPair::generate()?;
        let names: Vec<String> = SERVER_NAMES.iter().map(|s| s.to_string()).collect();
        // IP-looking names become iPAddress SANs, the rest dNSName SANs.
        let mut params = CertificateParams::new(names)?;
        params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let server_cert = params.signed_by(&server_key, &issuer)?;

        let ca_pem = ca_cert.pem();
        let cert_pem = format!("{}{}", server_cert.pem(), ca_pem);
        let key_pem = server_key.serialize_pem();

        let certs = Certs {
            dir: dir.to_path_buf(),
            ca_path: dir.join("ca.crt"),
            cert_path: dir.join("server.crt"),
            key_path: dir.join("server.key"),
            ca_pem,
            cert_pem,
            key_pem,
        };
        write_file(&certs.ca_path, &certs.ca_pem, 0o644)?;
        write_file(&certs.cert_path, &certs.cert_pem, 0o644)?;
        write_file(&certs.key_path, &certs.key_pem, 0o600)?;
        Ok(certs)
    }

    /// The three files, for handing them to another OS user.
    pub fn files(&self) -> [&Path; 3] {
        [&self.ca_path, &self.cert_path, &self.key_path]
    }
}

/// Writes `contents` to a fresh file created with `mode` (so a key is never
/// readable by others, not even for a moment).
fn write_file(path: &Path, contents: &str, mode: u32) -> Result<(), SandboxError> {
    let what = || format!("writing {}", path.display());
    let _ = std::fs::remove_file(path);
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(SandboxError::io(what()))?;
    file.write_all(contents.as_bytes())
        .map_err(SandboxError::io(what()))
}
