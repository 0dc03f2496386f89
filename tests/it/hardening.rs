//! The defects hostile probing found, each as the user or attacker met it.

use crate::common::*;
use std::time::Duration;

/// A route for `/public/` in front of an app that also serves `/admin/`: no spelling of a
/// path reaches the app outside `/public/`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paths_are_normalized_before_routing_so_no_route_is_bypassed() {
    let app = Backend::named("app").await;
    let gw = Gateway::start(&format!(
        "[[route]]\npath_prefix = \"/public/\"\nupstream = \"app\"\n\n[upstream.app]\nservers = [ {{ address = \"{}\" }} ]\n",
        app.addr
    ));
    let get = |target: &str| {
        let request = format!("GET {target} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
        status_of(&raw_exchange(
            gw.addr,
            request.as_bytes(),
            Duration::from_secs(5),
        ))
    };
    // The reported bypasses: outside the route after normalization (404) or refused (400).
    assert_eq!(get("/public/../admin/x"), 404);
    assert_eq!(get("/public/%2e%2e/admin/x"), 404);
    assert_eq!(get("/public/%2E%2E/admin/x"), 404);
    assert_eq!(get("/public/.%2e/admin/x"), 404);
    assert_eq!(get("/public/..%2fadmin/x"), 400);
    assert_eq!(get("/public/..%5Cadmin/x"), 400);
    assert_eq!(get("/public/..;/admin/x"), 400);
    assert_eq!(get("http://a/public/../admin/x"), 404);
    // Inside the route after normalization: forwarded as normalized.
    assert_eq!(get("/public//../admin/x"), 200);
    assert_eq!(get("/public/a/./b/../c?q=/../%2e"), 200);
    assert_eq!(get("/public/%7euser/%41"), 200);
    let seen: Vec<String> = app.seen().into_iter().map(|s| s.uri).collect();
    assert_eq!(
        seen,
        [
            "/public/admin/x",
            "/public/a/c?q=/../%2e",
            "/public/~user/A"
        ]
    );
}
