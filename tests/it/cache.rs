//! The response cache: RFC 9111's stored / not stored cases, Vary, stale serving,
//! coalescing counted at the backend, purge, a worker killed mid-write, eviction.

use crate::common::*;
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::Response;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A backend whose answers depend on the path (see the match), counting what it serves.
async fn origin() -> Backend {
    let counter = Arc::new(AtomicUsize::new(0));
    let flaky = Arc::new(AtomicUsize::new(0));
    Backend::start(move |req| {
        let n = counter.fetch_add(1, Ordering::SeqCst);
        let flaky_n = if req.uri().path() == "/flaky" {
            flaky.fetch_add(1, Ordering::SeqCst)
        } else {
            0
        };
        async move {
            let path = req.uri().path().to_string();
            let header = |name: &str| {
                req.headers()
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string()
            };
            let mut response = Response::builder();
            let body = match path.as_str() {
                "/fresh" => {
                    response = response.header("cache-control", "max-age=60");
                    format!("fresh {n}")
                }
                "/default" => format!("default {n}"),
                "/nostore" => {
                    response = response.header("cache-control", "no-store");
                    format!("nostore {n}")
                }
                "/private" => {
                    response = response.header("cache-control", "private, max-age=60");
                    format!("private {n}")
                }
                "/cookie" => {
                    response = response.header("set-cookie", "session=1");
                    format!("cookie {n}")
                }
                "/error" => {
                    response = response.status(500).header("cache-control", "max-age=60");
                    format!("error {n}")
                }
                // Fine once, then failing.
                "/flaky" if flaky_n == 0 => {
                    response = response.header("cache-control", "max-age=1");
                    format!("flaky {n}")
                }
                "/flaky" => {
                    response = response.status(503);
                    "down".to_string()
                }
                "/vary" => {
                    response = response
                        .header("cache-control", "max-age=60")
                        .header("vary", "Accept-Language");
                    format!("{} {n}", header("accept-language"))
                }
                "/etag" => {
                    if header("if-none-match") == "\"v1\"" {
                        return Response::builder()
                            .status(304)
                            .header("etag", "\"v1\"")
                            .header("cache-control", "max-age=1")
                            .body(full(""))
                            .unwrap();
                    }
                    response = response
                        .header("etag", "\"v1\"")
                        .header("cache-control", "max-age=1");
                    format!("etag {n}")
                }
                "/slow" => {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    response = response.header("cache-control", "max-age=60");
                    "s".repeat(100 * 1024)
                }
                "/big" => {
                    response = response.header("cache-control", "max-age=600");
                    format!("{n}").repeat(1).to_string() + &"b".repeat(50 * 1024)
                }
                "/trickle" => {
                    // 20 pieces, 100 ms apart: long enough to kill the worker mid-way.
                    let (tx, rx) = tokio::sync::mpsc::channel::<
                        Result<http_body::Frame<Bytes>, Box<dyn std::error::Error + Send + Sync>>,
                    >(1);
                    tokio::spawn(async move {
                        for _ in 0..20 {
                            if tx
                                .send(Ok(http_body::Frame::data(Bytes::from("t".repeat(1000)))))
                                .await
                                .is_err()
                            {
                                return;
                            }
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    });
                    let body = http_body_util::StreamBody::new(tokio_stream(rx));
                    return Response::builder()
                        .header("cache-control", "max-age=60")
                        .body(BodyExt::boxed(body))
                        .unwrap();
                }
                _ => format!("other {n}"),
            };
            response.body(full(body)).unwrap()
        }
    })
    .await
}

/// A receiver as a stream of frames.
fn tokio_stream<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> + Send {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

fn cached_gateway(
    backend: std::net::SocketAddr,
    workers: usize,
    cache: &str,
    route: &str,
) -> Gateway {
    Gateway::start(&format!(
        "[gateway]\nworkers = {workers}\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n[cache]\ndir = \"cache\"\n{cache}\n\n\
         [[route]]\nupstream = \"app\"\ncache = {{ {route} }}\n\n\
         [upstream.app]\nservers = [ {{ address = \"{backend}\" }} ]\n"
    ))
}

/// GET with headers: (status, Cache-Status, Age, body).
async fn get(
    gw: &Gateway,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, String, Option<String>, String) {
    let mut request = client().get(gw.url(path));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_string())
    };
    let cache_status = header("cache-status").unwrap_or_default();
    let age = header("age");
    (status, cache_status, age, response.text().await.unwrap())
}

