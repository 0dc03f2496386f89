//! One RFC 8555 order: the account (made once and stored), the challenges published to
//! the workers before the CA is told to look, the CSR with a fresh key, the chain.

use super::storage::{Storage, StoredAccount};
use super::Publisher;
use crate::config::{AcmeConfig, Challenge};
use crate::tls::acme::PemPair;
use instant_acme::{
    Account, AuthorizationStatus, ChallengeType, Identifier, NewAccount, NewOrder, OrderStatus,
    RetryPolicy,
};
use std::time::Duration;

/// How long the CA may take to validate, and then to issue.
const VALIDATION: Duration = Duration::from_secs(90);

/// The account at `config.directory`: the stored one, else a new one (stored unless
/// another gateway stored one first, which is then used).
pub async fn account(config: &AcmeConfig, storage: &Storage) -> Result<Account, String> {
    let builder = || match &config.directory_ca {
        Some(ca) => Account::builder_with_root(ca),
        None => Account::builder(),
    };
    let ca_error = |e: instant_acme::Error| format!("{}: {e}", config.directory);
    let stored = storage.account().await?;
    if let Some(stored) = stored.filter(|s| s.directory == config.directory) {
        let builder = builder().map_err(ca_error)?;
        return builder
            .from_credentials(stored.credentials)
            .await
            .map_err(ca_error);
    }
    let contact: Vec<&str> = config.email.iter().map(String::as_str).collect();
    let new = NewAccount {
        contact: &contact,
        terms_of_service_agreed: true,
        only_return_existing: false,
    };
    let (account, credentials) = builder()
        .map_err(ca_error)?
        .create(&new, config.directory.clone(), None)
        .await
        .map_err(ca_error)?;
    let stored = StoredAccount {
        directory: config.directory.clone(),
        credentials,
    };
    // A new account replaces one made at another directory; between gateways sharing
    // Redis, the first stored wins and the others use it.
    let replace = matches!(storage, Storage::Dir(_));
    storage.keep_account(&stored, replace).await?;
    if !replace {
        if let Some(first) = storage.account().await? {
            if first.directory == config.directory {
                let builder = builder().map_err(ca_error)?;
                return builder
                    .from_credentials(first.credentials)
                    .await
                    .map_err(ca_error);
            }
        }
    }
    tracing::info!("acme: account created at {}", config.directory);
    Ok(account)
}

/// Orders a certificate for `names`; the challenges are taken out of the state again
/// however it ends.
pub async fn order(
    account: &Account,
    names: &[String],
    challenge: Challenge,
    publisher: &Publisher,
) -> Result<PemPair, String> {
    let mut tokens = Vec::new();
    let result = order_inner(account, names, challenge, publisher, &mut tokens).await;
    publisher
        .change(|state| {
            state.http.retain(|token, _| !tokens.contains(token));
            state.tls_alpn.retain(|name, _| !names.contains(name));
        })
        .await;
    result
}

async fn order_inner(
    account: &Account,
    names: &[String],
    challenge: Challenge,
    publisher: &Publisher,
    tokens: &mut Vec<String>,
) -> Result<PemPair, String> {
    let identifiers: Vec<Identifier> = names.iter().cloned().map(Identifier::Dns).collect();
    let mut order = account
        .new_order(&NewOrder::new(&identifiers))
        .await
        .map_err(|e| format!("new order: {e}"))?;
    let kind = match challenge {
        Challenge::Http01 => ChallengeType::Http01,
        Challenge::TlsAlpn01 => ChallengeType::TlsAlpn01,
    };
    let mut authorizations = order.authorizations();
    while let Some(authorization) = authorizations.next().await {
        let mut authorization = authorization.map_err(|e| format!("authorization: {e}"))?;
        match authorization.status {
            AuthorizationStatus::Pending => {}
            AuthorizationStatus::Valid => continue,
            other => return Err(format!("an authorization is {other:?}")),
        }
        let name = authorization.identifier().to_string();
        let mut handle = authorization
            .challenge(kind.clone())
            .ok_or_else(|| format!("the CA offers no {kind:?} challenge for {name}"))?;
        let key_authorization = handle.key_authorization();
        match challenge {
            Challenge::Http01 => {
                let (token, answer) = (handle.token.clone(), key_authorization.as_str());
                tokens.push(token.clone());
                let answer = answer.to_string();
                publisher
                    .change(|state| drop(state.http.insert(token, answer)))
                    .await;
            }
            Challenge::TlsAlpn01 => {
                let pair = alpn_certificate(&name, key_authorization.digest().as_ref())?;
                let name = name.clone();
                publisher
                    .change(|state| drop(state.tls_alpn.insert(name, pair)))
                    .await;
            }
        }
        handle
            .set_ready()
            .await
            .map_err(|e| format!("challenge for {name}: {e}"))?;
    }
    let retries = RetryPolicy::new()
        .initial_delay(Duration::from_millis(250))
        .backoff(1.5)
        .timeout(VALIDATION);
    let status = order
        .poll_ready(&retries)
        .await
        .map_err(|e| format!("validation: {e}"))?;
    if status != OrderStatus::Ready {
        return Err(why_invalid(&mut order).await);
    }
    let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
    let mut params = rcgen::CertificateParams::new(names.to_vec()).map_err(|e| e.to_string())?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    let csr = params.serialize_request(&key).map_err(|e| e.to_string())?;
    order
        .finalize_csr(csr.der())
        .await
        .map_err(|e| format!("finalize: {e}"))?;
    let chain = order
        .poll_certificate(&retries)
        .await
        .map_err(|e| format!("certificate: {e}"))?;
    Ok(PemPair {
        chain,
        key: key.serialize_pem(),
    })
}

/// The CA's own words for each failed challenge of an invalid order.
async fn why_invalid(order: &mut instant_acme::Order) -> String {
    let mut reasons = Vec::new();
    let mut authorizations = order.authorizations();
    while let Some(Ok(mut authorization)) = authorizations.next().await {
        let name = authorization.identifier().to_string();
        if let Ok(state) = authorization.refresh().await {
            for c in &state.challenges {
                if let Some(problem) = &c.error {
                    reasons.push(format!("{name}: {problem}"));
                }
            }
        }
    }
    if reasons.is_empty() {
        "the order became invalid".to_string()
    } else {
        format!("the CA refused: {}", reasons.join("; "))
    }
}

/// The self-signed certificate TLS-ALPN-01 answers with: the name, and the digest of the
/// key authorization in the critical acmeIdentifier extension (RFC 8737, 3).
fn alpn_certificate(name: &str, digest: &[u8]) -> Result<PemPair, String> {
    let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
    let mut params =
        rcgen::CertificateParams::new(vec![name.to_string()]).map_err(|e| e.to_string())?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
    let cert = params.self_signed(&key).map_err(|e| e.to_string())?;
    Ok(PemPair {
        chain: cert.pem(),
        key: key.serialize_pem(),
    })
}
