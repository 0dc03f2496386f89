//! nginx directives to the gateway's config: `upstream` blocks, `server` blocks (their
//! `listen`s become named listeners and their locations routes on them), `proxy_pass`,
//! the headers the gateway sets itself, the WebSocket idiom, redirects, files, gzip,
//! limits, access lists, the real client address, error pages and timeouts. What has no
//! equivalent is kept as a comment where it would go, and listed.

use super::parse::Directive;
use std::collections::BTreeMap;
use std::fmt::Write;

/// What the translation made, and what it says about each directive.
#[derive(Default)]
pub struct Translation {
    pub toml: String,
    /// Directives translated (or dropped because the gateway does the same by itself).
    pub translated: usize,
    /// `FILE:LINE: directive: why`, for each one that has no equivalent.
    pub untranslated: Vec<String>,
}

/// Directives the gateway needs no word for: it does what they ask by itself.
const BUILT_IN: &[(&str, &str)] = &[
    ("sendfile", "the gateway uses sendfile(2) by itself"),
    ("tcp_nopush", "not needed"),
    ("tcp_nodelay", "the gateway sets TCP_NODELAY"),
    (
        "keepalive_timeout",
        "header_read_timeout bounds idle keep-alive",
    ),
    ("types_hash_max_size", "not needed"),
    ("server_tokens", "the gateway sends no version"),
    ("default_type", "content types come from file extensions"),
    (
        "proxy_http_version",
        "the gateway speaks HTTP/1.1 to upstreams, with keep-alive",
    ),
    ("proxy_buffering", "the gateway streams responses"),
    (
        "proxy_redirect",
        "the gateway leaves Location as the upstream wrote it",
    ),
    ("proxy_cache_bypass", "not needed"),
    ("worker_connections", "not needed"),
    ("events", "not needed"),
    ("user", "the gateway runs as the user that starts it"),
    ("pid", "not needed"),
    ("ssl_protocols", "rustls: TLS 1.2 and 1.3"),
    ("ssl_ciphers", "rustls' safe defaults"),
    ("ssl_prefer_server_ciphers", "rustls' safe defaults"),
    (
        "ssl_session_cache",
        "the gateway's session tickets and cache",
    ),
    (
        "ssl_session_timeout",
        "the gateway's session tickets and cache",
    ),
    (
        "ssl_session_tickets",
        "the gateway's session tickets (shared by the workers)",
    ),
    ("http2", "HTTP/2 is offered on TLS listeners by ALPN"),
    ("gzip_vary", "Vary: Accept-Encoding is always set"),
    ("gzip_proxied", "upstream responses are compressed"),
    ("real_ip_header", "X-Forwarded-For from trusted_proxies"),
    (
        "real_ip_recursive",
        "the right-most untrusted address is the client",
    ),
    (
        "internal",
        "a named location's directives are used where it is named",
    ),
];

#[derive(Default)]
struct Listener {
    addr: String,
    name: String,
    tls: Vec<String>,
    /// How many server blocks listen here.
    shared: usize,
}

#[derive(Default)]
struct Upstream {
    lines: Vec<String>,
    servers: Vec<String>,
}

/// Directives a location inherits from its server (nginx's inheritance, for the ones
/// translated here).
#[derive(Default, Clone)]
struct Inherited {
    root: Option<String>,
    index: Option<String>,
    max_body_size: Option<String>,
    add_header: Vec<(String, String)>,
    allow: Vec<String>,
    deny: Vec<String>,
    proxy_set_header: Vec<(String, String, String)>,
    limit_req: Option<String>,
    error_page: Vec<(String, String)>,
}

#[derive(Default)]
struct Out {
    gateway: Vec<String>,
    compression: Option<Vec<String>>,
    acme: bool,
    listeners: Vec<Listener>,
    routes: Vec<String>,
    upstreams: BTreeMap<String, Upstream>,
    /// limit_req_zone name -> rate.
    zones: BTreeMap<String, String>,
    done: usize,
    not: Vec<String>,
}

impl Out {
    /// `d` has no equivalent: listed, and its comment returned for the config.
    fn skip(&mut self, d: &Directive, why: &str) -> String {
        self.untranslated(format!("{}: {} {}: {why}", d.at, d.name, d.args.join(" ")))
    }

    /// `FILE:LINE: what: why`, listed once; its comment returned for the config (empty
    /// when it was listed already).
    fn untranslated(&mut self, line: String) -> String {
        if self.not.contains(&line) {
            return String::new();
        }
        let comment = format!("# nginx {line}\n");
        self.not.push(line);
        comment
    }
}

