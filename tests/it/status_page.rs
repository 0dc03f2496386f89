//! The live status page at the admin listener's `/`, rendered by a real headless browser
//! (Debian's chromium; `.ci/run` installs it).

use crate::common::*;
use std::process::Command;
use std::time::Duration;

/// Chromium's rendered DOM of `url` after its scripts ran for a few seconds.
fn rendered_dom(url: &str) -> String {
    let chromium = ["chromium", "chromium-browser"]
        .into_iter()
        .find(|c| Command::new(c).arg("--version").output().is_ok())
        .expect("chromium is needed for this test: apt-get install chromium (.ci/run does)");
    let profile = tempfile::tempdir().unwrap();
    let out = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--virtual-time-budget=5000",
            "--dump-dom",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(url)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_shows_workers_and_servers_with_their_states_in_a_browser() {
    let (a, b) = (Backend::named("a").await, Backend::named("b").await);
    let dead = closed_port();
    // A certificate from files, and an ACME entry whose CA cannot be reached: waiting.
    let certs = tempfile::tempdir().unwrap();
    let generated = rcgen::generate_simple_self_signed(vec!["page.example".into()]).unwrap();
    let (cert, key) = (certs.path().join("page.crt"), certs.path().join("page.key"));
    std::fs::write(&cert, generated.cert.pem()).unwrap();
    std::fs::write(&key, generated.signing_key.serialize_pem()).unwrap();
    let gw = Gateway::start(&format!(
        "[gateway]\nworkers = 2\n[admin]\nlisten = \"127.0.0.1:0\"\n[[listener]]\nlisten = \"127.0.0.1:0\"\n\
         tls = [{{ cert = \"{}\", key = \"{}\" }}, {{ acme = [\"waiting.example\"] }}]\n\
         [acme]\ndirectory = \"https://127.0.0.1:1/dir\"\nstorage = \"{}\"\n\
         {}[upstream.app.health_check]\ninterval = \"100ms\"\nfall = 1\n\
         [upstream.demo]\nservers = [{{ app = \"demo\" }}]\n\
         [app.demo]\ncommand = [\"{}\", \"d\"]\ninstances = 2\nport = {}\n",
        cert.display(),
        key.display(),
        certs.path().join("acme").display(),
        upstream_config("app", &[a.addr, b.addr, dead], ""),
        gateway_bin()
            .parent()
            .unwrap()
            .join("examples/demo_backend")
            .display(),
        free_port_range(4),
    ));
    // Traffic over a few seconds, so the history has points to draw.
    let load = Load::start(gw.url("/"), 1, 100_000);
    wait_until("three seconds of history", Duration::from_secs(15), || {
        let history = std::process::Command::new("curl")
            .args([
                "-s",
                &format!("http://{}/status/history", gw.admin.unwrap()),
            ])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        let doc: serde_json::Value = serde_json::from_str(&history).unwrap_or_default();
        let points = doc["upstreams"]["app"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        points.len() >= 3 && points.iter().any(|p| p["rps"].as_f64() > Some(0.0))
    })
    .await;
    load.stop().await;
    for _ in 0..6 {
        get_fresh(gw.url("/")).await;
    }
    assert_eq!(gw.ctl(&["drain", "app", &b.addr.to_string()]).0, 0);
    wait_until("the dead server down", Duration::from_secs(5), || {
        status_json(&gw)["upstreams"]["app"]["servers"][2]["state"] == "down"
    })
    .await;
    let admin = gw.admin.unwrap();
    let (code, page) = gw.admin_get("/").await;
    assert_eq!(code, 200);
    // Nothing from another site (the SVG namespace is a name, not a resource).
    let page = page.replace("\"http://www.w3.org/2000/svg\"", "");
    assert!(
        !page.contains("http://") && !page.contains("https://"),
        "self-contained"
    );

    let url = format!("http://{admin}/");
    let dom = tokio::task::spawn_blocking(move || rendered_dom(&url))
        .await
        .unwrap();
    for (server, state) in [(a.addr, "up"), (b.addr, "draining"), (dead, "down")] {
        let row = format!("data-server=\"{server}\" data-state=\"{state}\"");
        assert!(dom.contains(&row), "no {row} in the rendered page:\n{dom}");
    }
    assert!(dom.contains("upstream app (round_robin)"), "{dom}");
    assert_eq!(
        dom.matches("class=\"state state-serving\"").count(),
        2,
        "two serving workers:\n{dom}"
    );
    assert!(dom.contains("generation 1"), "{dom}");
    // The charts: request rate, errors and p99 of each upstream, drawn with points.
    for series in ["rate", "errors", "p99"] {
        assert!(
            dom.contains(&format!("data-series=\"{series}\"")),
            "no {series} chart:\n{dom}"
        );
    }
    let drawn = dom
        .split("<polyline points=\"")
        .skip(1)
        .map(|rest| {
            rest.split('"')
                .next()
                .unwrap_or_default()
                .split(' ')
                .count()
        })
        .max()
        .unwrap_or(0);
    assert!(drawn >= 3, "a chart line has {drawn} points:\n{dom}");
    assert!(dom.contains("<h2>App demo</h2>"), "{dom}");
    assert_eq!(
        dom.matches("<span class=\"state state-up\">ready</span>")
            .count(),
        2,
        "two ready instances:\n{dom}"
    );
    assert!(dom.contains("<td>page.example</td><td>file</td>"), "{dom}");
    let (code, table, _) = gw.ctl(&["certs"]);
    assert_eq!(code, 0);
    assert!(
        table.contains("page.example") && table.contains("waiting"),
        "{table}"
    );
    assert!(
        dom.contains("<td>waiting.example</td><td>acme</td><td>–</td><td><span class=\"state state-down\">waiting</span>"),
        "{dom}"
    );
}
