//! What a route does besides choosing an upstream: redirects answered by the gateway, a
//! rewritten prefix, headers set and removed both ways, and `max_body_size`.

use crate::common::*;
use hyper::Response;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_route_is_answered_by_the_gateway() {
    let gw = Gateway::start(
        "[[route]]\nhost = \"old.example\"\nredirect = \"https://{host}{uri}\"\nredirect_status = 308\n\n[[route]]\nupstream = \"app\"\n[upstream.app]\nservers = [ { address = \"127.0.0.1:9\" } ]\n",
    );
    let reply = raw_exchange(
        gw.addr,
        b"GET /a/../b?x=1 HTTP/1.1\r\nHost: old.example:8080\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    );
    assert_eq!(status_of(&reply), 308, "{reply}");
    assert!(
        reply.contains("\r\nlocation: https://old.example/b?x=1\r\n"),
        "{reply}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefix_rewrite_and_header_edits_apply_to_the_route_that_matched() {
    let backend = Backend::start(|_req| async {
        let mut r = Response::new(full("ok"));
        r.headers_mut()
            .insert("x-powered-by", "express".parse().unwrap());
        r.headers_mut().insert("x-kept", "1".parse().unwrap());
        r
    })
    .await;
    let gw = Gateway::start(&format!(
        "[[route]]\npath_prefix = \"/api/\"\nupstream = \"app\"\nrewrite_prefix = \"/\"\nrequest_headers = {{ \"X-Env\" = \"prod\" }}\nremove_request_headers = [\"X-Debug\"]\nresponse_headers = {{ \"Strict-Transport-Security\" = \"max-age=31536000\" }}\nremove_response_headers = [\"X-Powered-By\"]\n\n{}",
        upstream_config("app", &[backend.addr], "")
    ));
    let res = client()
        .get(gw.url("/api/users?page=2"))
        .header("x-debug", "1")
        .header("x-env", "dev")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(
        res.headers()["strict-transport-security"],
        "max-age=31536000"
    );
    assert!(res.headers().get("x-powered-by").is_none());
    assert_eq!(res.headers()["x-kept"], "1");
    let other = client().get(gw.url("/plain")).send().await.unwrap();
    assert!(other.headers().get("strict-transport-security").is_none());
    assert_eq!(other.headers()["x-powered-by"], "express");
    let seen = backend.seen();
    assert_eq!(seen[0].uri, "/users?page=2");
    assert_eq!(seen[0].header("x-env"), Some("prod"));
    assert_eq!(seen[0].header("x-debug"), None);
    assert_eq!(seen[1].uri, "/plain");
    assert_eq!(seen[1].header("x-env"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_over_max_body_size_get_413_declared_or_chunked() {
    let backend = Backend::start(|req| async move {
        use http_body_util::BodyExt;
        match req.into_body().collect().await {
            Ok(body) => Response::new(full(body.to_bytes().len().to_string())),
            Err(_) => Response::new(full("aborted")),
        }
    })
    .await;
    let gw = Gateway::start(&format!(
        "[gateway]\nmax_body_size = \"1k\"\n[[route]]\npath_prefix = \"/upload/\"\nupstream = \"app\"\nmax_body_size = \"4k\"\n\n{}",
        upstream_config("app", &[backend.addr], "")
    ));
    let post = |path: &str, len: usize| client().post(gw.url(path)).body(vec![b'x'; len]).send();
    assert_eq!(post("/small", 1024).await.unwrap().status(), 200);
    let res = post("/small", 1025).await.unwrap();
    assert_eq!(res.status(), 413);
    assert_eq!(
        post("/upload/a", 4096).await.unwrap().status(),
        200,
        "the route's own limit"
    );
    assert_eq!(post("/upload/a", 5000).await.unwrap().status(), 413);
    let before = backend.requests();
    // Chunked: cut off where it crosses the limit.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..4).map(|_| Ok(vec![b'y'; 500])).collect();
    let res = client()
        .post(gw.url("/chunked"))
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 413);
    assert!(backend.requests() <= before + 1);
    let log = gw.wait_log_lines(5).await.join("\n");
    assert!(log.contains("larger than max_body_size"), "{log}");
}