pub fn translate(directives: &[Directive]) -> Translation {
    let mut out = Out::default();
    // A file of server blocks (a sites-enabled file) is an http block's inside.
    let http: Vec<&Directive> = directives.iter().filter(|d| d.name == "http").collect();
    let mut top = String::new();
    for d in directives {
        match d.name.as_str() {
            "http" => {}
            "worker_processes" => {
                let n = d.args.first().cloned().unwrap_or_default();
                if n == "auto" || n.parse::<u32>().is_ok() {
                    let value = if n == "auto" { "\"auto\"".into() } else { n };
                    out.gateway.push(format!("workers = {value}"));
                    out.done += 1;
                } else {
                    top.push_str(&out.skip(d, "not a number"));
                }
            }
            "events" | "user" | "pid" => {
                out.done += 1;
            }
            "error_log" | "worker_rlimit_nofile" => top.push_str(&out.skip(
                d,
                "the gateway logs to stderr and raises its own file limit",
            )),
            _ if http.is_empty() => {}
            _ => top.push_str(&out.skip(d, "no equivalent outside http")),
        }
    }
    let http_directives: Vec<Directive> = if http.is_empty() {
        directives.to_vec()
    } else {
        http.iter()
            .flat_map(|d| d.block.clone().unwrap_or_default())
            .collect()
    };
    let mut notes = top;
    notes.push_str(&http_block(&mut out, &http_directives));
    Translation {
        toml: render(&out, &notes),
        translated: out.done,
        untranslated: out.not,
    }
}

fn http_block(out: &mut Out, directives: &[Directive]) -> String {
    let mut notes = String::new();
    let mut inherited = Inherited::default();
    // Zones and upstreams first: servers refer to them.
    for d in directives {
        match d.name.as_str() {
            "limit_req_zone" => {
                let zone = d.args.iter().find_map(|a| a.strip_prefix("zone="));
                let rate = d.args.iter().find_map(|a| a.strip_prefix("rate="));
                let key_ok = d
                    .args
                    .first()
                    .is_some_and(|k| k == "$binary_remote_addr" || k == "$remote_addr");
                match (zone, rate, key_ok) {
                    (Some(zone), Some(rate), true) => {
                        let name = zone.split(':').next().unwrap_or(zone).to_string();
                        out.zones.insert(name, rate.to_string());
                        out.done += 1;
                    }
                    _ => notes.push_str(&out.skip(d, "only zones keyed by the client address")),
                }
            }
            "upstream" => upstream(out, d, &mut notes),
            _ => {}
        }
    }
    for d in directives {
        match d.name.as_str() {
            "limit_req_zone" | "upstream" | "server" => {}
            "gzip" | "gzip_types" | "gzip_min_length" | "gzip_comp_level" => {
                gzip(out, d, &mut notes)
            }
            "client_max_body_size" => match size(&d.args) {
                Some(s) => {
                    inherited.max_body_size = Some(s);
                    out.done += 1;
                }
                None => notes.push_str(&out.skip(d, "not a size")),
            },
            // Gathered into trusted_proxies below.
            "set_real_ip_from" => out.done += 1,
            "access_log" => match d.args.first().map(String::as_str) {
                Some("off") => out.done += 1,
                Some(path) => {
                    out.gateway.push(format!("access_log = {path:?}"));
                    out.done += 1;
                }
                None => {}
            },
            _ => {
                if !shared_directive(out, d, &mut inherited, &mut notes) {
                    notes.push_str(&skipped(out, d));
                }
            }
        }
    }
    let trusted: Vec<String> = directives
        .iter()
        .filter(|d| d.name == "set_real_ip_from")
        .filter_map(|d| d.args.first().cloned())
        .collect();
    if !trusted.is_empty() {
        out.gateway.push(format!("trusted_proxies = {trusted:?}"));
    }
    let servers: Vec<&Directive> = directives.iter().filter(|d| d.name == "server").collect();
    // How many server blocks listen on each address: one alone takes every host.
    let mut listening: BTreeMap<String, usize> = BTreeMap::new();
    for s in &servers {
        for addr in listens(s).into_iter().map(|(a, _)| a) {
            *listening.entry(addr).or_default() += 1;
        }
    }
    for s in servers {
        out.done += 1;
        notes.push_str(&server(out, s, &inherited, &listening));
    }
    notes
}

