//! Automatic HTTPS against a real ACME server: `pebble` (Let's Encrypt's test CA, started
//! here on loopback ports), asking a DNS server of the test's own where the names are.
//! Pebble validates at the fixed ports its config names, so the gateway's listeners take
//! free ports found beforehand.

use crate::common::*;
use crate::dns::DnsServer;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

struct Pebble {
    child: Child,
    /// Its directory URL.
    directory: String,
    /// The CA (PEM) that signed pebble's own HTTPS certificate: `directory_ca`.
    api_ca: PathBuf,
    api_ca_pem: String,
    management: SocketAddr,
    _dir: tempfile::TempDir,
    dns: DnsServer,
}

fn free_port() -> u16 {
    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    probe.local_addr().unwrap().port()
}

impl Pebble {
    /// Pebble validating HTTP-01 at `http_port` and TLS-ALPN-01 at `tls_port`, issuing
    /// certificates valid for `validity`; `None` (the caller says why it skips) when it
    /// is not installed.
    async fn start(
        http_port: u16,
        tls_port: u16,
        validity: Duration,
        env: &[(&str, &str)],
    ) -> Option<Pebble> {
        if Command::new("pebble").arg("-help").output().is_err() {
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        // Pebble's own HTTPS certificate, for 127.0.0.1, from a CA of the test's.
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "pebble API test CA");
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params =
            rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
                .unwrap();
        params.subject_alt_names = vec![
            rcgen::SanType::DnsName("localhost".try_into().unwrap()),
            rcgen::SanType::IpAddress("127.0.0.1".parse().unwrap()),
        ];
        let cert = params.signed_by(&key, &issuer).unwrap();
        std::fs::write(dir.path().join("api.crt"), cert.pem()).unwrap();
        std::fs::write(dir.path().join("api.key"), key.serialize_pem()).unwrap();
        let api_ca = dir.path().join("api-ca.pem");
        std::fs::write(&api_ca, ca.pem()).unwrap();

        let (listen, management) = (free_port(), free_port());
        let config = serde_json::json!({"pebble": {
            "listenAddress": format!("127.0.0.1:{listen}"),
            "managementListenAddress": format!("127.0.0.1:{management}"),
            "certificate": dir.path().join("api.crt"),
            "privateKey": dir.path().join("api.key"),
            "httpPort": http_port,
            "tlsPort": tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false,
            "certificateValidityPeriod": validity.as_secs(),
        }});
        let config_path = dir.path().join("pebble.json");
        std::fs::write(&config_path, config.to_string()).unwrap();
        let dns = DnsServer::start().await;
        let child = Command::new("pebble")
            .arg("-config")
            .arg(&config_path)
            .arg("-dnsserver")
            .arg(dns.addr.to_string())
            .arg("-strict=false")
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let pebble = Pebble {
            child,
            directory: format!("https://127.0.0.1:{listen}/dir"),
            api_ca,
            api_ca_pem: ca.pem(),
            management: SocketAddr::from(([127, 0, 0, 1], management)),
            _dir: dir,
            dns,
        };
        let api = SocketAddr::from(([127, 0, 0, 1], listen));
        wait_until("pebble listens", Duration::from_secs(20), || {
            std::net::TcpStream::connect(api).is_ok()
        })
        .await;
        Some(pebble)
    }

    /// The `[acme]` table for this pebble.
    fn acme_table(&self, storage: &Path, extra: &str) -> String {
        format!(
            "[acme]\nemail = \"ops@example.com\"\ndirectory = \"{}\"\ndirectory_ca = \"{}\"\n\
             storage = \"{}\"\n{extra}\n",
            self.directory,
            self.api_ca.display(),
            storage.display()
        )
    }

