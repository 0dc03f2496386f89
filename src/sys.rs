//! The one module with `unsafe` code: taking ownership of file descriptors a worker
//! inherits from its supervisor.

use std::net::TcpListener;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// Lets `listener` be inherited by the processes this one starts (clears FD_CLOEXEC).
pub fn inheritable(listener: &TcpListener) -> std::io::Result<RawFd> {
    socket2::SockRef::from(listener).set_cloexec(false)?;
    Ok(listener.as_raw_fd())
}

/// Adopts a listening socket inherited under the number `fd`, after checking that it is
/// an open TCP socket in the listening state.
pub fn adopt_listener(fd: RawFd) -> std::io::Result<TcpListener> {
    if fd < 3 {
        return Err(std::io::Error::other(format!(
            "fd {fd} is a standard stream, not a listener"
        )));
    }
    // SAFETY: `fcntl(F_GETFD)` only reads the descriptor flags; it is valid on any number
    // and fails with EBADF if `fd` is not open.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is open (checked above) and was handed to this process by the
    // supervisor on its command line for this purpose alone; nothing else in this process
    // has taken ownership of it, and it is adopted once.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let socket = socket2::Socket::from(owned);
    if socket.r#type()? != socket2::Type::STREAM || !socket.is_listener()? {
        return Err(std::io::Error::other(format!(
            "fd {fd} is not a listening TCP socket"
        )));
    }
    socket.set_cloexec(true)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}