fn upstream(out: &mut Out, d: &Directive, notes: &mut String) {
    let Some(name) = d.args.first().cloned() else {
        return;
    };
    out.done += 1;
    let mut u = Upstream::default();
    for inner in d.block.iter().flatten() {
        match inner.name.as_str() {
            "server" => {
                let Some(addr) = inner.args.first() else {
                    continue;
                };
                let addr = if addr.contains(':') {
                    addr.clone()
                } else {
                    format!("{addr}:80")
                };
                let mut entry = format!("{{ address = {addr:?}");
                let mut ok = true;
                for p in &inner.args[1..] {
                    if let Some(w) = p.strip_prefix("weight=") {
                        let _ = write!(entry, ", weight = {w}");
                    } else if p == "backup" {
                        entry.push_str(", backup = true");
                    } else if let Some(n) = p.strip_prefix("max_fails=") {
                        u.lines.push(format!("max_fails = {n}"));
                    } else if let Some(t) = p.strip_prefix("fail_timeout=") {
                        u.lines.push(format!("fail_timeout = {:?}", duration(t)));
                    } else if p == "down" {
                        ok = false;
                    } else {
                        notes.push_str(
                            &out.skip(inner, &format!("server parameter {p} has no equivalent")),
                        );
                    }
                }
                entry.push_str(" }");
                if ok {
                    u.servers.push(entry);
                    out.done += 1;
                } else {
                    notes.push_str(&out.skip(inner, "a server marked down is left out"));
                }
            }
            "least_conn" => push_done(out, &mut u.lines, "policy = \"least_conn\"".into()),
            "ip_hash" => push_done(out, &mut u.lines, "policy = \"ip_hash\"".into()),
            "hash" => match inner.args.first().map(String::as_str) {
                Some("$request_uri") => {
                    u.lines.push("policy = \"hash\"".into());
                    push_done(out, &mut u.lines, "hash_key = \"uri\"".into());
                }
                Some(key) if key.starts_with("$cookie_") => {
                    u.lines.push("policy = \"hash\"".into());
                    let cookie = key.trim_start_matches("$cookie_");
                    push_done(out, &mut u.lines, format!("hash_key = \"cookie:{cookie}\""));
                }
                Some(key) if key.starts_with("$http_") => {
                    u.lines.push("policy = \"hash\"".into());
                    let header = key.trim_start_matches("$http_").replace('_', "-");
                    push_done(out, &mut u.lines, format!("hash_key = \"header:{header}\""));
                }
                _ => notes
                    .push_str(&out.skip(inner, "only $request_uri, $cookie_NAME or $http_NAME")),
            },
            "keepalive" => {
                if let Some(n) = inner.args.first() {
                    push_done(out, &mut u.lines, format!("keepalive = {n}"));
                }
            }
            "keepalive_timeout" => {
                if let Some(t) = inner.args.first() {
                    push_done(
                        out,
                        &mut u.lines,
                        format!("idle_timeout = {:?}", duration(t)),
                    );
                }
            }
            "sticky" if inner.args.first().map(String::as_str) == Some("cookie") => {
                let cookie = inner.args.get(1).cloned().unwrap_or_else(|| "route".into());
                push_done(out, &mut u.lines, format!("sticky_cookie = {cookie:?}"));
            }
            _ => notes.push_str(&skipped(out, inner)),
        }
    }
    u.lines.dedup();
    out.upstreams.insert(name, u);
}

fn push_done(out: &mut Out, lines: &mut Vec<String>, line: String) {
    lines.push(line);
    out.done += 1;
}

fn gzip(out: &mut Out, d: &Directive, notes: &mut String) {
    let table = out.compression.get_or_insert_with(Vec::new);
    match d.name.as_str() {
        "gzip" if d.args.first().map(String::as_str) == Some("off") => {
            out.compression = None;
            out.done += 1;
        }
        "gzip" => out.done += 1,
        "gzip_types" => {
            let mut types: Vec<String> = d.args.iter().filter(|t| *t != "*").cloned().collect();
            // nginx always compresses text/html.
            types.insert(0, "text/html".into());
            types.dedup();
            table.push(format!("types = {types:?}"));
            out.done += 1;
        }
        "gzip_min_length" => {
            let n = d.args.first().cloned().unwrap_or_default();
            table.push(format!("min_length = {:?}", n.to_ascii_lowercase()));
            out.done += 1;
        }
        _ => notes.push_str(&out.skip(d, "the gateway picks its compression levels for a proxy")),
    }
}

/// Directives a server or a location may carry; true when `d` was one of them.
fn shared_directive(
    out: &mut Out,
    d: &Directive,
    inherited: &mut Inherited,
    notes: &mut String,
) -> bool {
    match d.name.as_str() {
        "root" => inherited.root = d.args.first().cloned(),
        "index" => inherited.index = d.args.first().cloned(),
        "client_max_body_size" => match size(&d.args) {
            Some(s) => inherited.max_body_size = Some(s),
            None => {
                notes.push_str(&out.skip(d, "not a size"));
                return true;
            }
        },
        "add_header" => {
            let (Some(name), Some(value)) = (d.args.first(), d.args.get(1)) else {
                return false;
            };
            if value.contains('$') {
                notes.push_str(&out.skip(d, "a value with variables"));
                return true;
            }
            inherited.add_header.push((name.clone(), value.clone()));
        }
        "allow" => inherited
            .allow
            .extend(d.args.first().filter(|a| *a != "all").cloned()),
        "deny" => match d.args.first().map(String::as_str) {
            Some("all") if inherited.allow.is_empty() => {
                inherited
                    .deny
                    .extend(["0.0.0.0/0".to_string(), "::/0".to_string()]);
            }
            Some("all") => {}
            Some(a) => inherited.deny.push(a.to_string()),
            None => {}
        },
        "proxy_set_header" => {
            let (Some(name), Some(value)) = (d.args.first(), d.args.get(1)) else {
                return false;
            };
            inherited
                .proxy_set_header
                .push((name.clone(), value.clone(), d.at.clone()));
        }
        "limit_req" => {
            inherited.limit_req = d
                .args
                .iter()
                .find_map(|a| a.strip_prefix("zone="))
                .map(|z| {
                    let burst = d
                        .args
                        .iter()
                        .find_map(|a| a.strip_prefix("burst="))
                        .unwrap_or("0");
                    format!("{z} {burst}")
                })
        }
        "error_page" => {
            let Some(uri) = d.args.last() else {
                return false;
            };
            for code in &d.args[..d.args.len() - 1] {
                inherited.error_page.push((code.clone(), uri.clone()));
            }
        }
        _ if BUILT_IN.iter().any(|(n, _)| *n == d.name) => {}
        _ => return false,
    }
    out.done += 1;
    true
}