    /// The root pebble issues under (made anew at each start).
    async fn root(&self) -> reqwest::Certificate {
        let api_ca = reqwest::Certificate::from_pem(self.api_ca_pem.as_bytes()).unwrap();
        let client = reqwest::Client::builder()
            .add_root_certificate(api_ca)
            .build()
            .unwrap();
        let url = format!("https://{}/roots/0", self.management);
        let pem = client.get(url).send().await.unwrap().text().await.unwrap();
        reqwest::Certificate::from_pem(pem.as_bytes()).unwrap()
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A client trusting only pebble's root, sending `name` to `addr`, a new TLS connection
/// per request.
fn client_for(root: reqwest::Certificate, name: &str, addr: SocketAddr) -> reqwest::Client {
    reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(root)
        .resolve(name, addr)
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

/// A gateway config with an admin listener, a TLS listener at `tls_port` with `entries`
/// (`{ acme = [...] }, ...`), pebble's `[acme]` with `extra` (TLS-ALPN-01 unless it says),
/// and a catch-all route to `backend`.
fn tls_listener_config(
    pebble: &Pebble,
    storage: &Path,
    tls_port: u16,
    entries: &str,
    extra: &str,
    backend: SocketAddr,
) -> String {
    let challenge = if extra.contains("challenge") {
        ""
    } else {
        "challenge = \"tls-alpn-01\"\n"
    };
    format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n\n[[listener]]\nlisten = \"127.0.0.1:{tls_port}\"\n\
         tls = [{entries}]\n\n{}{}",
        pebble.acme_table(storage, &format!("{challenge}{extra}")),
        upstream_config("app", &[backend], "")
    )
}

/// The certificates `gatewayctl certs --json` lists.
fn certs(gw: &Gateway) -> Vec<serde_json::Value> {
    let (code, out, err) = gw.ctl(&["certs", "--json"]);
    assert_eq!(code, 0, "{err}");
    serde_json::from_str(&out).unwrap()
}

fn cert_for<'a>(certs: &'a [serde_json::Value], name: &str) -> &'a serde_json::Value {
    certs
        .iter()
        .find(|c| c["names"][0] == name)
        .unwrap_or_else(|| panic!("no certificate for {name}: {certs:?}"))
}

