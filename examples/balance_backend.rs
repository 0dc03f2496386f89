//! The backend of `make bench-balance`: answers every request with its name after a fixed
//! delay, and can be stuck for a while (answers held until the stuck period ends), the
//! way an app instance is during a long GC pause or a blocked event loop.
//!
//! Usage: `balance_backend NAME ADDRESS DELAY_MS [STUCK_FROM_S STUCK_FOR_S]`.

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::time::{Duration, Instant};

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() != 3 && args.len() != 5 {
        eprintln!("usage: balance_backend NAME ADDRESS DELAY_MS [STUCK_FROM_S STUCK_FOR_S]");
        std::process::exit(2);
    }
    let name: &'static str = Box::leak(args[0].clone().into_boxed_str());
    let delay = Duration::from_millis(args[2].parse().expect("DELAY_MS"));
    let started = Instant::now();
    let stuck = (args.len() == 5).then(|| {
        let from = Duration::from_secs(args[3].parse().expect("STUCK_FROM_S"));
        let length = Duration::from_secs(args[4].parse().expect("STUCK_FOR_S"));
        (started + from, started + from + length)
    });
    let listener = tokio::net::TcpListener::bind(&args[1]).await.map_err(|e| {
        eprintln!("balance backend {name}: cannot listen on {}: {e}", args[1]);
        e
    })?;
    loop {
        let (stream, _) = listener.accept().await?;
        tokio::spawn(async move {
            let service = service_fn(move |_req: Request<hyper::body::Incoming>| async move {
                tokio::time::sleep(delay).await;
                if let Some((from, until)) = stuck {
                    let now = Instant::now();
                    if now >= from && now < until {
                        tokio::time::sleep_until(until.into()).await;
                    }
                }
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(name))))
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