fn skipped(out: &mut Out, d: &Directive) -> String {
    match BUILT_IN.iter().find(|(n, _)| *n == d.name) {
        Some(_) => {
            out.done += 1;
            String::new()
        }
        None => out.skip(d, "no equivalent"),
    }
}

/// A server block's listen addresses, and whether each is TLS.
fn listens(server: &Directive) -> Vec<(String, bool)> {
    let mut found = Vec::new();
    for d in server.block.iter().flatten().filter(|d| d.name == "listen") {
        let Some(first) = d.args.first() else {
            continue;
        };
        let addr = if first.starts_with('[') || first.contains(':') {
            first.clone()
        } else if first.parse::<u16>().is_ok() {
            format!("0.0.0.0:{first}")
        } else {
            format!("{first}:80")
        };
        found.push((addr, d.args.iter().any(|a| a == "ssl")));
    }
    if found.is_empty() {
        found.push(("0.0.0.0:80".into(), false));
    }
    found
}

fn server(
    out: &mut Out,
    s: &Directive,
    http: &Inherited,
    listening: &BTreeMap<String, usize>,
) -> String {
    let mut notes = String::new();
    let directives = s.block.clone().unwrap_or_default();
    let mut inherited = http.clone();
    let mut names: Vec<String> = Vec::new();
    let (mut cert, mut key) = (None, None);
    let mut locations = Vec::new();
    let mut redirect = None;
    for d in &directives {
        match d.name.as_str() {
            "listen" => out.done += 1,
            "server_name" => {
                for n in &d.args {
                    if n.starts_with('~') {
                        notes.push_str(
                            &out.skip(d, "a regular expression name (only exact and *.suffix)"),
                        );
                    } else if n != "_" && !n.is_empty() {
                        names.push(n.trim_start_matches('.').to_string());
                    }
                }
                out.done += 1;
            }
            "ssl_certificate" => {
                cert = d.args.first().cloned();
                out.done += 1;
            }
            "ssl_certificate_key" => {
                key = d.args.first().cloned();
                out.done += 1;
            }
            "location" => locations.push(d.clone()),
            "return" => {
                redirect = Some(d.clone());
            }
            "if" | "rewrite" | "set" | "map" => notes.push_str(&out.skip(
                d,
                "no equivalent (routes match by host, path, methods and headers)",
            )),
            "gzip" | "gzip_types" | "gzip_min_length" | "gzip_comp_level" => {
                gzip(out, d, &mut notes)
            }
            _ => {
                if !shared_directive(out, d, &mut inherited, &mut notes) {
                    notes.push_str(&skipped(out, d));
                }
            }
        }
    }
    // The listeners of this server block.
    let mut mine = Vec::new();
    for (addr, tls) in listens(s) {
        if addr.starts_with("[::]") {
            let v4 = addr.replacen("[::]", "0.0.0.0", 1);
            if listens(s).iter().any(|(a, _)| *a == v4) {
                notes.push_str(&format!("# nginx {}: listen {addr}: served by 0.0.0.0 on the same port (the gateway listens once per port)\n", s.at));
                continue;
            }
        }
        // The certificate first: an ssl listen without one makes no listener.
        let entry = match (tls, &cert, &key) {
            (false, _, _) => None,
            (true, Some(c), _) if c.contains("/letsencrypt/live/") && !names.is_empty() => {
                out.acme = true;
                let plain: Vec<&String> = names.iter().filter(|n| !n.contains('*')).collect();
                Some(format!("{{ acme = {plain:?} }}"))
            }
            (true, Some(c), Some(k)) => Some(format!("{{ cert = {c:?}, key = {k:?} }}")),
            (true, _, _) => {
                notes.push_str(&out.untranslated(format!(
                    "{}: listen {addr} ssl: no ssl_certificate and ssl_certificate_key",
                    s.at
                )));
                continue;
            }
        };
        let index = match out.listeners.iter().position(|l| l.addr == addr) {
            Some(i) => i,
            None => {
                let port = addr.rsplit(':').next().unwrap_or("0");
                let taken = out
                    .listeners
                    .iter()
                    .filter(|l| l.name.starts_with(&format!("port{port}")))
                    .count();
                let name = if taken == 0 {
                    format!("port{port}")
                } else {
                    format!("port{port}_{taken}")
                };
                out.listeners.push(Listener {
                    addr: addr.clone(),
                    name,
                    shared: listening.get(&addr).copied().unwrap_or(1),
                    ..Listener::default()
                });
                out.listeners.len() - 1
            }
        };
        if let Some(entry) = entry {
            if !out.listeners[index].tls.contains(&entry) {
                out.listeners[index].tls.push(entry);
            }
        }
        mine.push(index);
    }
    if mine.is_empty() {
        let _ = writeln!(
            notes,
            "# nginx {}: server: left out, it has no listener left",
            s.at
        );
        return notes;
    }
    let listener_list: Vec<&str> = mine
        .iter()
        .map(|&i| out.listeners[i].name.as_str())
        .collect();
    let listener_line = format!("listener = {listener_list:?}");
    // Alone on its listeners, a server takes every request there whatever the host, as
    // nginx's default server does.
    let alone = mine.iter().all(|&i| out.listeners[i].shared == 1);
    let hosts: Vec<String> = if names.is_empty() || alone {
        vec!["*".into()]
    } else {
        names.clone()
    };
    if let Some(r) = &redirect {
        match redirect_route(r) {
            Some(route) => {
                for host in &hosts {
                    out.routes.push(format!(
                        "[[route]]\n{listener_line}\nhost = {host:?}\n{route}"
                    ));
                }
                out.done += 1;
                return notes;
            }
            None => notes.push_str(&out.skip(r, "only redirects (301, 302, 307, 308 with a URL)")),
        }
    }
    let named: BTreeMap<String, Directive> = locations
        .iter()
        .filter(|l| l.args.first().is_some_and(|a| a.starts_with('@')))
        .map(|l| (l.args[0].clone(), l.clone()))
        .collect();
    if locations
        .iter()
        .all(|l| l.args.first().is_some_and(|a| a.starts_with('@')))
        && inherited.root.is_some()
    {
        // A server with a root and no location serves files from it.
        locations.push(Directive {
            name: "location".into(),
            args: vec!["/".into()],
            block: Some(Vec::new()),
            at: s.at.clone(),
        });
    }
    for l in &locations {
        if l.args.first().is_some_and(|a| a.starts_with('@')) {
            continue;
        }
        out.done += 1;
        match location(out, l, &inherited, &named, &locations, &mut notes) {
            Some(route) => {
                for host in &hosts {
                    out.routes.push(format!(
                        "[[route]]\n{listener_line}\nhost = {host:?}\n{route}"
                    ));
                }
            }
            None => notes.push_str(&format!(
                "# nginx {}: location {}: left out (see above)\n",
                l.at,
                l.args.join(" ")
            )),
        }
    }
    notes
}

