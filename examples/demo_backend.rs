//! A small backend for `make run`: answers every request with its own name, so
//! `curl localhost:8080/` shows which backend the gateway picked.
//!
//! Usage: `demo_backend NAME ADDRESS` (e.g. `demo_backend a 127.0.0.1:3001`); without an
//! address, 127.0.0.1 and the `PORT` variable (as an app the gateway runs).

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use std::convert::Infallible;

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let name = args.next().unwrap_or_else(|| "demo".into());
    let addr = args
        .next()
        .or_else(|| std::env::var("PORT").ok().map(|p| format!("127.0.0.1:{p}")))
        .unwrap_or_else(|| "127.0.0.1:3001".into());
    let listener = match tokio::net::TcpListener::bind(&addr).await {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("demo backend {name}: cannot listen on {addr}: {e}");
            std::process::exit(1);
        }
    };
    eprintln!("demo backend {name} listening on {addr}");
    loop {
        let (stream, _) = listener.accept().await?;
        let name = name.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                let text = format!(
                    "hello from backend {name}: {} {} (X-Forwarded-For: {})\n",
                    req.method(),
                    req.uri(),
                    req.headers()
                        .get("x-forwarded-for")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("-"),
                );
                async move { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(text)))) }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
