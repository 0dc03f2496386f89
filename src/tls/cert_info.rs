//! What `gatewayctl certs`, `/status` and the renewal timer read from a certificate: its
//! names, issuer and validity.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertInfo {
    /// The DNS names of its subject alternative names.
    pub names: Vec<String>,
    /// The issuer's common name (or its whole name when it has none).
    pub issuer: String,
    /// Validity, in seconds since the epoch.
    pub not_before: i64,
    pub not_after: i64,
}

impl CertInfo {
    /// The first certificate of a PEM chain.
    pub fn from_pem(chain: &[u8]) -> Result<CertInfo, String> {
        let first = CertificateDer::pem_slice_iter(chain)
            .next()
            .ok_or("no PEM certificate")?
            .map_err(|e| e.to_string())?;
        CertInfo::from_der(&first)
    }

    pub fn from_der(der: &[u8]) -> Result<CertInfo, String> {
        let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| e.to_string())?;
        let names = match cert.subject_alternative_name() {
            Ok(Some(san)) => san
                .value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    x509_parser::extensions::GeneralName::DNSName(d) => {
                        Some(d.to_ascii_lowercase())
                    }
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        };
        let issuer = cert
            .issuer()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok().map(str::to_string))
            .unwrap_or_else(|| cert.issuer().to_string());
        let validity = cert.validity();
        Ok(CertInfo {
            names,
            issuer,
            not_before: validity.not_before.timestamp(),
            not_after: validity.not_after.timestamp(),
        })
    }

    /// Whether it was issued for every one of `names`.
    pub fn covers(&self, names: &[String]) -> bool {
        names.iter().all(|n| self.names.contains(n))
    }
}

#[cfg(test)]
mod tests {
    use super::CertInfo;

    #[test]
    fn names_issuer_and_validity_are_read() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params =
            rcgen::CertificateParams::new(vec!["a.example.com".into(), "B.example.com".into()])
                .unwrap();
        params.not_before = rcgen::date_time_ymd(2026, 1, 1);
        params.not_after = rcgen::date_time_ymd(2026, 4, 1);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "Test CA");
        let cert = params.self_signed(&key).unwrap();
        let info = CertInfo::from_pem(cert.pem().as_bytes()).unwrap();
        assert_eq!(info.names, ["a.example.com", "b.example.com"]);
        assert_eq!(info.issuer, "Test CA");
        assert_eq!(info.not_before, 1767225600);
        assert_eq!(info.not_after - info.not_before, 90 * 86400);
        assert!(info.covers(&["b.example.com".into()]));
        assert!(!info.covers(&["c.example.com".into()]));
        assert!(CertInfo::from_pem(b"not pem").is_err());
    }
}