fn redirect_route(r: &Directive) -> Option<String> {
    let code: u16 = r.args.first()?.parse().ok()?;
    let target = r.args.get(1)?;
    let status = match code {
        301 | 302 | 307 | 308 => code,
        303 => 302,
        _ => return None,
    };
    let location = target
        .replace("$request_uri", "{uri}")
        .replace("$http_host", "{host}")
        .replace("$host", "{host}")
        .replace("$server_name", "{host}");
    if location.contains('$') {
        return None;
    }
    Some(format!(
        "path_prefix = \"/\"\nredirect = {location:?}\nredirect_status = {status}\n"
    ))
}

/// One location as a route's keys (without listener and host), or `None` when it cannot be.
fn location(
    out: &mut Out,
    l: &Directive,
    server: &Inherited,
    named: &BTreeMap<String, Directive>,
    all: &[Directive],
    notes: &mut String,
) -> Option<String> {
    let mut keys = String::new();
    let (modifier, path) = match l.args.as_slice() {
        [path] => ("", path.clone()),
        [m, path] => (m.as_str(), path.clone()),
        _ => {
            notes.push_str(&out.skip(l, "a location without a path"));
            return None;
        }
    };
    let prefix = match modifier {
        "" | "^~" => {
            let _ = writeln!(keys, "path_prefix = {path:?}");
            Some(path.clone())
        }
        "=" => {
            let _ = writeln!(
                keys,
                "path_regex = {:?}",
                format!("^{}$", regex::escape(&path))
            );
            None
        }
        "~" => {
            let _ = writeln!(keys, "path_regex = {path:?}");
            None
        }
        "~*" => {
            // ASCII case folding: the gateway's regular expressions are built without
            // Unicode case tables.
            let _ = writeln!(keys, "path_regex = {:?}", format!("(?i-u){path}"));
            None
        }
        _ => {
            notes.push_str(&out.skip(l, "an unknown location modifier"));
            return None;
        }
    };
    let mut here = server.clone();
    // A location's own proxy_set_header replaces the server's (nginx's inheritance).
    let own_headers = l
        .block
        .iter()
        .flatten()
        .any(|d| d.name == "proxy_set_header");
    if own_headers {
        here.proxy_set_header.clear();
    }
    let mut upstream = None;
    let mut action = String::new();
    let mut try_files = None;
    let mut expires = None;
    let mut timeouts = Vec::new();
    for d in l.block.iter().flatten() {
        match d.name.as_str() {
            "proxy_pass" => match proxy_pass(out, d, prefix.as_deref()) {
                Ok((name, rewrite)) => {
                    upstream = Some(name);
                    if let Some(r) = rewrite {
                        let _ = writeln!(action, "rewrite_prefix = {r:?}");
                    }
                    out.done += 1;
                }
                Err(why) => {
                    notes.push_str(&out.skip(d, &why));
                    return None;
                }
            },
            "return" => match redirect_route(d) {
                Some(route) => {
                    out.done += 1;
                    let route = route.replace("path_prefix = \"/\"\n", "");
                    let _ = write!(action, "{route}");
                }
                None => {
                    notes.push_str(&out.skip(d, "only redirects (301, 302, 307, 308 with a URL)"));
                    return None;
                }
            },
            "alias" => {
                here.root = None;
                let _ = writeln!(
                    action,
                    "root = {:?}",
                    d.args.first().cloned().unwrap_or_default()
                );
                out.done += 1;
            }
            "try_files" => {
                try_files = Some(d.args.clone());
                out.done += 1;
            }
            "expires" => {
                expires = d.args.first().cloned();
                out.done += 1;
            }
            "proxy_connect_timeout" | "proxy_read_timeout" | "proxy_send_timeout" => {
                let key = d.name.trim_start_matches("proxy_");
                timeouts.push(format!(
                    "{key} = {:?}",
                    duration(d.args.first().map_or("60s", String::as_str))
                ));
                out.done += 1;
            }
            "gzip" if d.args.first().map(String::as_str) == Some("off") => {
                let _ = writeln!(action, "compression = false");
                out.done += 1;
            }
            "location" => notes.push_str(&out.skip(d, "a nested location (write it as its own)")),
            "access_log" | "log_not_found" => out.done += 1,
            _ => {
                if !shared_directive(out, d, &mut here, notes) {
                    notes.push_str(&skipped(out, d));
                }
            }
        }
    }
    // Files: nginx's root takes the whole URI; the gateway's root takes the path after
    // the prefix, so the prefix is added to it.
    let alias = action.contains("root = ");
    if upstream.is_none() && !action.contains("redirect") {
        if let (false, Some(root)) = (alias, &here.root) {
            let root = match &prefix {
                Some(p) => format!("{}{}", root.trim_end_matches('/'), p),
                None => root.clone(),
            };
            let _ = writeln!(action, "root = {root:?}");
        }
    }
    let serves_files = action.contains("root = ");
    if serves_files {
        if let Some(index) = &here.index {
            let _ = writeln!(action, "index = {index:?}");
        }
        if let Some(args) = &try_files {
            match args.last().map(String::as_str) {
                Some(last) if last.starts_with('@') => {
                    match named
                        .get(last)
                        .and_then(|n| n.block.as_ref())
                        .and_then(|b| b.iter().find(|d| d.name == "proxy_pass"))
                    {
                        Some(pass) => match proxy_pass(out, pass, None) {
                            Ok((name, _)) => {
                                upstream = Some(name);
                                let _ = writeln!(action, "fallback = \"upstream\"");
                            }
                            Err(why) => notes.push_str(&out.skip(pass, &why)),
                        },
                        None => notes.push_str(&format!(
                            "# nginx {}: try_files {last}: the named location has no proxy_pass\n",
                            l.at
                        )),
                    }
                }
                Some("=404") | None => {}
                Some(_) => {
                    let _ = writeln!(action, "fallback = \"index\"");
                }
            }
        }
        if let Some(e) = &expires {
            match e.as_str() {
                "max" => {
                    let _ = writeln!(action, "cache_control = \"public, max-age=315360000\"");
                }
                "off" | "epoch" => {}
                t => {
                    let secs = humantime::parse_duration(&duration(t))
                        .map(|d| d.as_secs())
                        .unwrap_or(0);
                    let _ = writeln!(action, "cache_control = \"public, max-age={secs}\"");
                }
            }
        }
    } else if let (Some(e), Some(d)) = (
        &expires,
        l.block.iter().flatten().find(|d| d.name == "expires"),
    ) {
        let why =
            format!("expires {e} on proxied responses (the upstream's Cache-Control goes through)");
        notes.push_str(&out.skip(d, &why));
        out.done -= 1;
    }
    if !serves_files && upstream.is_none() && !action.contains("redirect") {
        notes.push_str(&format!(
            "# nginx {}: location {}: neither proxy_pass, return nor root\n",
            l.at,
            l.args.join(" ")
        ));
        return None;
    }
    if let Some(name) = &upstream {
        let _ = writeln!(action, "upstream = {name:?}");
        if let Some(u) = out.upstreams.get_mut(name) {
            for t in timeouts {
                if !u.lines.contains(&t) {
                    u.lines.push(t);
                }
            }
        }
    }
    // The headers the gateway sets itself, and the WebSocket idiom, are dropped.
    let mut set = Vec::new();
    for (name, value, at) in &here.proxy_set_header {
        let lower = name.to_ascii_lowercase();
        let built_in = matches!(
            lower.as_str(),
            "host"
                | "x-real-ip"
                | "x-forwarded-for"
                | "x-forwarded-proto"
                | "x-forwarded-host"
                | "upgrade"
                | "connection"
                | "x-nginx-proxy"
        );
        if built_in {
            continue;
        }
        if value.contains('$') {
            let line = format!("{at}: proxy_set_header {name} {value}: a value with variables");
            notes.push_str(&out.untranslated(line));
            continue;
        }
        set.push((name.clone(), value.clone()));
    }
    if !set.is_empty() {
        let pairs: Vec<String> = set.iter().map(|(n, v)| format!("{n:?} = {v:?}")).collect();
        let _ = writeln!(action, "request_headers = {{ {} }}", pairs.join(", "));
    }
    if !here.add_header.is_empty() {
        let pairs: Vec<String> = here
            .add_header
            .iter()
            .map(|(n, v)| format!("{n:?} = {v:?}"))
            .collect();
        let _ = writeln!(action, "response_headers = {{ {} }}", pairs.join(", "));
    }
    if !here.allow.is_empty() {
        let _ = writeln!(action, "allow = {:?}", here.allow);
    }
    if !here.deny.is_empty() {
        let _ = writeln!(action, "deny = {:?}", here.deny);
    }
    if let Some(size) = &here.max_body_size {
        let _ = writeln!(action, "max_body_size = {size:?}");
    }
    if let Some(limit) = &here.limit_req {
        let (zone, burst) = limit.split_once(' ').unwrap_or((limit, "0"));
        match out.zones.get(zone) {
            Some(rate) => {
                let _ = writeln!(
                    action,
                    "rate_limit = {{ rate = {rate:?}, burst = {burst} }}"
                );
            }
            None => notes.push_str(&format!(
                "# nginx {}: limit_req zone={zone}: no such limit_req_zone\n",
                l.at
            )),
        }
    }
    let mut pages = Vec::new();
    for (code, uri) in &here.error_page {
        // An error page is a file: find the location that serves its URI.
        let file = all
            .iter()
            .find(|o| o.args == ["=", uri.as_str()] || o.args == [uri.as_str()])
            .and_then(|o| {
                let root = o
                    .block
                    .iter()
                    .flatten()
                    .find(|d| d.name == "root")
                    .and_then(|d| d.args.first())
                    .or(server.root.as_ref())?;
                Some(format!("{}{uri}", root.trim_end_matches('/')))
            });
        match (file, code.parse::<u16>()) {
            (Some(file), Ok(502..=504)) => pages.push(format!("{code} = {file:?}")),
            _ => {
                let line = format!("{}: error_page {code} {uri}: only 502, 503 and 504 to a file a location serves", l.at);
                notes.push_str(&out.untranslated(line));
            }
        }
    }
    if !pages.is_empty() {
        pages.dedup();
        let _ = writeln!(action, "error_pages = {{ {} }}", pages.join(", "));
    }
    keys.push_str(&action);
    Some(keys)
}

