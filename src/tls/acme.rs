//! What a worker holds of ACME: the certificates the supervisor obtained, and the answers
//! to the challenges of the orders it has open. The supervisor sends all of it as one
//! [`AcmeState`] whenever any of it changes, and before the config to a new worker, so a
//! renewed certificate reaches every worker without a new generation.

use rustls::sign::CertifiedKey;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, LazyLock, RwLock};

/// The ALPN protocol of a TLS-ALPN-01 validation (RFC 8737).
pub const ALPN: &[u8] = b"acme-tls/1";
/// Where HTTP-01 asks for a token's key authorization (RFC 8555, 8.3).
pub const HTTP_PREFIX: &str = "/.well-known/acme-challenge/";

/// A certificate chain and its key, PEM.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PemPair {
    pub chain: String,
    pub key: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AcmeState {
    /// Each ACME entry's certificate, by the entry's first name.
    pub certs: BTreeMap<String, PemPair>,
    /// HTTP-01: token to key authorization.
    pub http: BTreeMap<String, String>,
    /// TLS-ALPN-01: name to its self-signed challenge certificate.
    pub tls_alpn: BTreeMap<String, PemPair>,
}

#[derive(Default)]
struct Held {
    certs: HashMap<String, Arc<CertifiedKey>>,
    http: HashMap<String, String>,
    tls_alpn: HashMap<String, Arc<CertifiedKey>>,
}

/// The worker's copy: read by every handshake of a listener with an ACME entry and by
/// plain requests under [`HTTP_PREFIX`], written when the supervisor sends a new state.
static HELD: LazyLock<RwLock<Held>> = LazyLock::new(Default::default);

type Load = fn(&[u8], &[u8], &str, &str) -> Result<CertifiedKey, String>;

fn parsed(pairs: &BTreeMap<String, PemPair>, load: Load) -> HashMap<String, Arc<CertifiedKey>> {
    let mut out = HashMap::new();
    for (name, pair) in pairs {
        let (chain, key) = (pair.chain.as_bytes(), pair.key.as_bytes());
        match load(chain, key, name, name) {
            Ok(key) => {
                out.insert(name.clone(), Arc::new(key));
            }
            Err(e) => tracing::error!("acme: the certificate sent for {name} is unusable: {e}"),
        }
    }
    out
}

/// Serve with `state` from now on.
pub fn hold(state: &AcmeState) {
    let held = Held {
        certs: parsed(&state.certs, super::certified_key),
        http: state
            .http
            .iter()
            .map(|(t, a)| (t.clone(), a.clone()))
            .collect(),
        tls_alpn: parsed(&state.tls_alpn, super::unchecked_key),
    };
    *HELD.write().unwrap_or_else(|p| p.into_inner()) = held;
}

fn held() -> std::sync::RwLockReadGuard<'static, Held> {
    HELD.read().unwrap_or_else(|p| p.into_inner())
}

/// The certificate of the ACME entry whose first name is `name`, once there is one.
pub fn certificate(name: &str) -> Option<Arc<CertifiedKey>> {
    held().certs.get(name).cloned()
}

/// The TLS-ALPN-01 certificate for `name`, while its order is open.
pub fn challenge_certificate(name: &str) -> Option<Arc<CertifiedKey>> {
    held().tls_alpn.get(&name.to_ascii_lowercase()).cloned()
}

/// The key authorization for an HTTP-01 request's path, while its order is open.
pub fn http_answer(path: &str) -> Option<String> {
    let token = path.strip_prefix(HTTP_PREFIX)?;
    held().http.get(token).cloned()
}
