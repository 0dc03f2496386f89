//! Listening sockets, bound the way every worker can share them, and the way both sides
//! of the proxy write to a socket.

use socket2::{Domain, Protocol, Socket, Type};
use std::io::IoSlice;
use std::net::{SocketAddr, TcpListener};
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::AsyncWrite;

/// Writes `bufs` to `io` in one system call: a single non-empty buffer with a plain
/// `write`, which costs the kernel less than a one-element `writev`, several with one
/// vectored write.
pub fn poll_write_gathered<W: AsyncWrite + ?Sized>(
    io: Pin<&mut W>,
    cx: &mut Context<'_>,
    bufs: &[IoSlice<'_>],
) -> Poll<std::io::Result<usize>> {
    let mut filled = bufs.iter().filter(|b| !b.is_empty());
    match (filled.next(), filled.next()) {
        (Some(only), None) => io.poll_write(cx, only),
        _ => io.poll_write_vectored(cx, bufs),
    }
}

/// Binds `addr` with SO_REUSEADDR and SO_REUSEPORT (so several workers, and a new
/// generation beside an old one, can listen on the same port), non-blocking.
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    Ok(socket.into())
}

/// Fails with `AddrInUse` if another socket already listens on `addr`. SO_REUSEPORT lets
/// a second gateway (of the same user) bind beside a running one and silently take a
/// share of its connections; a probe bound *without* SO_REUSEPORT cannot share, so its
/// failure tells that somebody else is there. Port 0 is always free.
pub fn ensure_free(addr: SocketAddr) -> std::io::Result<()> {
    if addr.port() == 0 {
        return Ok(());
    }
    let probe = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    // Connections of an earlier run still in TIME_WAIT do not count.
    probe.set_reuse_address(true)?;
    if addr.is_ipv6() {
        probe.set_only_v6(true)?;
    }
    match probe.bind(&addr.into()) {
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Err(std::io::Error::new(
            std::io::ErrorKind::AddrInUse,
            "another process already listens on it",
        )),
        other => other,
    }
}