/// `proxy_pass`'s upstream (defined here if it is an address) and, with a URI part, the
/// prefix's replacement.
fn proxy_pass(
    out: &mut Out,
    d: &Directive,
    prefix: Option<&str>,
) -> Result<(String, Option<String>), String> {
    let url = d.args.first().ok_or("no URL")?;
    if url.contains('$') {
        return Err("a URL with variables".into());
    }
    let rest = url
        .strip_prefix("http://")
        .ok_or("only http:// upstreams (the gateway speaks plain HTTP to them)")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], Some(&rest[i..])),
        None => (rest, None),
    };
    let rewrite = match (path, prefix) {
        (Some(p), Some(_)) => Some(p.to_string()),
        (Some(_), None) => return Err("a URI part after a regular expression location".into()),
        (None, _) => None,
    };
    if out.upstreams.contains_key(authority) {
        return Ok((authority.to_string(), rewrite));
    }
    let addr = if authority.contains(':') {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    let name: String = authority
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    out.upstreams
        .entry(name.clone())
        .or_insert_with(|| Upstream {
            lines: Vec::new(),
            servers: vec![format!("{{ address = {addr:?} }}")],
        });
    Ok((name, rewrite))
}

/// nginx's sizes (`10M`, `512k`, `0` for no limit) as the gateway writes them.
fn size(args: &[String]) -> Option<String> {
    let s = args.first()?.to_ascii_lowercase();
    if s == "0" {
        return None;
    }
    let digits = s.trim_end_matches(['k', 'm', 'g']);
    digits.parse::<u64>().ok()?;
    Some(s)
}

