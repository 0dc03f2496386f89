//! The control socket: a Unix socket, mode 0600, on which `gatewayctl` sends one request
//! line and reads one JSON reply.

use super::status::StatusSource;
use super::Event;
use crate::protocol::{Reply, Request};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;
use tokio::sync::{mpsc, oneshot};

/// Binds the control socket, refusing if another gateway answers on it, replacing a stale
/// file left by one that died.
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                format!("another gateway is running on {}", path.display()),
            ));
        }
        std::fs::remove_file(path)?;
    }
    // Bound in a directory only we may enter, made 0600 there, then renamed into place:
    // at no moment can another user connect to it (a chmod after binding at `path`
    // leaves a moment where the umask's mode applies).
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let private = dir.join(format!(".{name}.{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&private);
    std::fs::DirBuilder::new().mode(0o700).create(&private)?;
    let staged = private.join("control");
    let bound = UnixListener::bind(&staged).and_then(|listener| {
        std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o600))?;
        std::fs::rename(&staged, path)?;
        Ok(listener)
    });
    let _ = std::fs::remove_dir_all(&private);
    bound
}

/// Answers `status` from the published snapshot (so it works mid-reload); hands the other
/// requests to the supervisor.
pub async fn serve(
    listener: UnixListener,
    events: mpsc::UnboundedSender<Event>,
    status: StatusSource,
) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let (events, status) = (events.clone(), status.clone());
        tokio::spawn(async move {
            let (read, mut write) = stream.into_split();
            let mut line = String::new();
            let mut reader = BufReader::new(read);
            let read = reader.read_line(&mut line);
            let reply = match tokio::time::timeout(std::time::Duration::from_secs(5), read).await {
                Ok(Ok(_)) => match Request::parse(&line) {
                    Some(Request::Status) => {
                        let status = status.status();
                        Reply {
                            ok: true,
                            generation: Some(status.generation),
                            status: Some(status),
                            ..Reply::default()
                        }
                    }
                    Some(Request::Server {
                        upstream,
                        server,
                        change,
                    }) => status.change_server(&upstream, &server, change),
                    Some(Request::Purge { url, prefix }) => status.purge(&url, prefix),
                    Some(request) => {
                        let (tx, rx) = oneshot::channel();
                        let _ = events.send(Event::Control(request, tx));
                        rx.await
                            .unwrap_or_else(|_| Reply::failed("the gateway is stopping"))
                    }
                    None => Reply::failed(format!("unknown request {:?}", line.trim())),
                },
                _ => Reply::failed("no request received"),
            };
            let mut text = serde_json::to_string(&reply).unwrap_or_default();
            text.push('\n');
            let _ = write.write_all(text.as_bytes()).await;
        });
    }
}

/// Removes the socket file when the supervisor exits.
pub struct Cleanup(pub PathBuf);

impl Cleanup {
    /// Leaves the file in place: another supervisor serves it now.
    pub fn disarm(self) {
        std::mem::forget(self);
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
