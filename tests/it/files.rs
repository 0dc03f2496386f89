//! Static files from a route's `root` and response compression, with a real client.

use crate::common::*;
use std::io::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// A directory of files to serve, removed at the end.
struct Site(PathBuf);

impl Site {
    fn new(name: &str) -> Site {
        let dir = std::env::temp_dir().join(format!(
            "gw-site-{name}-{}-{}",
            std::process::id(),
            fastrand::u32(..)
        ));
        std::fs::create_dir_all(dir.join("root/sub")).unwrap();
        Site(dir)
    }

    fn root(&self) -> PathBuf {
        self.0.join("root")
    }

    fn write(&self, name: &str, bytes: &[u8]) {
        std::fs::write(self.root().join(name), bytes).unwrap();
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn raw_client() -> reqwest::Client {
    // No automatic decompression (the features are off): the bytes as sent.
    reqwest::Client::builder().no_proxy().build().unwrap()
}

fn brotli(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut w = brotli::CompressorWriter::new(&mut out, 4096, 5, 20);
        w.write_all(data).unwrap();
    }
    out
}

fn decode(coding: &str, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    match coding {
        "gzip" => {
            std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(data), &mut out).unwrap();
        }
        "br" => brotli::BrotliDecompress(&mut &data[..], &mut out).unwrap(),
        "zstd" => out = zstd::decode_all(data).unwrap(),
        other => panic!("{other}"),
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_are_served_from_root_and_nothing_outside_it() {
    let site = Site::new("files");
    let js = "console.log('hello');\n".repeat(100);
    site.write("app.js", js.as_bytes());
    site.write("app.js.br", &brotli(js.as_bytes()));
    site.write("sub/index.html", b"<h1>sub</h1>");
    site.write(".secret", b"no");
    site.write("index.html", b"<h1>spa</h1>");
    std::fs::write(site.0.join("outside.txt"), "outside").unwrap();
    std::os::unix::fs::symlink(site.0.join("outside.txt"), site.root().join("link.txt")).unwrap();
    let app = Backend::named("app").await;
    let root = site.root().display().to_string();
    let gw = Gateway::start(&format!(
        "[[route]]\npath_prefix = \"/assets/\"\nroot = \"{root}\"\ncache_control = \"public, max-age=60\"\n\
         [[route]]\npath_prefix = \"/spa/\"\nroot = \"{root}\"\nfallback = \"index\"\n\
         [[route]]\npath_prefix = \"/mixed/\"\nroot = \"{root}\"\nfallback = \"upstream\"\nupstream = \"app\"\n\
         {}",
        upstream_config("app", &[app.addr], "")
    ));
    let c = raw_client();
    let get = |path: &str| c.get(gw.url(path));
    let with = |path: &str, name: &str, value: &str| get(path).header(name, value).send();

    let r = get("/assets/app.js").send().await.unwrap();
    assert_eq!(r.status(), 200);
    let h = r.headers().clone();
    assert!(
        h["content-type"].to_str().unwrap().contains("javascript"),
        "{h:?}"
    );
    assert_eq!(h["content-length"], js.len().to_string().as_str());
    assert_eq!(h["accept-ranges"], "bytes");
    assert_eq!(h["cache-control"], "public, max-age=60");
    let etag = h["etag"].to_str().unwrap().to_string();
    let modified = h["last-modified"].to_str().unwrap().to_string();
    assert_eq!(r.text().await.unwrap(), js);

    // Conditional requests.
    let r = with("/assets/app.js", "if-none-match", &etag)
        .await
        .unwrap();
    assert_eq!(r.status(), 304);
    assert_eq!(r.headers()["etag"], etag.as_str());
    let r = with("/assets/app.js", "if-modified-since", &modified)
        .await
        .unwrap();
    assert_eq!(r.status(), 304);
    let r = with("/assets/app.js", "if-none-match", "\"other\"")
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // One range; one past the end.
    let r = with("/assets/app.js", "range", "bytes=0-6").await.unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(
        r.headers()["content-range"],
        format!("bytes 0-6/{}", js.len()).as_str()
    );
    assert_eq!(r.text().await.unwrap(), "console");
    let r = with("/assets/app.js", "range", "bytes=-3").await.unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(r.text().await.unwrap(), js[js.len() - 3..]);
    let r = with("/assets/app.js", "range", "bytes=999999-")
        .await
        .unwrap();
    assert_eq!(r.status(), 416);
    assert_eq!(
        r.headers()["content-range"],
        format!("bytes */{}", js.len()).as_str()
    );

    // The precompressed sibling, for a client that accepts it.
    let r = with("/assets/app.js", "accept-encoding", "gzip, br")
        .await
        .unwrap();
    assert_eq!(r.headers()["content-encoding"], "br");
    assert_eq!(r.headers()["vary"], "Accept-Encoding");
    assert_eq!(decode("br", &r.bytes().await.unwrap()), js.as_bytes());

    // HEAD: the head alone; other methods 405 with Allow.
    let r = c.head(gw.url("/assets/app.js")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-length"], js.len().to_string().as_str());
    assert!(r.bytes().await.unwrap().is_empty());
    let r = c.post(gw.url("/assets/app.js")).send().await.unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(r.headers()["allow"], "GET, HEAD");

    // Directories: 301 to the trailing slash, then the index; no listing.
    let r = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(gw.url("/assets/sub?x=1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 301);
    assert_eq!(r.headers()["location"], "/assets/sub/?x=1");
    assert_eq!(get_text(gw.url("/assets/sub/")).await, "<h1>sub</h1>");

    // Nothing outside the root, nor a dotfile, in any spelling.
    for path in [
        "/assets/.secret",
        "/assets/link.txt",
        "/assets/nope.js",
        "/assets/%2esecret",
        "/assets/sub/%2e%2e/.secret",
    ] {
        let r = get(path).send().await.unwrap();
        assert_eq!(r.status(), 404, "{path}");
        assert!(!r.text().await.unwrap().contains("outside"), "{path}");
    }
    for path in [
        "/assets/..%2foutside.txt",
        "/assets/%2e%2e/%2e%2e/outside.txt",
    ] {
        // Refused, or normalized to a path outside /assets/ (the upstream's route).
        let r = get(path).send().await.unwrap();
        let text = r.text().await.unwrap();
        assert!(!text.contains("outside"), "{path}: {text}");
    }

    // Fallbacks: the index of a single-page app; the upstream.
    assert_eq!(
        get_text(gw.url("/spa/some/deep/route")).await,
        "<h1>spa</h1>"
    );
    assert_eq!(get_text(gw.url("/mixed/app.js")).await, js);
    assert_eq!(get_text(gw.url("/mixed/api/users")).await, "app");
    let r = c.post(gw.url("/mixed/app.js")).send().await.unwrap();
    assert_eq!(
        r.text().await.unwrap(),
        "app",
        "other methods go to the upstream"
    );

    // A larger file (sent with sendfile on a plain connection), whole and in part.
    let big: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    site.write("big.bin", &big);
    let r = get("/assets/big.bin").send().await.unwrap();
    assert_eq!(r.headers()["content-length"], "300000");
    assert_eq!(r.bytes().await.unwrap(), big);
    let r = with("/assets/big.bin", "range", "bytes=100000-199999")
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(r.bytes().await.unwrap(), big[100_000..200_000]);

    // The access log records what was sent.
    let lines = gw.wait_log_lines(1).await;
    assert!(!lines.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_are_compressed_as_the_client_accepts_and_never_twice() {
    let json = format!(
        "[{}]",
        vec!["{\"name\":\"gateway\",\"n\":12345}"; 400].join(",")
    );
    let body = json.clone();
    let backend = Backend::start(move |req| {
        let body = body.clone();
        async move {
            let mut r = hyper::Response::new(full(body.clone()));
            r.headers_mut()
                .insert("content-type", "application/json".parse().unwrap());
            r.headers_mut().insert("etag", "\"v1\"".parse().unwrap());
            match req.uri().path() {
                "/encoded" => {
                    r.headers_mut()
                        .insert("content-encoding", "gzip".parse().unwrap());
                }
                "/no-transform" => {
                    r.headers_mut()
                        .insert("cache-control", "no-transform".parse().unwrap());
                }
                "/small" => *r.body_mut() = full("{}"),
                "/image" => {
                    r.headers_mut()
                        .insert("content-type", "image/png".parse().unwrap());
                }
                _ => {}
            }
            r
        }
    })
    .await;
    let gw = Gateway::start(&format!(
        "[compression]\nalgorithms = [\"zstd\", \"br\", \"gzip\"]\nmin_length = \"1k\"\n\
         [[route]]\npath_prefix = \"/plain/\"\nupstream = \"app\"\ncompression = false\n{}",
        upstream_config("app", &[backend.addr], "")
    ));
    let c = raw_client();
    let fetch = |path: &str, accept: &str| {
        let mut request = c.get(gw.url(path));
        if !accept.is_empty() {
            request = request.header("accept-encoding", accept);
        }
        request.send()
    };
    for (accept, coding) in [
        ("gzip", "gzip"),
        ("br", "br"),
        ("zstd", "zstd"),
        ("gzip, br, zstd", "zstd"),
        ("gzip;q=1, br;q=0.5", "gzip"),
        ("*;q=0.1, zstd;q=0", "br"),
    ] {
        let r = fetch("/data", accept).await.unwrap();
        let h = r.headers().clone();
        assert_eq!(h["content-encoding"], coding, "{accept}");
        assert_eq!(h["vary"], "Accept-Encoding");
        assert_eq!(h["etag"], "W/\"v1\"", "a strong ETag is weakened");
        assert!(!h.contains_key("content-length"));
        let bytes = r.bytes().await.unwrap();
        assert!(bytes.len() < json.len() / 5, "{coding}: {}", bytes.len());
        assert_eq!(decode(coding, &bytes), json.as_bytes(), "{accept}");
    }
    // Sent as they are: no Accept-Encoding, q=0 for all, HEAD, small, already encoded,
    // no-transform, a type not listed, a route with compression = false.
    for (path, accept) in [
        ("/data", ""),
        ("/data", "gzip;q=0, br;q=0, zstd;q=0"),
        ("/small", "gzip"),
        ("/no-transform", "gzip"),
        ("/image", "gzip"),
        ("/plain/data", "gzip"),
    ] {
        let r = fetch(path, accept).await.unwrap();
        assert!(
            !r.headers().contains_key("content-encoding"),
            "{path} {accept}"
        );
        assert!(r.bytes().await.unwrap().len() <= json.len());
    }
    let r = fetch("/encoded", "gzip, br").await.unwrap();
    assert_eq!(
        r.headers()["content-encoding"],
        "gzip",
        "the upstream's own, once"
    );
    assert_eq!(
        r.bytes().await.unwrap(),
        json.as_bytes(),
        "not compressed again"
    );
    let r = c
        .head(gw.url("/data"))
        .header("accept-encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert!(!r.headers().contains_key("content-encoding"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_sent_events_arrive_event_by_event_through_compression() {
    use http_body_util::StreamBody;
    let backend = Backend::start(|_req| async {
        type Item =
            Result<hyper::body::Frame<bytes::Bytes>, Box<dyn std::error::Error + Send + Sync>>;
        let (tx, rx) = tokio::sync::mpsc::channel::<Item>(4);
        tokio::spawn(async move {
            for n in 0..3 {
                let event = format!("data: event {n} {}\n\n", "x".repeat(600));
                let _ = tx.send(Ok(hyper::body::Frame::data(event.into()))).await;
                tokio::time::sleep(Duration::from_millis(400)).await;
            }
        });
        let stream = tokio_stream_from(rx);
        let mut r = hyper::Response::new(http_body_util::BodyExt::boxed(StreamBody::new(stream)));
        r.headers_mut()
            .insert("content-type", "text/event-stream".parse().unwrap());
        r
    })
    .await;
    let gw = Gateway::start(&format!(
        "[compression]\nmin_length = \"0\"\n{}",
        upstream_config("app", &[backend.addr], "")
    ));
    let started = Instant::now();
    let mut r = raw_client()
        .get(gw.url("/events"))
        .header("accept-encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["content-encoding"], "gzip");
    let mut decoder = flate2::write::GzDecoder::new(Vec::new());
    let mut arrivals = Vec::new();
    while let Some(chunk) = r.chunk().await.unwrap() {
        decoder.write_all(&chunk).unwrap();
        decoder.flush().unwrap();
        let text = String::from_utf8_lossy(decoder.get_ref()).to_string();
        let events = text.matches("data: event").count();
        if events > arrivals.len() {
            arrivals.push((events, started.elapsed()));
        }
    }
    // Each event is readable when it is sent, not when the stream ends (at ~1.2 s).
    assert_eq!(arrivals.last().map(|a| a.0), Some(3), "{arrivals:?}");
    assert!(arrivals[0].1 < Duration::from_millis(350), "{arrivals:?}");
    let second = arrivals.iter().find(|a| a.0 >= 2).unwrap().1;
    assert!(second < Duration::from_millis(750), "{arrivals:?}");
}

/// A receiver of frames as a stream.
fn tokio_stream_from<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}
