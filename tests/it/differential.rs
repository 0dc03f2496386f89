//! Differential test of the request-head parser: the same bytes through hyper's HTTP/1
//! server (what the gateway used before its own front end) and through ours (parser
//! and request checks). Ours may refuse more (it is meant to: missing Host, CL with TE,
//! chunked twice, …) but must never accept what hyper refuses.

use gateway::config::ClientLimits;
use gateway::proxy::check;
use gateway::worker::http1::head;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn limits() -> ClientLimits {
    ClientLimits {
        header_read_timeout: Duration::from_secs(10),
        client_body_timeout: Duration::from_secs(10),
        max_request_line: 8192,
        max_header_bytes: 32768,
    }
}

/// Does hyper's server hand this head to its service?
async fn hyper_accepts(raw: &[u8]) -> bool {
    let (client, server) = tokio::io::duplex(1 << 20);
    let called = Arc::new(AtomicBool::new(false));
    let seen = called.clone();
    let limits = limits();
    let serving = tokio::spawn(async move {
        let service = service_fn(move |_req| {
            seen.store(true, Ordering::SeqCst);
            async { Ok::<_, std::convert::Infallible>(hyper::Response::new(String::new())) }
        });
        let _ = http1::Builder::new()
            .max_buf_size(limits.max_request_line + limits.max_header_bytes + 4 * 1024)
            .max_headers(gateway::wire::MAX_HEADERS)
            .serve_connection(TokioIo::new(server), service)
            .await;
    });
    let (mut read, mut write) = tokio::io::split(client);
    let _ = write.write_all(raw).await;
    let _ = write.shutdown().await;
    let mut sink = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(2), read.read_to_end(&mut sink)).await;
    serving.abort();
    called.load(Ordering::SeqCst)
}

fn we_accept(raw: &[u8]) -> bool {
    match head::parse(raw, &limits()) {
        Ok(Some((head, _))) => {
            let p = &head.parts;
            check::check(&p.method, &p.uri, p.version, &p.headers, &limits()).is_ok()
        }
        _ => false,
    }
}

/// xorshift: the same cases on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

const BASES: &[&str] = &[
    "GET /a?b=c HTTP/1.1\r\nHost: example.com\r\nUser-Agent: x\r\n\r\n",
    "POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc",
    "POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    "GET http://a/x HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, x-y\r\nX-Y: 1\r\n\r\n",
    "OPTIONS * HTTP/1.1\r\nHost: a:8080\r\n\r\n",
    "GET / HTTP/1.0\r\n\r\n",
];

/// Bytes that parsers disagree about.
const INSERTS: &[u8] = b" \t\r\n:\0\x7f\x80\xff,;\"a0/%?#@[]-";

fn mutate(rng: &mut Rng, base: &str) -> Vec<u8> {
    let mut bytes = base.as_bytes().to_vec();
    for _ in 0..=rng.below(3) {
        let at = rng.below(bytes.len() + 1);
        match rng.below(4) {
            0 => bytes.insert(at, INSERTS[rng.below(INSERTS.len())]),
            1 if at < bytes.len() => {
                bytes.remove(at);
            }
            2 if at < bytes.len() => bytes[at] = INSERTS[rng.below(INSERTS.len())],
            _ => {
                // Repeat a header line.
                let text = String::from_utf8_lossy(&bytes).into_owned();
                let lines: Vec<&str> = text.split("\r\n").collect();
                if lines.len() > 2 {
                    let line = lines[1 + rng.below(lines.len() - 2)].to_string();
                    let pos = text.find("\r\n").unwrap() + 2;
                    bytes.splice(pos..pos, format!("{line}\r\n").into_bytes());
                }
            }
        }
    }
    bytes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_hyper_refuses_is_accepted() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut cases: Vec<Vec<u8>> = BASES.iter().map(|b| b.as_bytes().to_vec()).collect();
    for i in 0..1500 {
        cases.push(mutate(&mut rng, BASES[i % BASES.len()]));
    }
    let (mut both, mut only_hyper, mut neither) = (0, 0, 0);
    let mut wrong = Vec::new();
    for case in &cases {
        match (hyper_accepts(case).await, we_accept(case)) {
            (true, true) => both += 1,
            (true, false) => {
                only_hyper += 1;
                if std::env::var_os("SHOW_ONLY_HYPER").is_some() {
                    eprintln!("only hyper: {:?}", String::from_utf8_lossy(case));
                }
            }
            (false, true) => wrong.push(String::from_utf8_lossy(case).into_owned()),
            (false, false) => neither += 1,
        }
    }
    assert!(
        wrong.is_empty(),
        "accepted though hyper refuses: {wrong:#?}"
    );
    // The cases must exercise both sides.
    assert!(
        both > 100 && neither > 100,
        "{both} both, {only_hyper} only hyper, {neither} neither"
    );
    eprintln!("{both} accepted by both, {only_hyper} only by hyper, {neither} by neither");
}
