//! TLS for listeners: rustls with its default (modern) cipher suites, TLS 1.2 and 1.3
//! only, ALPN `h2` and `http/1.1`, the certificate chosen by SNI.

pub mod acme;
pub mod cert_info;
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
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
}

/// Where a listener's certificate comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsSource {
    Files(TlsFiles),
    /// Ordered by the supervisor for these names (the first names the certificate).
    Acme(Vec<String>),
}

/// Loads a PEM certificate chain and its private key (PKCS#8, PKCS#1 RSA or SEC1 EC),
/// checking that they belong together. Errors name the file at fault.
pub fn load_certified_key(files: &TlsFiles) -> Result<CertifiedKey, String> {
    let cert_file = files.cert.display().to_string();
    let key_file = files.key.display().to_string();
    let chain = std::fs::read(&files.cert).map_err(|e| format!("{cert_file}: {e}"))?;
    let key = std::fs::read(&files.key).map_err(|e| format!("{key_file}: {e}"))?;
    certified_key(&chain, &key, &cert_file, &key_file)
}

/// A PEM chain and key as rustls signs with, checked to belong together and to parse as
/// an end-entity certificate; errors name them as `cert_file` and `key_file`.
pub fn certified_key(
    chain: &[u8],
    key: &[u8],
    cert_file: &str,
    key_file: &str,
) -> Result<CertifiedKey, String> {
    let certified = unchecked_key(chain, key, cert_file, key_file)?;
    certified
        .keys_match()
        .map_err(|e| format!("{key_file} does not match {cert_file}: {e}"))?;
    webpki::EndEntityCert::try_from(&certified.cert[0])
        .map_err(|e| format!("{cert_file}: the first certificate cannot be parsed: {e}"))?;
    Ok(certified)
}

/// A PEM chain and key, not checked beyond parsing: for a TLS-ALPN-01 certificate, whose
/// critical acmeIdentifier extension webpki refuses (the CA reads it, nobody else).
pub fn unchecked_key(
    chain: &[u8],
    key: &[u8],
    cert_file: &str,
    key_file: &str,
) -> Result<CertifiedKey, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{cert_file}: {e}"))?;
    if certs.is_empty() {
        return Err(format!("{cert_file}: no PEM certificate in the file"));
    }
    let key = PrivateKeyDer::from_pem_slice(key)
        .map_err(|e| format!("{key_file}: no usable private key: {e}"))?;
    let signing_key = provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| format!("{key_file}: {e}"))?;
    Ok(CertifiedKey::new(certs, signing_key))
}

/// One entry of a listener's `tls`, as the resolver holds it.
#[derive(Debug)]
enum Slot {
    Loaded(Arc<CertifiedKey>),
    /// An ACME entry: its names, and its certificate once the supervisor sent it.
    Acme(Vec<String>),
}

impl Slot {
    fn key(&self) -> Option<Arc<CertifiedKey>> {
        match self {
            Slot::Loaded(key) => Some(key.clone()),
            Slot::Acme(names) => acme::certificate(&names[0]),
        }
    }
}

/// Picks the first certificate valid for the SNI name; without SNI, or when none is
/// valid for it, the first one there is (as nginx's default server does). A name of an
/// ACME entry whose certificate has not arrived gets no certificate: its handshakes fail
/// with an alert, the other names serve. A TLS-ALPN-01 validation (ALPN `acme-tls/1`)
/// gets the challenge certificate for its name, and nothing else.
#[derive(Debug)]
struct SniResolver {
    slots: Vec<Slot>,
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let sni = hello.server_name();
        if let Some(mut offered) = hello.alpn() {
            if offered.any(|p| p == acme::ALPN) {
                return sni.and_then(acme::challenge_certificate);
            }
        }
        if let Some(sni) = sni {
            if let Ok(name) = ServerName::try_from(sni) {
                for slot in &self.slots {
                    match slot {
                        Slot::Loaded(key) => {
                            let valid =
                                webpki::EndEntityCert::try_from(&key.cert[0]).is_ok_and(|cert| {
                                    cert.verify_is_valid_for_subject_name(&name).is_ok()
                                });
                            if valid {
                                return Some(key.clone());
                            }
                        }
                        Slot::Acme(names) if names.iter().any(|n| n.eq_ignore_ascii_case(sni)) => {
                            return slot.key();
                        }
                        Slot::Acme(_) => {}
                    }
                }
            }
        }
        self.slots.iter().find_map(Slot::key)
    }
}

/// The rustls configuration of one listener; `ticketer` holds the gateway-wide ticket
/// keys.
pub fn server_config(
    entries: &[TlsSource],
    ticketer: Arc<tickets::SharedTicketer>,
) -> Result<Arc<rustls::ServerConfig>, String> {
    let slots = entries
        .iter()
        .map(|entry| match entry {
            TlsSource::Files(files) => load_certified_key(files).map(|k| Slot::Loaded(Arc::new(k))),
            TlsSource::Acme(names) => Ok(Slot::Acme(names.clone())),
        })
        .collect::<Result<Vec<_>, _>>()?;
    let acme = slots.iter().any(|s| matches!(s, Slot::Acme(_)));
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(SniResolver { slots }));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    if acme {
        // Offered alone by a CA's validation; the connection closes after the handshake.
        config.alpn_protocols.push(acme::ALPN.to_vec());
    }
    // Returning clients resume with a ticket instead of a full handshake, on any worker.
    config.ticketer = ticketer;
    Ok(Arc::new(config))
}
