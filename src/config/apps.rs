//! `[app.NAME]`: an app's instances, which the supervisor starts and watches (like PM2's
//! cluster mode), and `{ app = "NAME" }` servers: every ready instance of that app. The
//! file gives a placeholder server per entry; the supervisor's list of ready instances
//! ([`AppServers`]) is laid over it, the way DNS answers and run-time servers are.

use super::{file, Config, ServerConfig, ServerSource, Validator};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;
use toml::Spanned;

pub const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(10);
pub const MAX_INSTANCES: i64 = 256;
/// What an app server entry's `entry` starts with (`app:web`).
const ENTRY_PREFIX: &str = "app:";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppConfig {
    pub name: String,
    /// The program and its arguments.
    pub command: Vec<String>,
    /// The working directory (the config file's by default).
    pub dir: PathBuf,
    pub instances: usize,
    /// Added to the gateway's environment, with `PORT` and `INSTANCE`.
    pub env: BTreeMap<String, String>,
    /// The first port: see [`AppConfig::ports`].
    pub port: u16,
    pub ready: ReadyCheck,
    /// How long a drained instance may take to finish what it has, and then to exit
    /// after `SIGTERM`, before `SIGKILL`.
    pub stop_timeout: Duration,
    /// An instance whose resident memory passes this is replaced (rolling).
    pub max_memory: Option<u64>,
    /// Where the instances' output goes, line by line; the gateway's stderr without it.
    pub log: Option<PathBuf>,
}

/// When a started instance counts as ready.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadyCheck {
    /// A `GET` of this path answers 2xx or 3xx; without it, the port accepts connections.
    pub path: Option<String>,
    /// An instance not ready by then is killed and counts as a crash.
    pub timeout: Duration,
}

impl AppConfig {
    /// The ports instances listen on: instance `i` starts on `port + i`; a replacement
    /// (restart, memory, crash) takes the lowest free one, so an old instance and its
    /// new one never share a port. Twice the instances leaves room for all of them to be
    /// replaced at once (an upgrade).
    pub fn ports(&self) -> Range<u16> {
        self.port..self.port + 2 * self.instances as u16
    }

    /// Whether instances running as `self` must be replaced to run as `other` says:
    /// what the program sees changed. (Counts, timeouts, limits and the log apply to the
    /// running instances.)
    pub fn same_program(&self, other: &AppConfig) -> bool {
        self.command == other.command
            && self.dir == other.dir
            && self.env == other.env
            && self.port == other.port
    }
}

/// The ready instances of each app, by app name: what its `{ app = NAME }` servers are.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AppServers(pub BTreeMap<String, Vec<SocketAddr>>);

impl AppServers {
    /// Replaces each app entry's placeholder with the app's ready instances; the
    /// placeholder (never up) stays while the app has none.
    pub fn apply(&self, config: &mut Config) {
        for upstream in &mut config.upstreams {
            let written = std::mem::take(&mut upstream.servers);
            for server in written {
                let ready = app_of(&server).and_then(|app| self.0.get(app));
                match ready {
                    Some(addrs) if !addrs.is_empty() => {
                        upstream
                            .servers
                            .extend(addrs.iter().map(|&addr| ServerConfig {
                                name: addr.to_string(),
                                unresolved: false,
                                addr,
                                ..server.clone()
                            }))
                    }
                    _ => upstream.servers.push(server),
                }
            }
        }
    }
}

/// The app a placeholder server stands for.
fn app_of(server: &ServerConfig) -> Option<&str> {
    if server.source != ServerSource::App || !server.unresolved {
        return None;
    }
    server.entry.as_deref()?.strip_prefix(ENTRY_PREFIX)
}

/// The server that stands for app `app` in an upstream until it has a ready instance.
pub(super) fn placeholder(app: &str, weight: u32, backup: bool) -> ServerConfig {
    let entry = format!("{ENTRY_PREFIX}{app}");
    ServerConfig {
        name: entry.clone(),
        entry: Some(entry),
        unresolved: true,
        addr: SocketAddr::from(([0, 0, 0, 0], 0)),
        weight,
        backup,
        source: ServerSource::App,
    }
}

