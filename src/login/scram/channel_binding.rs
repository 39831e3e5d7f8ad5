//! `tls-server-end-point` channel binding (RFC 5929), the only type
//! PostgreSQL supports: the hash of the certificate the TLS session ends
//! at, which `SCRAM-SHA-256-PLUS` mixes into the proof so that a proof
//! made for one TLS session cannot be replayed through another (a relay
//! that terminates TLS with its own certificate). Finding the hash
//! function takes a walk of just enough DER to reach the certificate's
//! signature algorithm.

use ring::digest;

/// The `tls-server-end-point` channel-binding data of a DER certificate
/// (RFC 5929): its hash with the hash function of its signature algorithm,
/// SHA-256 where that is MD5 or SHA-1. `None` for signature algorithms
/// without a defined hash (Ed25519), where PostgreSQL cannot bind either.
pub fn tls_server_end_point(cert_der: &[u8]) -> Option<Vec<u8>> {
    let algorithm = match signature_algorithm_oid(cert_der)? {
        // sha1/md5 with RSA, ecdsa-with-SHA1: SHA-256 per RFC 5929.
        [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x04 | 0x05]
        | [0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x01]
        // sha256WithRSAEncryption, ecdsa-with-SHA256, RSASSA-PSS (the
        // usual SHA-256 parameters)
        | [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0b]
        | [0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02]
        | [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0a] => &digest::SHA256,
        // sha384WithRSAEncryption, ecdsa-with-SHA384
        [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0c]
        | [0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03] => &digest::SHA384,
        // sha512WithRSAEncryption, ecdsa-with-SHA512
        [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0d]
        | [0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x04] => &digest::SHA512,
        _ => return None,
    };
    Some(digest::digest(algorithm, cert_der).as_ref().to_vec())
}

/// The OID of a certificate's outer `signatureAlgorithm`: `Certificate ::=
/// SEQUENCE { tbsCertificate, signatureAlgorithm AlgorithmIdentifier,
/// signature BIT STRING }`, walked with just enough DER.
fn signature_algorithm_oid(der: &[u8]) -> Option<&[u8]> {
    let (tag, certificate, _) = der_tlv(der)?;
    if tag != 0x30 {
        return None;
    }
    let (_, _, after_tbs) = der_tlv(certificate)?;
    let (tag, algorithm, _) = der_tlv(after_tbs)?;
    if tag != 0x30 {
        return None;
    }
    let (tag, oid, _) = der_tlv(algorithm)?;
    (tag == 0x06).then_some(oid)
}

/// One DER tag-length-value: `(tag, value, rest)`.
fn der_tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | b as usize);
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::login::scram::sha256;

    #[test]
    fn end_point_binding_uses_the_certificates_hash() {
        let certs = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let der = certs.cert.der().to_vec();
        // rcgen signs with ECDSA P-256 / SHA-256 by default.
        let binding = tls_server_end_point(&der).expect("a known signature algorithm");
        assert_eq!(binding, sha256(&der).to_vec());
        assert_eq!(tls_server_end_point(b"\x30\x03\x02\x01\x00"), None);
    }
}
