//! `[gateway] watch = true`: the supervisor reloads by itself when the config file or a
//! certificate or key it names changes, through the same transaction as `gatewayctl
//! reload` (a broken edit is logged and the running generation keeps serving).
//!
//! The directories holding those files are watched with inotify (through `notify`), not
//! the files: editors replace files by renaming, and a Kubernetes ConfigMap swaps a
//! symlink to a new directory. A change counts only when the files' contents differ
//! from what was last loaded, and only once a burst of events has settled, so one save
//! makes one reload and touching a file makes none.

use super::status::Snapshot;
use super::{Event, Signal};
use notify::Watcher as _;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// Events closer together than this are one change…
const SETTLE: Duration = Duration::from_millis(300);
/// … but a stream of them is looked at after this.
const MAX_SETTLE: Duration = Duration::from_secs(2);

/// Watches the current generation's files while its config says `watch = true`.
pub async fn run(mut view: watch::Receiver<Arc<Snapshot>>, events: mpsc::UnboundedSender<Event>) {
    let (changed_tx, mut changed) = mpsc::unbounded_channel::<Vec<PathBuf>>();
    let mut watcher =
        match notify::recommended_watcher(move |result: notify::Result<notify::Event>| {
            if let Ok(event) = result {
                let _ = changed_tx.send(event.paths);
            }
        }) {
            Ok(w) => w,
            Err(e) => {
                tracing::error!("cannot watch the config files: {e}");
                return;
            }
        };
    let mut watched: BTreeSet<PathBuf> = BTreeSet::new();
    let mut files: Vec<PathBuf> = Vec::new();
    // What the files held when they were last loaded, or last acted on.
    let mut acted: Vec<Vec<u8>> = Vec::new();
    let mut generation = None;
    loop {
        let (serving, config) = {
            let snapshot = view.borrow_and_update();
            (snapshot.generation, snapshot.config.clone())
        };
        // Snapshots are published for every event; only a new generation changes the
        // files to watch and what they are compared with.
        if generation != Some(serving) {
            generation = Some(serving);
            let wanted: BTreeSet<PathBuf> = if config.gateway.watch {
                config
                    .files()
                    .iter()
                    .filter_map(|f| f.parent().map(Path::to_path_buf))
                    .collect()
            } else {
                BTreeSet::new()
            };
            for dir in watched.difference(&wanted) {
                let _ = watcher.unwatch(dir);
            }
            for dir in wanted.difference(&watched) {
                if let Err(e) = watcher.watch(dir, notify::RecursiveMode::NonRecursive) {
                    tracing::warn!("cannot watch {}: {e}", dir.display());
                }
            }
            if config.gateway.watch && watched.is_empty() {
                tracing::info!("watching {} for changes", config.path.display());
            }
            watched = wanted;
            files = config.files();
            acted = fingerprint(&files);
        }
        tokio::select! {
            changed_view = view.changed() => {
                if changed_view.is_err() {
                    return;
                }
            }
            Some(paths) = changed.recv() => {
                // Other files in the same directories (an access log, the control socket)
                // are no change.
                if !paths.iter().any(|p| concerns(p, &files)) {
                    continue;
                }
                // Let a burst (write, rename, chmod…) settle, for at most MAX_SETTLE.
                let deadline = tokio::time::Instant::now() + MAX_SETTLE;
                while let Ok(next) = tokio::time::timeout(SETTLE, changed.recv()).await {
                    if next.is_none() {
                        return;
                    }
                    if tokio::time::Instant::now() >= deadline {
                        break;
                    }
                }
                let now = fingerprint(&files);
                if !watched.is_empty() && now != acted {
                    // Remembered whether or not the reload works: a broken edit is tried
                    // once, and the next edit is tried again.
                    acted = now;
                    tracing::info!("{} or a file it names changed: reloading", config.path.display());
                    if events.send(Event::Signal(Signal::Reload)).is_err() {
                        return;
                    }
                }
            }
        }
    }
}

/// Whether an event on `path` may change one of `files`: the file itself, or one of the
/// `..`-named entries through which a Kubernetes ConfigMap swaps its files at once.
fn concerns(path: &Path, files: &[PathBuf]) -> bool {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    name.starts_with("..") || files.iter().any(|f| f.file_name() == path.file_name())
}

/// The contents of `files` (a missing file reads as empty).
fn fingerprint(files: &[PathBuf]) -> Vec<Vec<u8>> {
    files
        .iter()
        .map(|f| std::fs::read(f).unwrap_or_default())
        .collect()
}
