//! TLS termination and HTTP/2 with real clients: reqwest (rustls), Python's ssl module for
//! protocol versions rustls clients cannot speak.

use crate::common::*;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

struct Cert {
    cert: PathBuf,
    key: PathBuf,
    der: Vec<u8>,
    pem: String,
}

fn make_cert(dir: &Path, file: &str, names: &[&str]) -> Cert {
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let generated = rcgen::generate_simple_self_signed(names).unwrap();
    let cert = dir.join(format!("{file}.crt"));
    let key = dir.join(format!("{file}.key"));
    std::fs::write(&cert, generated.cert.pem()).unwrap();
    std::fs::write(&key, generated.signing_key.serialize_pem()).unwrap();
    Cert {
        cert,
        key,
        der: generated.cert.der().to_vec(),
        pem: generated.cert.pem(),
    }
}

fn tls_listener(certs: &[&Cert]) -> String {
    let entries: Vec<String> = certs
        .iter()
        .map(|c| {
            format!(
                "{{ cert = \"{}\", key = \"{}\" }}",
                c.cert.display(),
                c.key.display()
            )
        })
        .collect();
    // Another loopback address than the plain listener the harness adds.
    format!(
        "[[listener]]\nlisten = \"127.0.0.2:0\"\ntls = [ {} ]\n",
        entries.join(", ")
    )
}

/// A gateway with a TLS listener for `certs` in front of `backend`; returns it and the TLS
/// listener's address.
fn tls_gateway(certs: &[&Cert], backend: &Backend) -> (Gateway, SocketAddr) {
    let gw = Gateway::start(&format!(
        "{}{}",
        tls_listener(certs),
        upstream_config("app", &[backend.addr], "")
    ));
    let tls = gw.addrs[1];
    (gw, tls)
}

fn tls_client(trust: &[&Cert], resolve: &[(&str, SocketAddr)]) -> reqwest::ClientBuilder {
    let mut b = reqwest::Client::builder()
        .no_proxy()
        .use_rustls_tls()
        .tls_info(true);
    for c in trust {
        b = b.add_root_certificate(reqwest::Certificate::from_pem(c.pem.as_bytes()).unwrap());
    }
    for (name, addr) in resolve {
        b = b.resolve(name, *addr);
    }
    b
}

