//! A private CA and a server certificate for `localhost` / `127.0.0.1` / `::1`,
//! so tests and the demo use real TLS with real verification (verify-full).

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyPair, KeyUsagePurpose,
    SanType,
};

use super::SandboxError;

/// PEM files written by [`Certs::generate`].
#[derive(Debug, Clone)]
pub struct Certs {
    pub ca_pem: String,
    pub ca_path: PathBuf,
    /// Leaf certificate followed by the CA.
    pub cert_path: PathBuf,
    /// PKCS#8 ECDSA P-256 key, mode 0600.
    pub key_path: PathBuf,
}

impl Certs {
    /// Writes `ca.crt`, `server.crt` and `server.key` into `dir`.
    pub fn generate(dir: &Path) -> Result<Certs, SandboxError> {
        let err = |e: rcgen::Error| SandboxError::Certs(e.to_string());
        let ca_key = KeyPair::generate().map_err(err)?;
        let mut ca_params = CertificateParams::default();
        ca_params.distinguished_name = DistinguishedName::new();
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "pgtier test CA");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = ca_params.self_signed(&ca_key).map_err(err)?;
        let issuer = rcgen::Issuer::new(ca_params, ca_key);

        let key = KeyPair::generate().map_err(err)?;
        let mut params = CertificateParams::new(vec!["localhost".to_owned()]).map_err(err)?;
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        params
            .subject_alt_names
            .push(SanType::IpAddress([127, 0, 0, 1].into()));
        params
            .subject_alt_names
            .push(SanType::IpAddress(std::net::Ipv6Addr::LOCALHOST.into()));
        let leaf = params.signed_by(&key, &issuer).map_err(err)?;

        let ca_pem = ca.pem();
        let certs = Certs {
            ca_path: dir.join("ca.crt"),
            cert_path: dir.join("server.crt"),
            key_path: dir.join("server.key"),
            ca_pem: ca_pem.clone(),
        };
        write(&certs.ca_path, &ca_pem, 0o644)?;
        write(
            &certs.cert_path,
            &format!("{}{}", leaf.pem(), ca_pem),
            0o644,
        )?;
        write(&certs.key_path, &key.serialize_pem(), 0o600)?;
        Ok(certs)
    }
}

fn write(path: &Path, contents: &str, mode: u32) -> Result<(), SandboxError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, contents)
        .map_err(SandboxError::io(format!("writing {}", path.display())))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(SandboxError::io(format!("chmod {}", path.display())))
}