/// nginx's times (`60`, `60s`, `1m`, `30d`, `1h30m`) with a unit the gateway reads.
fn duration(t: &str) -> String {
    if t.chars().all(|c| c.is_ascii_digit()) {
        format!("{t}s")
    } else if let Some(d) = t.strip_suffix('d') {
        match d.parse::<u64>() {
            Ok(days) => format!("{}h", days * 24),
            Err(_) => t.to_string(),
        }
    } else {
        t.to_string()
    }
}

fn render(out: &Out, notes: &str) -> String {
    let mut text = String::from(
        "# Made by `gateway import-nginx`: check it, then `gateway check -c` this file.\n\n",
    );
    if !out.gateway.is_empty() {
        text.push_str("[gateway]\n");
        for line in &out.gateway {
            let _ = writeln!(text, "{line}");
        }
        text.push('\n');
    }
    if out.acme {
        text.push_str("# Certificates from Let's Encrypt, obtained by the gateway itself: give your address.\n[acme]\n# email = \"you@example.com\"\n\n");
    }
    if let Some(table) = &out.compression {
        text.push_str("[compression]\n");
        for line in table {
            let _ = writeln!(text, "{line}");
        }
        text.push('\n');
    }
    for l in &out.listeners {
        let _ = writeln!(
            text,
            "[[listener]]\nname = {:?}\nlisten = {:?}",
            l.name, l.addr
        );
        if !l.tls.is_empty() {
            let _ = writeln!(text, "tls = [{}]", l.tls.join(", "));
        }
        text.push('\n');
    }
    for r in &out.routes {
        let _ = writeln!(text, "{r}");
    }
    for (name, u) in &out.upstreams {
        let _ = writeln!(text, "[upstream.{name}]");
        for line in &u.lines {
            let _ = writeln!(text, "{line}");
        }
        let _ = writeln!(text, "servers = [{}]\n", u.servers.join(", "));
    }
    if !notes.is_empty() {
        text.push_str("# What has no equivalent (nginx FILE:LINE: directive: why):\n");
        text.push_str(notes);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn directives(text: &str) -> Vec<Directive> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.conf");
        std::fs::write(&path, text).unwrap();
        super::super::parse::file(&path).unwrap()
    }

    #[test]
    fn locations_limits_and_lists_translate() {
        let t = translate(&directives(
            "limit_req_zone $binary_remote_addr zone=z:1m rate=5r/s;\n\
             server { listen 8080;\n\
               location = /a.b { return 307 https://x.test$request_uri; }\n\
               location /p/ { limit_req zone=z burst=3; deny all; proxy_pass http://10.0.0.1:81; }\n\
               location /q { if ($x) { return 403; } proxy_pass http://$backend; }\n\
             }\n",
        ));
        assert!(t.toml.contains("path_regex = \"^/a\\\\.b$\""), "{}", t.toml);
        assert!(
            t.toml
                .contains("redirect = \"https://x.test{uri}\"\nredirect_status = 307"),
            "{}",
            t.toml
        );
        assert!(
            t.toml
                .contains("rate_limit = { rate = \"5r/s\", burst = 3 }"),
            "{}",
            t.toml
        );
        assert!(
            t.toml.contains("deny = [\"0.0.0.0/0\", \"::/0\"]"),
            "{}",
            t.toml
        );
        assert!(
            t.toml.contains("servers = [{ address = \"10.0.0.1:81\" }]"),
            "{}",
            t.toml
        );
        let said = t.untranslated.join("\n");
        assert!(said.contains(": if ($x): no equivalent"), "{said}");
        assert!(
            said.contains("proxy_pass http://$backend: a URL with variables"),
            "{said}"
        );
    }

    #[test]
    fn an_ssl_listen_without_a_certificate_makes_no_listener() {
        let t = translate(&directives(
            "server { listen 443 ssl; location / { proxy_pass http://127.0.0.1:3000; } }\n",
        ));
        assert!(!t.toml.contains("[[listener]]"), "{}", t.toml);
        assert!(
            t.untranslated[0].contains("no ssl_certificate"),
            "{:?}",
            t.untranslated
        );
    }
}
