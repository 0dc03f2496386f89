//! `[acme]`, and the names of a listener's `tls = [{ acme = [...] }]` entries: where the
//! gateway gets its certificates, and for which names.

use super::{file, Validator};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Let's Encrypt's production directory.
pub const DEFAULT_DIRECTORY: &str = "https://acme-v02.api.letsencrypt.org/directory";
const DEFAULT_RENEW_BEFORE: Duration = Duration::from_secs(30 * 24 * 3600);

/// `[acme]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcmeConfig {
    /// The account's contact, `mailto:` added.
    pub email: Option<String>,
    pub directory: String,
    /// A CA (PEM) to trust for the directory instead of the system's roots.
    pub directory_ca: Option<PathBuf>,
    pub storage: AcmeStorage,
    /// Renew this long before expiry, unless the CA's renewal information says when.
    pub renew_before: Duration,
    /// Which challenge to answer; `None` chooses: HTTP-01 when a plain listener exists
    /// (the CA reaches port 80 more often than 443 behind a load balancer), else
    /// TLS-ALPN-01.
    pub challenge: Option<Challenge>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AcmeStorage {
    /// A directory (made 0700, files 0600).
    Dir(PathBuf),
    /// The `[redis]` connection: shared by the gateways that use the same Redis.
    Redis,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Challenge {
    Http01,
    TlsAlpn01,
}

impl Validator<'_> {
    pub(super) fn acme(
        &mut self,
        section: &file::AcmeSection,
        base: &Path,
        redis: bool,
        plain_listener: bool,
    ) -> AcmeConfig {
        let email = section.email.as_ref().and_then(|e| {
            let email = e.get_ref().trim();
            if email.contains('@') && !email.contains(char::is_whitespace) {
                Some(format!("mailto:{}", email.trim_start_matches("mailto:")))
            } else {
                self.error(
                    e.span(),
                    "acme.email",
                    format!("{email:?} is not an address"),
                );
                None
            }
        });
        let directory = match &section.directory {
            Some(d) if d.get_ref().starts_with("https://") => d.get_ref().clone(),
            Some(d) => {
                self.error(d.span(), "acme.directory", "must be an https:// URL");
                String::new()
            }
            None => DEFAULT_DIRECTORY.to_string(),
        };
        let directory_ca = section.directory_ca.as_ref().and_then(|ca| {
            let path = self.readable_file(ca, "acme.directory_ca", base)?;
            let pem = std::fs::read(&path).unwrap_or_default();
            if pem.starts_with(b"-----BEGIN") {
                Some(path)
            } else {
                let message = format!("{} is not PEM", path.display());
                self.error(ca.span(), "acme.directory_ca", message);
                None
            }
        });
        let storage = match &section.storage {
            Some(s) if s.get_ref() == "redis" => {
                if !redis {
                    self.error(s.span(), "acme.storage", "\"redis\" needs a [redis] table");
                }
                AcmeStorage::Redis
            }
            Some(s) if !s.get_ref().trim().is_empty() => AcmeStorage::Dir(base.join(s.get_ref())),
            Some(s) => {
                self.error(s.span(), "acme.storage", "a directory, or \"redis\"");
                AcmeStorage::Dir(base.join("acme"))
            }
            None => AcmeStorage::Dir(base.join("acme")),
        };
        let renew_before = self.timeout(
            &section.renew_before,
            "acme.renew_before",
            DEFAULT_RENEW_BEFORE,
        );
        let challenge = section
            .challenge
            .as_ref()
            .and_then(|c| match c.get_ref().as_str() {
                "http-01" if !plain_listener => {
                    let message =
                        "http-01 needs a plain (non-TLS) [[listener]] for the CA to reach";
                    self.error(c.span(), "acme.challenge", message);
                    None
                }
                "http-01" => Some(Challenge::Http01),
                "tls-alpn-01" => Some(Challenge::TlsAlpn01),
                other => {
                    let message = format!("{other:?}: \"http-01\" or \"tls-alpn-01\"");
                    self.error(c.span(), "acme.challenge", message);
                    None
                }
            });
        AcmeConfig {
            email,
            directory,
            directory_ca,
            storage,
            renew_before,
            challenge,
        }
    }

    /// The names of one `acme` entry, lower-cased; `key` is where it is written.
    pub(super) fn acme_names(&mut self, names: &[toml::Spanned<String>], key: &str) -> Vec<String> {
        let mut out = Vec::new();
        for name in names {
            match dns_name(name.get_ref()) {
                Ok(n) if out.contains(&n) => {
                    self.error(name.span(), key, format!("{n} is listed twice"))
                }
                Ok(n) => out.push(n),
                Err(e) => self.error(name.span(), key, e),
            }
        }
        out
    }
}

impl Validator<'_> {
    /// Every `acme` entry needs `[acme]`, and a name has one entry (one certificate).
    pub(super) fn acme_entries(
        &mut self,
        raw: &[toml::Spanned<file::ListenerSection>],
        listeners: &[super::ListenerConfig],
        configured: bool,
    ) {
        let mut seen = std::collections::BTreeSet::new();
        for (i, (l, listener)) in raw.iter().zip(listeners).enumerate() {
            let entries =
                (l.get_ref().tls.iter().enumerate()).filter(|(_, e)| e.get_ref().acme.is_some());
            let names = listener.tls.iter().filter_map(|t| match t {
                super::TlsSource::Acme(names) => Some(names),
                super::TlsSource::Files(_) => None,
            });
            for ((j, entry), names) in entries.zip(names) {
                let key = format!("listener[{i}].tls[{j}].acme");
                if !configured {
                    self.error(
                        entry.span(),
                        &key,
                        "needs an [acme] table (at least its email)",
                    );
                }
                for name in names {
                    if !seen.insert(name.clone()) {
                        let message = format!("{name} is in another acme entry already");
                        self.error(entry.span(), &key, message);
                    }
                }
            }
        }
    }
}

/// A name a certificate can be ordered for with HTTP-01 or TLS-ALPN-01: a DNS name with
/// at least two labels, no wildcard, no IP address.
pub fn dns_name(name: &str) -> Result<String, String> {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    if name.starts_with("*.") {
        return Err(format!(
            "{name}: a wildcard needs the DNS-01 challenge, which the gateway does not answer"
        ));
    }
    if name.parse::<std::net::IpAddr>().is_ok() {
        return Err(format!(
            "{name}: certificates are ordered for names, not addresses"
        ));
    }
    let labels_ok = name.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    });
    if !labels_ok || name.len() > 253 || !name.contains('.') {
        return Err(format!("{name:?} is not a DNS name like \"example.com\""));
    }
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::dns_name;
    use proptest::prelude::*;

    proptest! {
        /// Any text: no panic, and what is accepted is a lower-case DNS name that is
        /// accepted again as it is.
        #[test]
        fn fuzz_dns_names(raw in "[a-zA-Z0-9.*_-]{0,80}|\\PC{0,40}") {
            if let Ok(name) = dns_name(&raw) {
                prop_assert_eq!(&name, &name.to_ascii_lowercase());
                prop_assert!(name.contains('.') && name.len() <= 253);
                prop_assert_eq!(dns_name(&name), Ok(name.clone()));
            }
        }
    }

    #[test]
    fn names_are_checked_and_lower_cased() {
        assert_eq!(dns_name("WWW.Example.com.").unwrap(), "www.example.com");
        for bad in [
            "*.example.com",
            "127.0.0.1",
            "localhost",
            "a..b",
            "-a.b",
            "a_b.c",
            "",
        ] {
            assert!(dns_name(bad).is_err(), "{bad}");
        }
    }
}
