//! The client of the handshake rows of `benches/compare.sh`: new TLS connections, each a
//! handshake and one HTTP/1.1 request with `Connection: close`, from CONCURRENCY tasks for
//! SECONDS, so that the server's CPU per handshake can be read.
//!
//! The client is made cheaper than the server on purpose, so that the server is what a row
//! measures: it checks neither the certificate nor the handshake signature (a loopback
//! benchmark of our own servers), which leaves it the key exchange and the symmetric work,
//! while the server also signs (ECDSA P-256 or RSA 2048). `full` never offers a session to
//! resume; `resumed` offers the tickets the server sent on earlier connections (TLS 1.3
//! PSK with (EC)DHE, as browsers do), and the output says what share of handshakes resumed.
//!
//! Usage: `handshakes PORT SECONDS CONCURRENCY full|resumed` (to 127.0.0.1, SNI
//! `localhost`); prints `handshakes_per_s p50_ms p99_ms resumed_share errors total`.

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{
    ClientSessionStore, Resumption, Tls12ClientSessionValue, Tls13ClientSessionValue,
};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, HandshakeKind, NamedGroup, SignatureScheme};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// Accepts any server: this client measures servers we started ourselves on loopback.
#[derive(Debug)]
struct Unchecked(Vec<SignatureScheme>);

impl ServerCertVerifier for Unchecked {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.clone()
    }
}

/// Every ticket the server sent, for any later connection. With rustls' own cache (8
/// tickets per server) about 30 % of 32 connections at once made full handshakes against
/// the gateway, 1 % against nginx; with this store none do. One server name: the client
/// talks to one server.
#[derive(Debug, Default)]
struct Tickets {
    kx_hint: Mutex<Option<NamedGroup>>,
    tickets: Mutex<VecDeque<Tls13ClientSessionValue>>,
}

impl ClientSessionStore for Tickets {
    fn set_kx_hint(&self, _: ServerName<'static>, group: NamedGroup) {
        *self.kx_hint.lock().unwrap() = Some(group);
    }
    fn kx_hint(&self, _: &ServerName<'_>) -> Option<NamedGroup> {
        *self.kx_hint.lock().unwrap()
    }
    fn set_tls12_session(&self, _: ServerName<'static>, _: Tls12ClientSessionValue) {}
    fn tls12_session(&self, _: &ServerName<'_>) -> Option<Tls12ClientSessionValue> {
        None
    }
    fn remove_tls12_session(&self, _: &ServerName<'static>) {}
    fn insert_tls13_ticket(&self, _: ServerName<'static>, value: Tls13ClientSessionValue) {
        let mut tickets = self.tickets.lock().unwrap();
        if tickets.len() == 4096 {
            tickets.pop_front();
        }
        tickets.push_back(value);
    }
    fn take_tls13_ticket(&self, _: &ServerName<'static>) -> Option<Tls13ClientSessionValue> {
        self.tickets.lock().unwrap().pop_back()
    }
}

/// What one connection gave: its latency and whether it resumed, or an error.
type Outcome = Result<(Duration, bool), String>;

async fn one(connector: &TlsConnector, port: u16) -> Outcome {
    let start = Instant::now();
    let tcp = TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    tcp.set_nodelay(true).ok();
    let name = ServerName::try_from("localhost").unwrap();
    let mut tls = connector
        .connect(name, tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let resumed = tls.get_ref().1.handshake_kind() == Some(HandshakeKind::Resumed);
    tls.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut answer = Vec::with_capacity(512);
    let read = tls.read_to_end(&mut answer).await;
    // A server may close without close_notify once the answer is complete.
    if !answer.starts_with(b"HTTP/1.1 200") {
        return Err(format!(
            "answer: {read:?} {:?}",
            String::from_utf8_lossy(&answer)
        ));
    }
    Ok((start.elapsed(), resumed))
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [port, seconds, concurrency, mode] = &args[..] else {
        eprintln!("usage: handshakes PORT SECONDS CONCURRENCY full|resumed");
        std::process::exit(2);
    };
    let port: u16 = port.parse().expect("PORT");
    let seconds: f64 = seconds.parse().expect("SECONDS");
    let concurrency: usize = concurrency.parse().expect("CONCURRENCY");
    let provider = rustls::crypto::ring::default_provider();
    let schemes = provider
        .signature_verification_algorithms
        .supported_schemes();
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Unchecked(schemes)))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config.resumption = match mode.as_str() {
        "full" => Resumption::disabled(),
        "resumed" => Resumption::store(Arc::new(Tickets::default())),
        other => panic!("mode is full or resumed, not {other}"),
    };
    let connector = TlsConnector::from(Arc::new(config));

    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(seconds);
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let connector = connector.clone();
            tokio::spawn(async move {
                let mut outcomes = Vec::new();
                while Instant::now() < deadline {
                    let outcome = one(&connector, port).await;
                    if outcome.is_err() {
                        // A refused or reset connection: do not spin on it.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    outcomes.push(outcome);
                }
                outcomes
            })
        })
        .collect();
    let mut latencies = Vec::new();
    let (mut resumed, mut errors) = (0usize, 0usize);
    let mut first_error = None;
    for task in tasks {
        for outcome in task.await.unwrap() {
            match outcome {
                Ok((took, again)) => {
                    latencies.push(took);
                    resumed += again as usize;
                }
                Err(e) => {
                    errors += 1;
                    first_error.get_or_insert(e);
                }
            }
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    if let Some(e) = first_error {
        eprintln!("handshakes: {errors} errors, the first: {e}");
    }
    latencies.sort();
    let at = |q: f64| {
        latencies
            .get(((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1)))
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    let done = latencies.len();
    println!(
        "{:.0} {:.3} {:.3} {:.2} {} {}",
        done as f64 / elapsed,
        at(0.5),
        at(0.99),
        resumed as f64 / done.max(1) as f64,
        errors,
        done
    );
}