async fn wait_for_certificate(gw: &Gateway, name: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !cert_for(&certs(gw), name)["not_after"].is_i64() {
        if std::time::Instant::now() > deadline {
            panic!("no certificate for {name}; the log:\n{}", gw.stderr());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

macro_rules! pebble_or_skip {
    ($pebble:expr) => {
        match $pebble {
            Some(p) => p,
            None => {
                eprintln!("skipped: pebble is not installed (apt install pebble)");
                return;
            }
        }
    };
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_alpn_01_gets_a_certificate_clients_verify_and_reload_upgrade_restart_reuse_it() {
    let tls_port = free_port();
    let pebble =
        pebble_or_skip!(Pebble::start(free_port(), tls_port, Duration::from_secs(3600), &[]).await);
    pebble.dns.set("a.test", &[Ipv4Addr::LOCALHOST]);
    let backend = Backend::named("app").await;
    let storage = tempfile::tempdir().unwrap();
    let entries = "{ acme = [\"a.test\"] }";
    let config = tls_listener_config(&pebble, storage.path(), tls_port, entries, "", backend.addr);
    let gw = Gateway::start(&config);
    let tls_addr = SocketAddr::from(([127, 0, 0, 1], tls_port));
    wait_for_certificate(&gw, "a.test").await;

    let client = client_for(pebble.root().await, "a.test", tls_addr);
    let url = format!("https://a.test:{tls_port}/");
    let response = client.get(&url).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), "app");

    let listed = certs(&gw);
    let entry = cert_for(&listed, "a.test");
    assert_eq!(entry["source"], "acme");
    assert!(
        entry["issuer"].as_str().unwrap().contains("Pebble"),
        "{entry}"
    );
    assert!(entry["next_renewal"].as_i64().unwrap() < entry["not_after"].as_i64().unwrap());
    let (_, metrics) = gw.admin_get("/metrics").await;
    assert!(
        metrics.contains("gateway_tls_certificate_expiry_seconds{name=\"a.test\"}"),
        "{metrics}"
    );
    let (status, ready) = gw.admin_get("/readyz").await;
    assert_eq!(status, 200, "{ready}");
    assert!(!ready.contains("acme: waiting"), "{ready}");
    let (code, table, _) = gw.ctl(&["certs"]);
    assert_eq!(code, 0);
    assert!(
        table.contains("a.test") && table.contains("Pebble"),
        "{table}"
    );
    use std::os::unix::fs::PermissionsExt;
    for file in ["a.test.crt", "a.test.key", "account.json"] {
        let mode = std::fs::metadata(storage.path().join(file))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{file}");
    }
    assert!(gw.stderr().contains("ordering a certificate for a.test"));
    let not_after = entry["not_after"].as_i64().unwrap();
    drop(gw);

    // A reload and an upgrade keep the certificate and order nothing.
    let gw = Gateway::start_copy(&config);
    let stop = crate::lifecycle::StopOnDrop(gw.socket());
    wait_for_certificate(&gw, "a.test").await;
    let (code, _, err) = gw.ctl(&["reload"]);
    assert_eq!(code, 0, "{err}");
    gw.replace_program(&gateway_bin());
    let (code, _, err) = gw.ctl(&["upgrade"]);
    assert_eq!(code, 0, "{err}");
    wait_for_certificate(&gw, "a.test").await;
    assert_eq!(cert_for(&certs(&gw), "a.test")["not_after"], not_after);
    assert_eq!(client.get(&url).send().await.unwrap().status(), 200);
    assert!(!gw.stderr().contains("ordering"), "{}", gw.stderr());
    drop(stop);
    drop(gw);

    // A new gateway on the same storage serves the stored certificate, orders nothing.
    let again = Gateway::start(&config);
    wait_for_certificate(&again, "a.test").await;
    assert_eq!(cert_for(&certs(&again), "a.test")["not_after"], not_after);
    let response = client.get(&url).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(!again.stderr().contains("ordering"), "{}", again.stderr());
    assert!(again.stderr().contains("certificate for a.test loaded"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_01_on_the_plain_listener_gets_a_certificate_ahead_of_every_route() {
    let (http_port, tls_port) = (free_port(), free_port());
    let pebble =
        pebble_or_skip!(Pebble::start(http_port, tls_port, Duration::from_secs(3600), &[]).await);
    pebble.dns.set("b.test", &[Ipv4Addr::LOCALHOST]);
    let backend = Backend::named("app").await;
    let storage = tempfile::tempdir().unwrap();
    // The plain listener redirects everything to HTTPS, and a route takes the challenge
    // path elsewhere: the challenge is answered before both.
    let config = format!(
        "[[listener]]\nlisten = \"127.0.0.1:{http_port}\"\nredirect_https = true\n\n[[listener]]\n\
         listen = \"127.0.0.1:{tls_port}\"\ntls = [{{ acme = [\"b.test\"] }}]\n\n{}\
         [[route]]\npath_prefix = \"/.well-known/acme-challenge/\"\n\
         redirect = \"https://elsewhere.example{{uri}}\"\n\n{}",
        pebble.acme_table(storage.path(), ""),
        upstream_config("app", &[backend.addr], "")
    );
    let gw = Gateway::start(&config);
    wait_for_certificate(&gw, "b.test").await;
    assert!(gw
        .stderr()
        .contains("ordering a certificate for b.test (Http01)"));
    let tls_addr = SocketAddr::from(([127, 0, 0, 1], tls_port));
    let client = client_for(pebble.root().await, "b.test", tls_addr);
    let response = client
        .get(format!("https://b.test:{tls_port}/"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    // An unknown token is not answered by the gateway: it is redirected like the rest.
    let plain = format!("http://127.0.0.1:{http_port}/.well-known/acme-challenge/nope");
    let answer = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(plain)
        .header("host", format!("b.test:{http_port}"))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 308);
    assert_eq!(
        answer.headers()["location"],
        "https://b.test/.well-known/acme-challenge/nope"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_order_is_logged_and_retried_while_the_other_names_serve() {
    let tls_port = free_port();
    let pebble =
        pebble_or_skip!(Pebble::start(free_port(), tls_port, Duration::from_secs(3600), &[]).await);
    // good.test resolves; nowhere.test does not: pebble cannot validate it.
    pebble.dns.set("good.test", &[Ipv4Addr::LOCALHOST]);
    let backend = Backend::named("app").await;
    let storage = tempfile::tempdir().unwrap();
    let entries = "{ acme = [\"good.test\"] }, { acme = [\"nowhere.test\"] }";
    let config = tls_listener_config(&pebble, storage.path(), tls_port, entries, "", backend.addr);
    let gw = Gateway::start(&config);
    wait_for_certificate(&gw, "good.test").await;
    wait_until("the refusal is noted", Duration::from_secs(30), || {
        cert_for(&certs(&gw), "nowhere.test")["last_error"].is_string()
    })
    .await;
    let listed = certs(&gw);
    let error = listed
        .iter()
        .find(|c| c["names"][0] == "nowhere.test")
        .unwrap()["last_error"]
        .as_str()
        .unwrap()
        .to_string();
    // The CA's own words: the name does not resolve.
    assert!(error.contains("nowhere.test"), "{error}");
    let log = gw.stderr();
    assert!(
        log.contains("no certificate for nowhere.test") && log.contains("trying again in 30s"),
        "{log}"
    );
    let (status, ready) = gw.admin_get("/readyz").await;
    assert_eq!(status, 200, "{ready}");
    assert!(ready.contains("acme: waiting for nowhere.test"), "{ready}");
    assert!(!ready.contains("good.test"), "{ready}");

    let root = pebble.root().await;
    let tls_addr = SocketAddr::from(([127, 0, 0, 1], tls_port));
    let good = client_for(root.clone(), "good.test", tls_addr);
    let response = good
        .get(format!("https://good.test:{tls_port}/"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    // The waiting name's handshake fails: no certificate, not another name's.
    let waiting = client_for(root, "nowhere.test", tls_addr);
    let refused = waiting
        .get(format!("https://nowhere.test:{tls_port}/"))
        .send()
        .await;
    assert!(refused.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_rejecting_every_request_is_an_error_in_the_log_and_in_certs() {
    let tls_port = free_port();
    let pebble = pebble_or_skip!(
        Pebble::start(
            free_port(),
            tls_port,
            Duration::from_secs(3600),
            &[("PEBBLE_WFE_NONCEREJECT", "100")]
        )
        .await
    );
    pebble.dns.set("c.test", &[Ipv4Addr::LOCALHOST]);
    let storage = tempfile::tempdir().unwrap();
    let entries = "{ acme = [\"c.test\"] }";
    let config = tls_listener_config(
        &pebble,
        storage.path(),
        tls_port,
        entries,
        "",
        closed_port(),
    );
    let gw = Gateway::start(&config);
    wait_until("the refusal is noted", Duration::from_secs(30), || {
        cert_for(&certs(&gw), "c.test")["last_error"].is_string()
    })
    .await;
    let error = cert_for(&certs(&gw), "c.test")["last_error"].to_string();
    assert!(error.contains("badNonce"), "{error}");
    assert!(gw.stderr().contains("no certificate for c.test"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewal_under_load_fails_no_request() {
    let tls_port = free_port();
    // Certificates for 12 s, renewed half-way: several renewals within the test.
    let pebble =
        pebble_or_skip!(Pebble::start(free_port(), tls_port, Duration::from_secs(12), &[]).await);
    pebble.dns.set("d.test", &[Ipv4Addr::LOCALHOST]);
    let backend = Backend::named("app").await;
    let storage = tempfile::tempdir().unwrap();
    let entries = "{ acme = [\"d.test\"] }";
    let extra = "renew_before = \"6s\"";
    let config = "[gateway]\nworkers = 2\n".to_string()
        + &tls_listener_config(
            &pebble,
            storage.path(),
            tls_port,
            entries,
            extra,
            backend.addr,
        );
    let gw = Gateway::start(&config);
    wait_for_certificate(&gw, "d.test").await;
    let first = cert_for(&certs(&gw), "d.test")["not_after"]
        .as_i64()
        .unwrap();
    let client = client_for(
        pebble.root().await,
        "d.test",
        SocketAddr::from(([127, 0, 0, 1], tls_port)),
    );
    let url = format!("https://d.test:{tls_port}/");
    let (mut ok, mut failed) = (0, Vec::new());
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    // A bounded loop: a new handshake per request, for 15 s.
    while std::time::Instant::now() < deadline {
        match client.get(&url).send().await {
            Ok(r) if r.status() == 200 => ok += 1,
            Ok(r) => failed.push(format!("status {}", r.status())),
            Err(e) => failed.push(format!("{e:?}")),
        }
    }
    let last = cert_for(&certs(&gw), "d.test")["not_after"]
        .as_i64()
        .unwrap();
    assert!(failed.is_empty(), "{} ok, failed: {failed:?}", ok);
    assert!(last > first, "no renewal: {first} {last}");
    let renewals = gw
        .stderr()
        .matches("certificate for d.test obtained")
        .count();
    assert!(renewals >= 2, "{}", gw.stderr());
    assert!(ok > 50, "{ok}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_sharing_redis_storage_order_once() {
    let tls_port = free_port();
    // Which gateway pebble reaches is not what this is about: it validates without
    // looking, and the two gateways race for the order.
    let pebble = pebble_or_skip!(
        Pebble::start(
            free_port(),
            tls_port,
            Duration::from_secs(3600),
            &[("PEBBLE_VA_ALWAYS_VALID", "1")]
        )
        .await
    );
    let Some(redis) = crate::redis_limits::Redis::start(None).await else {
        eprintln!("skipped: redis-server is not installed");
        return;
    };
    pebble.dns.set("e.test", &[Ipv4Addr::LOCALHOST]);
    let backend = Backend::named("app").await;
    let config = |port: u16| {
        format!(
            "[redis]\nurl = \"redis://{}\"\n\n[[listener]]\nlisten = \"127.0.0.1:{port}\"\n\
             tls = [{{ acme = [\"e.test\"] }}]\n\n{}{}",
            redis.addr,
            pebble
                .acme_table(Path::new("unused"), "challenge = \"tls-alpn-01\"")
                .replace("storage = \"unused\"", "storage = \"redis\""),
            upstream_config("app", &[backend.addr], "")
        )
    };
    let (port_a, port_b) = (free_port(), free_port());
    let (a, b) = (
        Gateway::start(&config(port_a)),
        Gateway::start(&config(port_b)),
    );
    wait_for_certificate(&a, "e.test").await;
    wait_for_certificate(&b, "e.test").await;
    let ordered = |gw: &Gateway| {
        gw.stderr()
            .matches("ordering a certificate for e.test")
            .count()
    };
    assert_eq!(
        ordered(&a) + ordered(&b),
        1,
        "{}\n---\n{}",
        a.stderr(),
        b.stderr()
    );
    let (cert_a, cert_b) = (
        cert_for(&certs(&a), "e.test").clone(),
        cert_for(&certs(&b), "e.test").clone(),
    );
    assert_eq!(cert_a["not_after"], cert_b["not_after"]);
    let root = pebble.root().await;
    for port in [port_a, port_b] {
        let client = client_for(
            root.clone(),
            "e.test",
            SocketAddr::from(([127, 0, 0, 1], port)),
        );
        let response = client
            .get(format!("https://e.test:{port}/"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
    // A third gateway starting later loads what is stored.
    let c = Gateway::start(&config(free_port()));
    wait_for_certificate(&c, "e.test").await;
    assert_eq!(ordered(&c), 0, "{}", c.stderr());
}
