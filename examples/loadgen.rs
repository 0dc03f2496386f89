//! The client of `make bench-balance`: an open-loop load at a fixed rate (requests start
//! on schedule whether or not earlier ones finished, and latency counts from the scheduled
//! start, so a stall is not hidden by the client slowing down), then a one-line summary.
//! Only for loopback benchmarks.
//!
//! Usage: `loadgen URL RATE_PER_S SECONDS`; prints
//! `p50_ms p99_ms p999_ms errors total name=count ...`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

#[tokio::main(flavor = "multi_thread", worker_threads = 1)]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [url, rate, seconds] = &args[..] else {
        eprintln!("usage: loadgen URL RATE_PER_S SECONDS");
        std::process::exit(2);
    };
    let parsed = reqwest::Url::parse(url).expect("URL");
    let loopback = matches!(parsed.host_str(), Some("127.0.0.1" | "localhost" | "[::1]"));
    assert!(loopback, "loadgen only talks to loopback");
    let rate: u64 = rate.parse().expect("RATE_PER_S");
    let seconds: u64 = seconds.parse().expect("SECONDS");
    let client = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(4096)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let total = rate * seconds;
    assert!(total > 0, "nothing to send");
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let start = Instant::now();
    let mut calls = Vec::with_capacity(total as usize);
    for n in 0..total {
        let due = start + interval * n as u32;
        tokio::time::sleep_until(due.into()).await;
        let (client, url) = (client.clone(), url.clone());
        calls.push(tokio::spawn(async move {
            let answer = match client.get(url).send().await {
                Ok(res) if res.status() == 200 => res.text().await.ok(),
                _ => None,
            };
            (due.elapsed(), answer)
        }));
    }
    let mut latencies = Vec::with_capacity(calls.len());
    let mut by_server: BTreeMap<String, u64> = BTreeMap::new();
    let mut errors = 0;
    for call in calls {
        let (took, answer) = call.await.unwrap();
        latencies.push(took);
        match answer {
            Some(name) => *by_server.entry(name).or_default() += 1,
            None => errors += 1,
        }
    }
    latencies.sort();
    let at = |q: f64| {
        let i = ((latencies.len() as f64 * q) as usize).min(latencies.len() - 1);
        latencies[i].as_secs_f64() * 1000.0
    };
    let shares: Vec<String> = by_server.iter().map(|(n, c)| format!("{n}={c}")).collect();
    println!(
        "{:.2} {:.2} {:.2} {errors} {total} {}",
        at(0.5),
        at(0.99),
        at(0.999),
        shares.join(" ")
    );
}