fn peer_cert(res: &reqwest::Response) -> Vec<u8> {
    res.extensions()
        .get::<reqwest::tls::TlsInfo>()
        .and_then(|i| i.peer_certificate())
        .unwrap()
        .to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_picks_the_certificate_and_alpn_negotiates_h2() {
    let dir = tempfile::tempdir().unwrap();
    let a = make_cert(dir.path(), "a", &["a.test"]);
    let b = make_cert(dir.path(), "b", &["*.b.test"]);
    let backend = Backend::named("app").await;
    let (_gw, tls) = tls_gateway(&[&a, &b], &backend);
    let c = tls_client(&[&a, &b], &[("a.test", tls), ("www.b.test", tls)])
        .build()
        .unwrap();

    let res = c
        .get(format!("https://a.test:{}/x", tls.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(res.version(), http::Version::HTTP_2);
    assert_eq!(peer_cert(&res), a.der);
    assert_eq!(res.text().await.unwrap(), "app");
    let res = c
        .get(format!("https://www.b.test:{}/", tls.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(peer_cert(&res), b.der);

    let seen = &backend.seen()[0];
    assert_eq!(seen.header("x-forwarded-proto"), Some("https"));
    assert_eq!(
        seen.header("host"),
        Some(format!("a.test:{}", tls.port()).as_str())
    );
    assert_eq!(seen.header("x-forwarded-host"), seen.header("host"));
    assert!(seen.headers.keys().all(|k| !k.as_str().starts_with(':')));

    // HTTP/1.1 over TLS when the client offers only that.
    let h1 = tls_client(&[&a], &[("a.test", tls)])
        .http1_only()
        .build()
        .unwrap();
    let res = h1
        .get(format!("https://a.test:{}/", tls.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(res.version(), http::Version::HTTP_11);
    assert_eq!(res.text().await.unwrap(), "app");

    // No SNI (an IP address): the first certificate.
    let by_ip = tls_client(&[], &[])
        .danger_accept_invalid_certs(true)
        .build()
        .unwrap();
    let res = by_ip.get(format!("https://{tls}/")).send().await.unwrap();
    assert_eq!(peer_cert(&res), a.der);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_stream_over_h2() {
    use http_body_util::BodyExt;
    let dir = tempfile::tempdir().unwrap();
    let a = make_cert(dir.path(), "a", &["a.test"]);
    let backend = Backend::start(|req| async move {
        let body = req.into_body().collect().await.unwrap().to_bytes();
        hyper::Response::new(full(body))
    })
    .await;
    let (_gw, tls) = tls_gateway(&[&a], &backend);
    let c = tls_client(&[&a], &[("a.test", tls)]).build().unwrap();
    let body: Vec<u8> = (0..32 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
    let res = c
        .post(format!("https://a.test:{}/echo", tls.port()))
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(res.version(), http::Version::HTTP_2);
    let echoed = res.bytes().await.unwrap();
    assert!(
        echoed == body,
        "echoed {} bytes, sent {}",
        echoed.len(),
        body.len()
    );
}

/// Python's ssl module as the client: it can still be asked for TLS 1.1.
fn python_handshake(addr: SocketAddr, version: &str) -> String {
    let script = format!(
        r#"
import socket, ssl
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
ctx.minimum_version = ssl.TLSVersion.{version}
ctx.maximum_version = ssl.TLSVersion.{version}
try:
    with socket.create_connection(("{ip}", {port}), timeout=5) as s:
        with ctx.wrap_socket(s, server_hostname="a.test") as t:
            print("ok", t.version())
except Exception as e:
    print("refused", type(e).__name__, e)
"#,
        ip = addr.ip(),
        port = addr.port()
    );
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .output()
        .expect("python3 is needed");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_tls_12_and_13_and_plain_http_on_a_tls_port_is_closed() {
    let dir = tempfile::tempdir().unwrap();
    let a = make_cert(dir.path(), "a", &["a.test"]);
    let backend = Backend::named("app").await;
    let (_gw, tls) = tls_gateway(&[&a], &backend);
    assert_eq!(python_handshake(tls, "TLSv1_2"), "ok TLSv1.2");
    assert_eq!(python_handshake(tls, "TLSv1_3"), "ok TLSv1.3");
    let old = python_handshake(tls, "TLSv1_1");
    assert!(old.starts_with("refused"), "TLS 1.1: {old}");

    let reply = raw_exchange(
        tls,
        b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
        Duration::from_secs(5),
    );
    assert!(!reply.contains("HTTP/1.1 200"), "{reply:?}");
    // The worker is unharmed.
    let c = tls_client(&[&a], &[("a.test", tls)]).build().unwrap();
    let res = c
        .get(format!("https://a.test:{}/", tls.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(backend.requests(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_serves_a_changed_certificate_and_refuses_an_unreadable_one() {
    let dir = tempfile::tempdir().unwrap();
    let a = make_cert(dir.path(), "a", &["a.test"]);
    let backend = Backend::named("app").await;
    let (gw, tls) = tls_gateway(&[&a], &backend);
    let first = tls_client(&[&a], &[("a.test", tls)]).build().unwrap();
    let res = first
        .get(format!("https://a.test:{}/", tls.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(peer_cert(&res), a.der);

    // Replace the files in place, as certbot does, and reload.
    let renewed_dir = tempfile::tempdir().unwrap();
    let renewed = make_cert(renewed_dir.path(), "a", &["a.test"]);
    std::fs::copy(&renewed.cert, &a.cert).unwrap();
    std::fs::copy(&renewed.key, &a.key).unwrap();
    let (code, out, err) = gw.ctl(&["reload"]);
    assert_eq!(code, 0, "{out}{err}");
    let fresh = tls_client(&[&renewed], &[("a.test", tls)]).build().unwrap();
    let res = fresh
        .get(format!("https://a.test:{}/", tls.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(peer_cert(&res), renewed.der);

    // A broken key: the reload is refused, naming the file, and the renewed one stays.
    std::fs::write(&a.key, "not a key").unwrap();
    let (code, _, err) = gw.ctl(&["reload"]);
    assert_eq!(code, 1);
    assert!(err.contains(&a.key.display().to_string()), "{err}");
    let again = tls_client(&[&renewed], &[("a.test", tls)]).build().unwrap();
    let res = again
        .get(format!("https://a.test:{}/", tls.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(peer_cert(&res), renewed.der);
}

#[test]
fn a_missing_certificate_is_a_config_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gw.toml");
    std::fs::write(
        &path,
        "[[listener]]\nlisten = \"127.0.0.1:0\"\ntls = [ { cert = \"missing.crt\", key = \"missing.key\" } ]\n[[route]]\nupstream = \"u\"\n[upstream.u]\nservers = [ { address = \"127.0.0.1:1\" } ]\n",
    )
    .unwrap();
    let (code, err) = gateway_with_config(&["check"], &path);
    assert_eq!(code, Some(1));
    assert!(
        err.contains(":3:18: listener[0].tls[0].cert: cannot read") && err.contains("missing.crt"),
        "{err}"
    );
}

/// Sessions resumed by a Python ssl client: `count` connections with the session of the
/// first; prints how many resumed, then waits for a line on stdin and does it again, three
/// times in all.
const RESUME_SCRIPT: &str = r#"
import socket, ssl, sys
ip, port, count, version = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
ctx.minimum_version = ctx.maximum_version = getattr(ssl.TLSVersion, version)
def connect(session):
    with socket.create_connection((ip, port), timeout=5) as s:
        with ctx.wrap_socket(s, server_hostname="a.test", session=session) as t:
            t.sendall(b"GET / HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n")
            while t.recv(4096):
                pass
            return t.session, t.session_reused
session, _ = connect(None)
for round in range(3):
    reused = sum(connect(session)[1] for _ in range(count))
    print(f"{reused} of {count} resumed", flush=True)
    if round < 2:
        sys.stdin.readline()
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_resume_on_every_worker_after_a_reload_and_after_an_upgrade() {
    use std::io::{BufRead, BufReader, Write};
    let dir = tempfile::tempdir().unwrap();
    let a = make_cert(dir.path(), "a", &["a.test"]);
    let backend = Backend::named("app").await;
    let gw = Gateway::start_copy(&format!(
        "[gateway]\nworkers = 4\n{}{}",
        tls_listener(&[&a]),
        upstream_config("app", &[backend.addr], "")
    ));
    let _stop = crate::lifecycle::StopOnDrop(gw.socket());
    let tls = gw.addrs[1];
    for version in ["TLSv1_2", "TLSv1_3"] {
        let mut client = Command::new("python3")
            .args(["-c", RESUME_SCRIPT])
            .args([
                &tls.ip().to_string(),
                &tls.port().to_string(),
                "12",
                version,
            ])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut said = BufReader::new(client.stdout.take().unwrap()).lines();
        let mut go_on = client.stdin.take().unwrap();
        // 12 new connections over 4 workers: with per-worker keys about 3 would resume.
        assert_eq!(
            said.next().unwrap().unwrap(),
            "12 of 12 resumed",
            "{version}"
        );
        // A reload keeps the keys; the new supervisor of an upgrade gets them from the old.
        for step in ["reload", "upgrade"] {
            let (code, out, err) = gw.ctl(&[step]);
            assert_eq!(code, 0, "{out}{err}");
            go_on.write_all(b"go on\n").unwrap();
            assert_eq!(
                said.next().unwrap().unwrap(),
                "12 of 12 resumed",
                "{version} after {step}"
            );
        }
        assert!(client.wait().unwrap().success());
    }
}

/// A client that sends nothing but PING frames over HTTP/2 is cut off after a bounded
/// number of them (h2 would answer each for ever).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_ping_flood_is_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let cert = make_cert(dir.path(), "site", &["localhost"]);
    let backend = Backend::named("a").await;
    let (gw, tls) = tls_gateway(&[&cert], &backend);

    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.der.clone().into()).unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(tls).await.unwrap();
    let stream = connector
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap();
    let (mut read, mut write) = tokio::io::split(stream);
    let flood = tokio::spawn(async move {
        let mut bytes = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        bytes.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
        let ping = [0, 0, 8, 6, 0, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8];
        if write.write_all(&bytes).await.is_err() {
            return 0;
        }
        // More than the socket buffers on both sides can hold, so the writes fail once
        // the gateway closes, however late it gets to read.
        let mut sent = 0;
        while sent < 1_000_000 {
            if write.write_all(&ping.repeat(100)).await.is_err() {
                break;
            }
            sent += 100;
        }
        sent
    });
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match read.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the flooding connection stayed open");
    let sent = flood.await.unwrap();
    assert!(sent < 1_000_000, "all {sent} pings were taken");
    // The gateway's stderr is collected by a thread of its own: the line may land a
    // moment after the connection closed.
    wait_until("the flood logged", Duration::from_secs(5), || {
        gw.stderr().contains("http2 flood detected")
    })
    .await;
}

/// `watch = true` also follows the certificates the file names: a renewed certificate
/// written over the old one (as certbot does) is served without a reload command.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watched_gateway_serves_a_renewed_certificate_by_itself() {
    let dir = tempfile::tempdir().unwrap();
    let a = make_cert(dir.path(), "a", &["a.test"]);
    let backend = Backend::named("app").await;
    let gw = Gateway::start(&format!(
        "[gateway]\nwatch = true\n{}{}",
        tls_listener(&[&a]),
        upstream_config("app", &[backend.addr], "")
    ));
    let tls = gw.addrs[1];
    let renewed_dir = tempfile::tempdir().unwrap();
    let renewed = make_cert(renewed_dir.path(), "a", &["a.test"]);
    std::fs::copy(&renewed.key, &a.key).unwrap();
    std::fs::copy(&renewed.cert, &a.cert).unwrap();
    wait_until(
        "the renewed certificate loaded",
        Duration::from_secs(10),
        || status_json(&gw)["generation"] == 2,
    )
    .await;
    let client = tls_client(&[&renewed], &[("a.test", tls)]).build().unwrap();
    let res = client
        .get(format!("https://a.test:{}/", tls.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(peer_cert(&res), renewed.der);
}

/// Over HTTP/2, an answer given before the request body was read (here a 413 for a body
/// over max_body_size) reaches curl whole: the rest of the upload is read and dropped so
/// the stream ends without RST_STREAM, which curl 7.x reports as a failure (exit 92) in
/// place of the answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_413_over_http2_reaches_curl_whole() {
    let dir = tempfile::tempdir().unwrap();
    let cert = make_cert(dir.path(), "site", &["localhost"]);
    let backend = Backend::named("a").await;
    let gw = Gateway::start(&format!(
        "[gateway]\nmax_body_size = \"10\"\n{}{}",
        tls_listener(&[&cert]),
        upstream_config("app", &[backend.addr], "")
    ));
    let tls = gw.addrs[1];
    let body = dir.path().join("body");
    std::fs::write(&body, vec![b'x'; 3 << 20]).unwrap();
    let out = Command::new("curl")
        .args([
            "-sk",
            "--http2",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{http_version}",
        ])
        .arg("--resolve")
        .arg(format!("localhost:{}:{}", tls.port(), tls.ip()))
        .arg("--data-binary")
        .arg(format!("@{}", body.display()))
        .arg(format!("https://localhost:{}/", tls.port()))
        .output()
        .expect("curl is needed for this test");
    let said = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "curl: {said}");
    assert_eq!(said, "413 2");
    assert_eq!(backend.requests(), 0);
}

/// Files and compression over HTTP/2 (TLS, ALPN h2) as over HTTP/1.1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_and_compression_work_over_http2() {
    let dir = tempfile::tempdir().unwrap();
    let cert = make_cert(dir.path(), "a", &["a.test"]);
    let root = dir.path().join("site");
    std::fs::create_dir_all(&root).unwrap();
    let css = "body { color: black; }\n".repeat(200);
    std::fs::write(root.join("site.css"), &css).unwrap();
    let backend = Backend::named("app").await;
    let gw = Gateway::start(&format!(
        "{}[compression]\n[[route]]\npath_prefix = \"/static/\"\nroot = \"{}\"\n{}",
        tls_listener(&[&cert]),
        root.display(),
        upstream_config("app", &[backend.addr], "")
    ));
    let tls = gw.addrs[1];
    let c = tls_client(&[&cert], &[("a.test", tls)]).build().unwrap();
    let url = format!("https://a.test:{}/static/site.css", tls.port());
    let res = c.get(&url).send().await.unwrap();
    assert_eq!(res.version(), http::Version::HTTP_2);
    assert_eq!(res.status(), 200);
    assert_eq!(res.text().await.unwrap(), css);
    let res = c
        .get(&url)
        .header("range", "bytes=0-3")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 206);
    assert_eq!(res.text().await.unwrap(), "body");
    let res = c
        .get(&url)
        .header("accept-encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(res.version(), http::Version::HTTP_2);
    assert_eq!(res.headers()["content-encoding"], "gzip");
    let bytes = res.bytes().await.unwrap();
    let mut plain = String::new();
    std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&bytes[..]), &mut plain)
        .unwrap();
    assert_eq!(plain, css);
}

/// A TLS listener behind a balancer that speaks the PROXY protocol (an AWS NLB, say): the
/// header comes before the ClientHello, and the client it names is the one the upstream
/// hears of.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_protocol_header_before_the_tls_handshake_names_the_client() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let cert = make_cert(dir.path(), "site", &["localhost"]);
    let backend = Backend::named("a").await;
    let listener = tls_listener(&[&cert]).replace("tls = [", "proxy_protocol = true\ntls = [");
    let gw = Gateway::start(&format!(
        "{listener}{}",
        upstream_config("app", &[backend.addr], "")
    ));
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.der.clone().into()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let mut tcp = tokio::net::TcpStream::connect(gw.addrs[1]).await.unwrap();
    tcp.write_all(b"PROXY TCP4 203.0.113.7 127.0.0.2 40000 443\r\n")
        .await
        .unwrap();
    let mut stream = connector
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut reply = Vec::new();
    let _ = stream.read_to_end(&mut reply).await;
    let reply = String::from_utf8_lossy(&reply);
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert_eq!(backend.seen()[0].header("x-real-ip"), Some("203.0.113.7"));
    assert_eq!(backend.seen()[0].header("x-forwarded-proto"), Some("https"));
}
