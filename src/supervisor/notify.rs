//! systemd's readiness protocol (`sd_notify`): with `Type=notify`, systemd learns when the
//! gateway serves, and after an `upgrade` which process is its main one now (the new
//! supervisor, before the old one exits), so the service is not taken for stopped.

use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};

/// Sends `state` (lines like `READY=1`) to `$NOTIFY_SOCKET`; nothing without one.
pub fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let sent = UnixDatagram::unbound().and_then(|socket| {
        // "@name" is an abstract socket.
        let addr = match path.as_bytes().strip_prefix(b"@") {
            Some(name) => SocketAddr::from_abstract_name(name)?,
            None => SocketAddr::from_pathname(&path)?,
        };
        socket.send_to_addr(state.as_bytes(), &addr)
    });
    if let Err(e) = sent {
        tracing::warn!("cannot tell systemd {state:?}: {e}");
    }
}