fn asked(backend: &Backend, path: &str) -> usize {
    backend.seen().iter().filter(|s| s.uri == path).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_rfc_9111_lets_a_shared_cache_store_is_stored_and_nothing_else() {
    let backend = origin().await;
    let gw = cached_gateway(backend.addr, 1, "", "ttl = \"30s\"");

    let (status, cs, age, body) = get(&gw, "/fresh", &[]).await;
    assert_eq!(
        (status, cs.as_str(), body.as_str()),
        (200, "gateway; fwd=miss; stored", "fresh 0")
    );
    assert_eq!(age.as_deref(), None);
    let (_, cs, age, body) = get(&gw, "/fresh", &[]).await;
    assert!(cs.starts_with("gateway; hit; ttl="), "{cs}");
    assert_eq!(body, "fresh 0");
    assert!(age.is_some(), "a hit has Age");
    // HEAD is answered from the GET's entry.
    let head = client().head(gw.url("/fresh")).send().await.unwrap();
    assert!(head.headers()["cache-status"]
        .to_str()
        .unwrap()
        .contains("hit"));
    assert_eq!(asked(&backend, "/fresh"), 1);

    // No freshness of its own: the route's ttl.
    get(&gw, "/default", &[]).await;
    let (_, cs, _, body) = get(&gw, "/default", &[]).await;
    assert!(cs.starts_with("gateway; hit"), "{cs}");
    assert_eq!(body, "default 0".replace('0', &body[8..]));
    assert_eq!(asked(&backend, "/default"), 1);

    for (path, why) in [
        ("/nostore", "no-store"),
        ("/private", "private"),
        ("/cookie", "set-cookie"),
        ("/error", "status"),
    ] {
        let (_, cs, _, _) = get(&gw, path, &[]).await;
        assert_eq!(cs, format!("gateway; fwd=miss; detail={why}"));
        let (_, cs, _, _) = get(&gw, path, &[]).await;
        assert!(cs.starts_with("gateway; fwd=miss"), "{path}: {cs}");
        assert_eq!(asked(&backend, path), 2, "{path} is not stored");
    }
    // A request with credentials is not answered from, nor stored in, the shared cache
    // unless the response says it may be.
    let (_, cs, _, _) = get(&gw, "/other", &[("authorization", "Basic eDp5")]).await;
    assert_eq!(cs, "gateway; fwd=miss; detail=authorization");
    let (_, cs, _, body) = get(&gw, "/fresh", &[("authorization", "Basic eDp5")]).await;
    assert_eq!(cs, "gateway; fwd=miss; detail=authorization", "{body}");
    // POST goes through.
    let post = client().post(gw.url("/fresh")).send().await.unwrap();
    assert_eq!(post.headers()["cache-status"], "gateway; fwd=method");
    assert_eq!(asked(&backend, "/fresh"), 3);

    let (_, metrics) = gw.admin_get("/metrics").await;
    for (status, n) in [("hit", 3), ("miss", 12), ("bypass", 1), ("stale", 0)] {
        let line =
            format!("gateway_cache_requests_total{{route=\"*/\",status=\"{status}\"}} {n}\n");
        assert!(metrics.contains(&line), "{line}{metrics}");
    }
    assert!(metrics.contains("gateway_cache_bytes "), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vary_keeps_one_entry_per_variant() {
    let backend = origin().await;
    let gw = cached_gateway(backend.addr, 1, "", "ttl = \"30s\"");
    let en = [("accept-language", "en")];
    let fr = [("accept-language", "fr")];
    assert_eq!(get(&gw, "/vary", &en).await.3, "en 0");
    assert_eq!(get(&gw, "/vary", &fr).await.3, "fr 1");
    let (_, cs, _, body) = get(&gw, "/vary", &en).await;
    assert!(cs.contains("hit"), "{cs}");
    assert_eq!(body, "en 0");
    let (_, cs, _, body) = get(&gw, "/vary", &fr).await;
    assert!(cs.contains("hit"), "{cs}");
    assert_eq!(body, "fr 1");
    assert_eq!(asked(&backend, "/vary"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_entry_is_revalidated_and_served_while_the_upstream_is_down() {
    let backend = origin().await;
    let gw = cached_gateway(backend.addr, 1, "", "ttl = \"1s\", stale_if_error = \"1m\"");
    assert_eq!(get(&gw, "/etag", &[]).await.3, "etag 0");
    // The client's own conditional request is answered from the entry.
    let (status, cs, _, body) = get(&gw, "/etag", &[("if-none-match", "W/\"v1\"")]).await;
    assert_eq!((status, body.as_str()), (304, ""), "{cs}");
    assert!(cs.starts_with("gateway; hit"), "{cs}");
    tokio::time::sleep(Duration::from_millis(2100)).await;
    // Stale: asked again with its validator; the 304 makes it fresh.
    let (status, cs, _, body) = get(&gw, "/etag", &[]).await;
    assert_eq!((status, body.as_str()), (200, "etag 0"));
    assert!(cs.starts_with("gateway; fwd=stale; fwd-status=304"), "{cs}");
    let revalidation = backend
        .seen()
        .into_iter()
        .filter(|s| s.uri == "/etag")
        .nth(1)
        .unwrap();
    assert_eq!(revalidation.header("if-none-match"), Some("\"v1\""));
    let (_, cs, _, _) = get(&gw, "/etag", &[]).await;
    assert!(cs.starts_with("gateway; hit"), "{cs}");

    // A 5xx from the upstream: the stale entry instead.
    assert_eq!(get(&gw, "/flaky", &[]).await.3, "flaky 2");
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let (status, cs, _, body) = get(&gw, "/flaky", &[]).await;
    assert_eq!((status, body.as_str()), (200, "flaky 2"));
    assert!(
        cs.contains("fwd-status=503") && cs.contains("stale-if-error"),
        "{cs}"
    );
    assert_eq!(asked(&backend, "/flaky"), 2);

    // The upstream goes away: the stale entry serves within stale_if_error.
    drop(backend);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let (status, cs, _, body) = get(&gw, "/etag", &[]).await;
    assert_eq!((status, body.as_str()), (200, "etag 0"));
    assert!(
        cs.contains("fwd=stale") && cs.contains("detail=stale-if-error"),
        "{cs}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_while_revalidate_answers_at_once_and_refreshes_in_the_background() {
    let backend = origin().await;
    let gw = cached_gateway(
        backend.addr,
        1,
        "",
        "ttl = \"1s\", stale_while_revalidate = \"1m\"",
    );
    assert_eq!(get(&gw, "/default", &[]).await.3, "default 0");
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let (_, cs, _, body) = get(&gw, "/default", &[]).await;
    assert_eq!(body, "default 0", "the stale entry, at once");
    assert!(cs.contains("detail=stale-while-revalidate"), "{cs}");
    wait_until("the background refresh", Duration::from_secs(5), || {
        asked(&backend, "/default") == 2
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (_, cs, _, body) = get(&gw, "/default", &[]).await;
    assert_eq!(body, "default 1", "refreshed");
    assert!(cs.starts_with("gateway; hit"), "{cs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_misses_across_workers_make_one_upstream_request() {
    let backend = origin().await;
    let gw = cached_gateway(backend.addr, 2, "", "ttl = \"30s\"");
    let mut clients = Vec::new();
    for _ in 0..50 {
        let url = gw.url("/slow");
        clients.push(tokio::spawn(async move {
            // A connection each: they spread over both workers.
            let response = client().get(url).send().await.unwrap();
            let cs = response.headers()["cache-status"]
                .to_str()
                .unwrap()
                .to_string();
            (cs, response.bytes().await.unwrap().len())
        }));
    }
    let mut collapsed = 0;
    for c in clients {
        let (cs, len) = c.await.unwrap();
        assert_eq!(len, 100 * 1024, "{cs}");
        // One stored it; the others streamed from its fill, or (when they came late,
        // on a loaded machine) found the entry complete.
        assert!(
            cs.contains("stored") || cs.contains("collapsed") || cs.starts_with("gateway; hit"),
            "{cs}"
        );
        collapsed += usize::from(cs.contains("collapsed"));
    }
    assert_eq!(asked(&backend, "/slow"), 1);
    assert!(collapsed >= 1, "none streamed from the fill");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_removes_an_entry_or_every_one_under_a_prefix() {
    let backend = origin().await;
    let gw = cached_gateway(backend.addr, 2, "", "ttl = \"30s\"");
    for path in ["/fresh", "/default", "/other"] {
        get(&gw, path, &[]).await;
    }
    // Hits, the later ones answered from the worker's memory (a stat says the file is
    // the same).
    for _ in 0..3 {
        assert!(get(&gw, "/fresh", &[]).await.1.contains("hit"));
    }
    let host = gw.addr;
    let (code, out, err) = gw.ctl(&["purge", &format!("http://{host}/fresh")]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out,
        format!("purged 1 cached responses of http://{host}/fresh\n")
    );
    assert!(get(&gw, "/fresh", &[]).await.1.contains("fwd=miss"));
    assert!(get(&gw, "/other", &[]).await.1.contains("hit"));
    let (code, out, _) = gw.ctl(&["purge", "--prefix", &format!("http://{host}/")]);
    assert_eq!(code, 0);
    assert!(out.starts_with("purged 3 "), "{out}");
    for path in ["/fresh", "/default", "/other"] {
        assert!(get(&gw, path, &[]).await.1.contains("fwd=miss"), "{path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_write_leaves_no_entry_behind() {
    let backend = origin().await;
    let gw = cached_gateway(backend.addr, 1, "", "ttl = \"30s\"");
    let pid = status_json(&gw)["workers"][0]["pid"].as_u64().unwrap();
    let url = gw.url("/trickle");
    let first = tokio::spawn(async move {
        let response = client().get(url).send().await?;
        response.bytes().await
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    signal(pid, "KILL");
    assert!(
        first.await.unwrap().is_err(),
        "the first client's response was cut"
    );
    wait_until("a new worker", Duration::from_secs(10), || {
        let workers = status_json(&gw)["workers"].clone();
        workers[0]["pid"].as_u64() != Some(pid) && workers[0]["state"] == "serving"
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // No entry: the next request goes upstream and gets the whole body.
    let (status, cs, _, body) = get(&gw, "/trickle", &[]).await;
    assert_eq!((status, body.len()), (200, 20_000), "{cs}");
    assert_eq!(cs, "gateway; fwd=miss; stored");
    assert_eq!(asked(&backend, "/trickle"), 2);
    let (_, cs, _, body) = get(&gw, "/trickle", &[]).await;
    assert!(cs.contains("hit") && body.len() == 20_000, "{cs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_recently_used_entries_go_at_max_size() {
    let backend = origin().await;
    // Each entry is about 50 KiB: 4 fit in 220 KiB.
    let gw = cached_gateway(
        backend.addr,
        1,
        "max_size = \"220k\"\nmax_object_size = \"100k\"",
        "ttl = \"30s\"",
    );
    for i in 0..8 {
        get(&gw, &format!("/big?{i}"), &[]).await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let cache_dir = gw.dir.path().join("cache");
    let stored = || -> u64 {
        walk(&cache_dir)
            .iter()
            .map(|p| std::fs::metadata(p).map_or(0, |m| m.len()))
            .sum()
    };
    wait_until("eviction", Duration::from_secs(10), || {
        stored() <= 220 * 1024
    })
    .await;
    // The newest are kept, the oldest went.
    assert!(get(&gw, "/big?7", &[]).await.1.contains("hit"));
    assert!(get(&gw, "/big?0", &[]).await.1.contains("fwd=miss"));
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.path().is_dir() {
            out.extend(walk(&e.path()));
        } else {
            out.push(e.path());
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_outlive_a_reload_and_a_restart() {
    let backend = origin().await;
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "[cache]\ndir = \"{}\"\n\n[[route]]\nupstream = \"app\"\ncache = {{ ttl = \"30s\" }}\n\n\
         [upstream.app]\nservers = [ {{ address = \"{}\" }} ]\n",
        dir.path().display(),
        backend.addr
    );
    let gw = Gateway::start(&config);
    assert!(get(&gw, "/fresh", &[]).await.1.contains("stored"));
    let (code, _, err) = gw.ctl(&["reload"]);
    assert_eq!(code, 0, "{err}");
    assert!(get(&gw, "/fresh", &[]).await.1.starts_with("gateway; hit"));
    drop(gw);
    let again = Gateway::start(&config);
    let (_, cs, _, body) = get(&again, "/fresh", &[]).await;
    assert!(cs.starts_with("gateway; hit"), "{cs}");
    assert_eq!(body, "fresh 0");
    assert_eq!(asked(&backend, "/fresh"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_leaving_mid_fill_does_not_cut_the_requests_streaming_from_it() {
    let backend = origin().await;
    let gw = cached_gateway(backend.addr, 1, "", "ttl = \"30s\"");
    let url = gw.url("/trickle");
    // The first client fills the entry and goes away after 300 ms.
    let leaving = tokio::spawn(tokio::time::timeout(
        Duration::from_millis(300),
        async move {
            let response = client().get(url).send().await.unwrap();
            response.bytes().await
        },
    ));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (status, cs, _, body) = get(&gw, "/trickle", &[]).await;
    assert!(
        leaving.await.unwrap().is_err(),
        "the first client left early"
    );
    assert_eq!((status, body.len()), (200, 20_000), "{cs}");
    assert_eq!(cs, "gateway; fwd=miss; collapsed");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (_, cs, _, body) = get(&gw, "/trickle", &[]).await;
    assert!(
        cs.starts_with("gateway; hit") && body.len() == 20_000,
        "{cs}"
    );
    assert_eq!(asked(&backend, "/trickle"), 1);
}
