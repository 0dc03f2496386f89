//! TLS for listeners: rustls with its default (modern) cipher suites, TLS 1.2 and 1.3
//! only, ALPN `h2` and `http/1.1`, the certificate chosen by SNI.

pub mod tickets;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::sync::Arc;

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A certificate chain and its key, as `[[listener]] tls` names them.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
}

/// Loads a PEM certificate chain and its private key (PKCS#8, PKCS#1 RSA or SEC1 EC),
/// checking that they belong together. Errors name the file at fault.
pub fn load_certified_key(files: &TlsFiles) -> Result<CertifiedKey, String> {
    let cert_file = files.cert.display();
    let key_file = files.key.display();
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .map_err(|e| format!("{cert_file}: {e}"))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{cert_file}: {e}"))?;
    if certs.is_empty() {
        return Err(format!("{cert_file}: no PEM certificate in the file"));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| format!("{key_file}: no usable private key: {e}"))?;
    let signing_key = provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| format!("{key_file}: {e}"))?;
    let certified = CertifiedKey::new(certs, signing_key);
    certified
        .keys_match()
        .map_err(|e| format!("{key_file} does not match {cert_file}: {e}"))?;
    webpki::EndEntityCert::try_from(&certified.cert[0])
        .map_err(|e| format!("{cert_file}: the first certificate cannot be parsed: {e}"))?;
    Ok(certified)
}

/// Picks the first certificate valid for the SNI name; without SNI, or when none is
/// valid for it, the first one (as nginx's default server does).
#[derive(Debug)]
struct SniResolver {
    keys: Vec<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        if let Some(name) = hello
            .server_name()
            .and_then(|n| ServerName::try_from(n).ok())
        {
            for key in &self.keys {
                let valid = webpki::EndEntityCert::try_from(&key.cert[0])
                    .is_ok_and(|cert| cert.verify_is_valid_for_subject_name(&name).is_ok());
                if valid {
                    return Some(key.clone());
                }
            }
        }
        self.keys.first().cloned()
    }
}

/// The rustls configuration of one listener; `ticketer` holds the gateway-wide ticket
/// keys.
pub fn server_config(
    entries: &[TlsFiles],
    ticketer: Arc<tickets::SharedTicketer>,
) -> Result<Arc<rustls::ServerConfig>, String> {
    let keys = entries
        .iter()
        .map(|files| load_certified_key(files).map(Arc::new))
        .collect::<Result<Vec<_>, _>>()?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(SniResolver { keys }));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    // Returning clients resume with a ticket instead of a full handshake, on any worker.
    config.ticketer = ticketer;
    Ok(Arc::new(config))
}
