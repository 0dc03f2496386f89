//! `gateway import-nginx`: the nginx configurations of tests/nginx (after the official
//! deployment docs of PM2, Socket.IO, Ghost, Nuxt, Strapi and the single-page-app guides)
//! translated, with what is left out said; and one config run side by side, nginx with
//! the original and the gateway with the translation, answering the same.

use crate::common::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

fn import(file: &Path, out: &Path) -> (i32, String, String) {
    let run = Command::new(gateway_bin())
        .arg("import-nginx")
        .arg(file)
        .arg("-o")
        .arg(out)
        .output()
        .unwrap();
    (
        run.status.code().unwrap_or(-1),
        std::fs::read_to_string(out).unwrap_or_default(),
        String::from_utf8_lossy(&run.stderr).into_owned(),
    )
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/nginx")
        .join(name)
}

#[test]
fn the_collected_configs_translate_and_say_what_is_left_out() {
    let dir = tempfile::tempdir().unwrap();
    let mut passed = Vec::new();
    for name in ["pm2", "socketio", "ghost", "nuxt", "strapi", "spa"] {
        let out = dir.path().join(format!("{name}.toml"));
        let (code, toml, summary) = import(&fixture(&format!("{name}.conf")), &out);
        assert!(
            summary.contains("directives translated"),
            "{name}: {summary}"
        );
        if code == 0 {
            assert!(
                summary.contains("the result passes gateway check"),
                "{summary}"
            );
            passed.push(name);
        } else {
            // What fails is what this machine lacks: the certificate and root named.
            assert!(summary.contains("cannot read /"), "{name}: {summary}");
        }
        match name {
            "pm2" => {
                assert!(toml.contains("rewrite_prefix = \"/\""), "{toml}");
                assert!(toml.contains("read_timeout = \"240s\""), "{toml}");
                assert!(toml.contains("keepalive = 64"), "{toml}");
                assert!(
                    !toml.contains("Upgrade"),
                    "the WebSocket idiom is dropped: {toml}"
                );
            }
            "socketio" => {
                assert!(toml.contains("policy = \"ip_hash\""), "{toml}");
                assert_eq!(toml.matches("address = ").count(), 3, "{toml}");
            }
            "strapi" => {
                assert!(
                    toml.contains("tls = [{ acme = [\"api.example.com\"] }]"),
                    "{toml}"
                );
                assert!(
                    toml.contains("redirect = \"https://{host}{uri}\"\nredirect_status = 301"),
                    "{toml}"
                );
                assert!(summary.contains("strapi.conf:25: proxy_set_header X-Forwarded-Server $host: a value with variables"), "{summary}");
                assert!(
                    toml.contains("# nginx "),
                    "a comment where it was left out: {toml}"
                );
            }
            "nuxt" => {
                assert!(toml.contains("[compression]"), "{toml}");
                assert!(summary.contains("nuxt.conf:2: map"), "{summary}");
                assert!(
                    summary.contains("expires $expires on proxied responses"),
                    "{summary}"
                );
            }
            "spa" => {
                assert!(toml.contains("fallback = \"index\""), "{toml}");
                assert!(
                    toml.contains("cache_control = \"public, max-age=31557600\""),
                    "{toml}"
                );
            }
            _ => {}
        }
    }
    assert_eq!(passed, ["socketio", "nuxt", "strapi"]);
}

/// nginx with the original and the gateway with the translation, side by side: the
/// same requests get the same statuses, redirects and bodies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_imported_config_answers_as_nginx_does_with_the_original() {
    let nginx = ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .into_iter()
        .find(|p| Path::new(p).exists());
    let Some(nginx) = nginx else {
        eprintln!("skipped: nginx is not installed");
        return;
    };
    let app = Backend::start(|req| async move {
        let custom = req
            .headers()
            .get("x-custom")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_string();
        hyper::Response::new(full(format!(
            "{} {} custom={custom}\n",
            req.method(),
            req.uri()
        )))
    })
    .await;
    let work = tempfile::tempdir().unwrap();
    let w = work.path().display().to_string();
    std::fs::create_dir_all(work.path().join("files")).unwrap();
    std::fs::create_dir_all(work.path().join("tmp")).unwrap();
    std::fs::write(work.path().join("files/hello.txt"), "hello file\n").unwrap();
    let (redirecting, serving) = (closed_port(), closed_port());
    let sites = format!(
        "upstream app {{ server {app}; keepalive 8; }}\n\
         server {{ listen {redirecting}; return 301 https://$host$request_uri; }}\n\
         server {{\n  listen {serving};\n\
           location / {{ proxy_pass http://app; proxy_set_header X-Custom yes; proxy_set_header Host $host; }}\n\
           location /api/ {{ proxy_pass http://app/v1/; }}\n\
           location /files/ {{ alias {w}/files/; }}\n\
           location = /exact {{ return 302 https://example.com/elsewhere; }}\n\
         }}\n",
        app = app.addr
    );
    std::fs::write(work.path().join("sites.conf"), &sites).unwrap();
    let conf = work.path().join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "worker_processes 1;\ndaemon off;\nmaster_process off;\npid {w}/nginx.pid;\nerror_log {w}/error.log;\n\
             events {{ worker_connections 64; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {w}/tmp;\n  proxy_temp_path {w}/tmp;\n\
               fastcgi_temp_path {w}/tmp;\n  uwsgi_temp_path {w}/tmp;\n  scgi_temp_path {w}/tmp;\n\
               include sites.conf;\n}}\n"
        ),
    )
    .unwrap();
    let server = KillOnDrop(vec![Command::new(nginx)
        .args(["-c", &conf.display().to_string(), "-p", &w])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap()]);
    // The translation, on ports of its own.
    let out = work.path().join("gateway.toml");
    let (code, toml, summary) = import(&conf, &out);
    assert_eq!(code, 0, "{summary}\n{toml}");
    let (g_redirecting, g_serving) = (closed_port(), closed_port());
    let toml = toml
        .replace(&redirecting.to_string(), &g_redirecting.to_string())
        .replace(&serving.to_string(), &g_serving.to_string());
    let rest = toml
        .split("[[listener]]")
        .enumerate()
        .map(|(i, part)| {
            if i == 0 {
                part.to_string()
            } else {
                format!("[[listener]]{part}")
            }
        })
        .collect::<String>();
    let gw = Gateway::start(&rest);
    for addr in [serving, redirecting] {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while std::net::TcpStream::connect(addr).is_err() {
            assert!(std::time::Instant::now() < deadline, "nginx did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let ask = |addr: std::net::SocketAddr, path: &str| {
        let reply = raw_exchange(
            addr,
            format!("GET {path} HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n")
                .as_bytes(),
            Duration::from_secs(2),
        );
        let status = status_of(&reply);
        let location = reply
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("location: ")
                    .map(str::to_string)
            })
            .unwrap_or_default();
        let body = if status == 200 {
            reply
                .split("\r\n\r\n")
                .nth(1)
                .unwrap_or_default()
                .to_string()
        } else {
            String::new()
        };
        (status, location, body)
    };
    for (path, on_redirecting) in [
        ("/", false),
        ("/deep/path?x=1", false),
        ("/api/users?page=2", false),
        ("/files/hello.txt", false),
        ("/exact", false),
        ("/anything?q=1", true),
    ] {
        let (n, g) = if on_redirecting {
            (redirecting, g_redirecting)
        } else {
            (serving, g_serving)
        };
        let from_nginx = ask(n, path);
        let from_gateway = ask(g, path);
        assert_eq!(from_gateway, from_nginx, "{path}\n{toml}");
    }
    drop(gw);
    drop(server);
}
