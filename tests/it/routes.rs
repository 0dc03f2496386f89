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

/// Listeners with names, routes that belong to some of them: a plain listener that
/// redirects everything to HTTPS next to the app on a TLS one (the common pair that
/// needed two gateways), and one host and prefix routed differently per listener.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_belong_to_their_listeners_and_redirect_https_sends_plain_requests_over() {
    let (app, admin) = (Backend::named("app").await, Backend::named("admin").await);
    let dir = tempfile::tempdir().unwrap();
    let generated = rcgen::generate_simple_self_signed(vec!["example.com".into()]).unwrap();
    let (cert, key) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
    std::fs::write(&cert, generated.cert.pem()).unwrap();
    std::fs::write(&key, generated.signing_key.serialize_pem()).unwrap();
    let gw = Gateway::start(&format!(
        "[[listener]]\nname = \"http\"\nlisten = \"127.0.0.1:0\"\nredirect_https = true\n\
         [[listener]]\nname = \"https\"\nlisten = \"127.0.0.1:0\"\ntls = [{{ cert = \"{}\", key = \"{}\" }}]\n\
         [[listener]]\nname = \"internal\"\nlisten = \"127.0.0.1:0\"\n\
         [[route]]\nlistener = [\"https\"]\nupstream = \"app\"\n\
         [[route]]\nlistener = [\"internal\"]\nupstream = \"admin\"\n\
         [upstream.app]\nservers = [{{ address = \"{}\" }}]\n\
         [upstream.admin]\nservers = [{{ address = \"{}\" }}]\n",
        cert.display(),
        key.display(),
        app.addr,
        admin.addr
    ));
    let (plain, http, https, internal) = (gw.addrs[0], gw.addrs[1], gw.addrs[2], gw.addrs[3]);
    // Every request on "http": 308 to the same host and URI over HTTPS.
    let reply = raw_exchange(
        http,
        b"GET /shop/cart?item=3 HTTP/1.1\r\nHost: example.com:80\r\n\r\n",
        Duration::from_secs(2),
    );
    assert_eq!(status_of(&reply), 308, "{reply}");
    assert!(
        reply.contains("location: https://example.com/shop/cart?item=3\r\n"),
        "{reply}"
    );
    let tls = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .resolve("example.com", https)
        .build()
        .unwrap();
    let url = format!("https://example.com:{}/", https.port());
    assert_eq!(
        tls.get(&url).send().await.unwrap().text().await.unwrap(),
        "app"
    );
    // The same host and prefix go elsewhere on "internal"; the unnamed listener has no
    // route at all.
    assert_eq!(get_text(format!("http://{internal}/")).await, "admin");
    assert_eq!(get_fresh(format!("http://{plain}/")).await.0, 404);
}

#[test]
fn listener_names_and_route_listeners_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.toml");
    std::fs::write(
        &path,
        "[[listener]]\nname = \"a\"\nlisten = \"127.0.0.1:0\"\n\
         [[listener]]\nname = \"a\"\nlisten = \"127.0.0.1:0\"\n\
         [[listener]]\nname = \"b\"\nlisten = \"127.0.0.1:0\"\n\
         [[route]]\nlistener = [\"a\"]\nupstream = \"u\"\n\
         [[route]]\nlistener = [\"a\", \"b\"]\nupstream = \"u\"\n\
         [[route]]\nlistener = [\"nope\"]\nupstream = \"u\"\n\
         [[route]]\nlistener = []\npath_prefix = \"/empty\"\nupstream = \"u\"\n\
         [upstream.u]\nservers = [{ address = \"127.0.0.1:1\" }]\n",
    )
    .unwrap();
    let (code, err) = gateway_with_config(&["check"], &path);
    assert_eq!(code, Some(1), "{err}");
    for expected in [
        ":5:8: listener[1].name: another listener is called \"a\"",
        "route[1]: another route already has host \"*\", path_prefix \"/\"",
        "route[2].listener: no listener is called \"nope\"",
        "route[3].listener: name at least one listener",
    ] {
        assert!(err.contains(expected), "{expected} in\n{err}");
    }
}