impl Validator<'_> {
    pub(super) fn apps(
        &mut self,
        sections: &BTreeMap<Spanned<String>, Spanned<file::AppSection>>,
        base: &Path,
        listeners: &[super::ListenerConfig],
    ) -> Vec<AppConfig> {
        let mut apps: Vec<(AppConfig, Range<usize>)> = Vec::new();
        for (name, section) in sections {
            let app = self.app(name.get_ref(), section.get_ref(), base);
            let span = section.get_ref().port.span();
            let key = format!("app.{}.port", app.name);
            let ports = app.ports();
            if let Some((other, _)) = apps.iter().find(|(o, _)| overlap(&o.ports(), &ports)) {
                self.error(
                    span.clone(),
                    &key,
                    format!(
                        "ports {}-{} overlap those of app {} ({}-{}): each app takes port to port + 2 × instances - 1",
                        ports.start, ports.end - 1, other.name, other.ports().start, other.ports().end - 1
                    ),
                );
            }
            if let Some(l) = listeners.iter().find(|l| ports.contains(&l.addr.port())) {
                self.error(
                    span.clone(),
                    &key,
                    format!(
                        "ports {}-{} include listener {}",
                        ports.start,
                        ports.end - 1,
                        l.addr
                    ),
                );
            }
            apps.push((app, span));
        }
        apps.into_iter().map(|(app, _)| app).collect()
    }

    fn app(&mut self, name: &str, a: &file::AppSection, base: &Path) -> AppConfig {
        let key = |k: &str| format!("app.{name}.{k}");
        let dir = match &a.dir {
            // The directory of a config file named without one.
            None if base.as_os_str().is_empty() => PathBuf::from("."),
            None => base.to_path_buf(),
            Some(d) => {
                let dir = base.join(d.get_ref());
                if !dir.is_dir() {
                    self.error(
                        d.span(),
                        &key("dir"),
                        format!("{} is not a directory", dir.display()),
                    );
                }
                dir
            }
        };
        let command = a.command.get_ref().clone();
        match command.first() {
            None => self.error(
                a.command.span(),
                &key("command"),
                "needs the program to run",
            ),
            Some(program) => {
                if let Err(e) = find_program(program, &dir) {
                    self.error(a.command.span(), &key("command"), e);
                }
            }
        }
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let instances = match &a.instances {
            None => cpus,
            Some(n) => match n.get_ref() {
                file::Workers::Count(n) if (1..=MAX_INSTANCES).contains(n) => *n as usize,
                file::Workers::Word(s) if s == "auto" => cpus,
                _ => {
                    self.error(
                        n.span(),
                        &key("instances"),
                        format!("must be \"auto\" or a number from 1 to {MAX_INSTANCES}"),
                    );
                    1
                }
            },
        };
        let mut env = BTreeMap::new();
        if let Some(table) = &a.env {
            for (k, v) in table.get_ref() {
                let problem = if k.is_empty() || k.contains(['=', '\0']) || v.contains('\0') {
                    Some(format!("{k:?} cannot be an environment variable"))
                } else if k == "PORT" || k == "INSTANCE" {
                    Some(format!("{k} is set by the gateway for each instance"))
                } else {
                    None
                };
                match problem {
                    Some(p) => self.error(table.span(), &key("env"), p),
                    None => {
                        env.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        let last = 65535 - 2 * instances as i64 + 1;
        let port = match a.port.get_ref() {
            p if (1..=last).contains(p) => *p as u16,
            _ => {
                self.error(
                    a.port.span(),
                    &key("port"),
                    format!(
                        "must be from 1 to {last}: instances take port to port + 2 × instances - 1"
                    ),
                );
                1
            }
        };
        let ready = match &a.ready {
            None => ReadyCheck {
                path: None,
                timeout: DEFAULT_READY_TIMEOUT,
            },
            Some(r) => ReadyCheck {
                path: r.path.as_ref().and_then(|p| {
                    if p.get_ref().starts_with('/') {
                        Some(p.get_ref().clone())
                    } else {
                        self.error(p.span(), &key("ready.path"), "must start with \"/\"");
                        None
                    }
                }),
                timeout: self.timeout(&r.timeout, &key("ready.timeout"), DEFAULT_READY_TIMEOUT),
            },
        };
        let max_memory = self.size(&a.max_memory, &key("max_memory"));
        if max_memory == Some(0) {
            let span = a.max_memory.as_ref().map_or(0..0, |m| m.span());
            self.error(span, &key("max_memory"), "must be more than 0");
        }
        let log = a.log.as_ref().map(|l| {
            let path = base.join(l.get_ref());
            let parent = path.parent().filter(|p| !p.as_os_str().is_empty());
            if parent.is_some_and(|p| !p.is_dir()) {
                self.error(
                    l.span(),
                    &key("log"),
                    format!("the directory of {} does not exist", path.display()),
                );
            }
            path
        });
        AppConfig {
            name: name.to_string(),
            command,
            dir,
            instances,
            env,
            port,
            ready,
            stop_timeout: self.timeout(&a.stop_timeout, &key("stop_timeout"), DEFAULT_STOP_TIMEOUT),
            max_memory,
            log,
        }
    }
}

fn overlap(a: &Range<u16>, b: &Range<u16>) -> bool {
    a.start < b.end && b.start < a.end
}

/// Where `program` is, as `execvp` will find it: a path with a slash is taken from
/// `dir`; a bare name is looked up in `PATH`.
fn find_program(program: &str, dir: &Path) -> Result<PathBuf, String> {
    use std::os::unix::fs::PermissionsExt;
    let runnable = |p: &Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if program.contains('/') {
        let path = dir.join(program);
        return if runnable(&path) {
            Ok(path)
        } else {
            Err(format!("{} is not a program that can run", path.display()))
        };
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| runnable(p))
        .ok_or_else(|| format!("{program:?} is not found in PATH"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, crate::config::ConfigErrors> {
        crate::config::parse(Path::new("/tmp/t.toml"), text)
    }

    const BASE: &str = "[[listener]]\nlisten = \"127.0.0.1:8080\"\n[[route]]\nupstream = \"web\"\n\
                        [upstream.web]\nservers = [{ app = \"web\" }, { address = \"127.0.0.1:9\" }]\n";

    #[test]
    fn an_app_entry_is_its_ready_instances_or_a_placeholder() {
        let text = format!(
            "{BASE}[app.web]\ncommand = [\"sh\", \"-c\", \"true\"]\ninstances = 2\nport = 3100\n"
        );
        let config = parse(&text).unwrap();
        let app = &config.apps[0];
        assert_eq!((app.instances, app.ports()), (2, 3100..3104));
        assert_eq!(config.upstreams[0].servers.len(), 2);
        assert!(config.upstreams[0].servers[0].unresolved);
        let mut ready = AppServers::default();
        let addrs: Vec<SocketAddr> = vec![
            "127.0.0.1:3100".parse().unwrap(),
            "127.0.0.1:3103".parse().unwrap(),
        ];
        ready.0.insert("web".into(), addrs.clone());
        let mut now = config.clone();
        ready.apply(&mut now);
        let servers: Vec<_> = now.upstreams[0]
            .servers
            .iter()
            .map(|s| (s.addr, s.source, s.unresolved))
            .collect();
        assert_eq!(
            servers,
            [
                (addrs[0], ServerSource::App, false),
                (addrs[1], ServerSource::App, false),
                ("127.0.0.1:9".parse().unwrap(), ServerSource::File, false)
            ]
        );
        ready.0.insert("web".into(), Vec::new());
        let mut none = config.clone();
        ready.apply(&mut none);
        assert_eq!(none.upstreams[0].servers, config.upstreams[0].servers);
    }

    #[test]
    fn app_mistakes_are_named_where_written() {
        let text = format!(
            "{BASE}[app.web]\ncommand = [\"no-such-program-here\"]\ninstances = 0\nport = 70000\n\
             env = {{ PORT = \"1\" }}\nready = {{ path = \"healthz\" }}\nmax_memory = \"0\"\n\
             [app.other]\ncommand = [\"sh\"]\ninstances = 2\nport = 8079\n\
             [upstream.x]\nservers = [{{ app = \"nope\" }}, {{ app = \"web\", address = \"127.0.0.1:1\" }}]\n"
        );
        let errors = parse(&text).unwrap_err().to_string();
        for expected in [
            "app.web.command: \"no-such-program-here\" is not found in PATH",
            "app.web.instances: must be",
            "app.web.port: must be from 1 to",
            "app.web.env: PORT is set by the gateway",
            "app.web.ready.path: must start with",
            "app.web.max_memory: must be more than 0",
            "app.other.port: ports 8079-8082 include listener 127.0.0.1:8080",
            "upstream.x.servers[0].app: no app \"nope\"",
            "upstream.x.servers[1]: a server has one of address, srv or app",
        ] {
            assert!(errors.contains(expected), "{expected:?} in:\n{errors}");
        }
    }

    #[test]
    fn overlapping_ports_are_refused_and_program_changes_are_told_apart() {
        let text = format!(
            "{BASE}[app.web]\ncommand = [\"sh\"]\ninstances = 2\nport = 3100\n\
             [app.api]\ncommand = [\"sh\"]\ninstances = 1\nport = 3103\n"
        );
        let errors = parse(&text).unwrap_err().to_string();
        assert!(errors.contains("overlap those of app api"), "{errors}");
        let text = format!("{BASE}[app.web]\ncommand = [\"sh\"]\ninstances = 2\nport = 3100\n");
        let a = parse(&text).unwrap().apps[0].clone();
        let mut b = a.clone();
        b.instances = 4;
        b.stop_timeout = Duration::from_secs(1);
        assert!(a.same_program(&b));
        b.env.insert("NODE_ENV".into(), "production".into());
        assert!(!a.same_program(&b));
    }
}
