//! `[[listener]]`: where the gateway listens, and with which certificates.

use super::{file, Validator};
use crate::tls::load_certified_key;
pub use crate::tls::{TlsFiles, TlsSource};
use std::net::SocketAddr;
use std::path::Path;
use toml::Spanned;

#[derive(Debug, Clone)]
pub struct ListenerConfig {
    pub addr: SocketAddr,
    pub tls: Vec<TlsSource>,
    /// Where the address is written, `FILE:LINE:COLUMN: listener[N].listen`, for a
    /// failure to listen on it that only start can find.
    pub at: String,
    /// Each connection starts with a PROXY protocol header (v1 or v2) naming the client.
    pub proxy_protocol: bool,
    /// What routes' `listener` lists call it.
    pub name: Option<String>,
    /// Every request is redirected to HTTPS (308), ACME challenges excepted.
    pub redirect_https: bool,
}

impl Validator<'_> {
    /// The `[[listener]]` sections: their addresses, unique but for port 0, and their
    /// certificates, loaded now so a bad one is an error of `check`.
    pub(super) fn listeners(
        &mut self,
        raw: &[Spanned<file::ListenerSection>],
        base: &Path,
    ) -> Vec<ListenerConfig> {
        let mut listeners = Vec::new();
        if raw.is_empty() {
            self.error(0..0, "listener", "at least one [[listener]] is needed");
        }
        for (i, l) in raw.iter().enumerate() {
            let l = l.get_ref();
            let key = format!("listener[{i}].listen");
            let addr = self.socket_addr(&l.listen, &key);
            let mut tls = Vec::new();
            for (j, entry) in l.tls.iter().enumerate() {
                let span = entry.span();
                let entry = entry.get_ref();
                let at = format!("listener[{i}].tls[{j}]");
                match (&entry.cert, &entry.key, &entry.acme) {
                    (Some(cert), Some(key), None) => {
                        let cert = self.readable_file(cert, &format!("{at}.cert"), base);
                        let key = self.readable_file(key, &format!("{at}.key"), base);
                        if let (Some(cert), Some(key)) = (cert, key) {
                            let files = TlsFiles { cert, key };
                            match load_certified_key(&files) {
                                Ok(_) => tls.push(TlsSource::Files(files)),
                                Err(e) => self.error(span, &at, e),
                            }
                        }
                    }
                    (None, None, Some(names)) => {
                        let names = self.acme_names(names, &format!("{at}.acme"));
                        if names.is_empty() {
                            self.error(span, &format!("{at}.acme"), "name at least one name");
                        } else {
                            tls.push(TlsSource::Acme(names));
                        }
                    }
                    _ => self.error(span, &at, "either cert and key, or acme = [\"NAME\", ...]"),
                }
            }
            if let Some(addr) = addr {
                // Port 0 asks the kernel for a free port: two of those never collide.
                if addr.port() != 0
                    && listeners
                        .iter()
                        .any(|other: &ListenerConfig| other.addr == addr)
                {
                    self.error(
                        l.listen.span(),
                        &key,
                        format!("{addr} is already used by another listener"),
                    );
                }
                let at = self.place(l.listen.span(), &key);
                let name = l.name.as_ref().and_then(|n| {
                    let named = format!("listener[{i}].name");
                    let valid = !n.get_ref().is_empty()
                        && n.get_ref()
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
                    if !valid {
                        self.error(n.span(), &named, "letters, digits, - and _");
                        return None;
                    }
                    if listeners
                        .iter()
                        .any(|o| o.name.as_ref() == Some(n.get_ref()))
                    {
                        self.error(
                            n.span(),
                            &named,
                            format!("another listener is called {:?}", n.get_ref()),
                        );
                        return None;
                    }
                    Some(n.get_ref().clone())
                });
                let redirect_https = l.redirect_https.as_ref().is_some_and(|r| *r.get_ref());
                if let (true, false, Some(r)) = (redirect_https, tls.is_empty(), &l.redirect_https)
                {
                    self.error(
                        r.span(),
                        &format!("listener[{i}].redirect_https"),
                        "a TLS listener serves HTTPS already",
                    );
                }
                listeners.push(ListenerConfig {
                    addr,
                    tls,
                    at,
                    proxy_protocol: l.proxy_protocol,
                    name,
                    redirect_https,
                });
            }
        }

        listeners
    }
}
