//! The one module with `unsafe` code: taking ownership of file descriptors a worker
//! inherits from its supervisor, mapping the shared table, the machine-wide clock, and
//! the process calls app instances need (dying with the supervisor, no inherited
//! descriptors, signalling a group).

use crate::table::layout::TableMemory;
use std::fs::File;
use std::net::TcpListener;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// Lets `listener` be inherited by the processes this one starts (clears FD_CLOEXEC).
pub fn inheritable(listener: &TcpListener) -> std::io::Result<RawFd> {
    socket2::SockRef::from(listener).set_cloexec(false)?;
    Ok(listener.as_raw_fd())
}

/// Takes ownership of the descriptor inherited under the number `fd`, handed to this
/// process (on its command line, or in an upgrade's handover) to be `what`, after
/// checking that it is open and not a standard stream.
fn adopt_fd(fd: RawFd, what: &str) -> std::io::Result<OwnedFd> {
    if fd < 3 {
        return Err(std::io::Error::other(format!(
            "fd {fd} is a standard stream, not {what}"
        )));
    }
    // SAFETY: `fcntl(F_GETFD)` only reads the descriptor flags; it is valid on any number
    // and fails with EBADF if `fd` is not open.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is open (checked above) and was handed to this process for this purpose
    // alone; nothing else in this process has taken ownership of it, and each number is
    // adopted once.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A socket adopted with [`adopt_fd`], kept from the programs this process starts.
fn adopt_socket(fd: RawFd, what: &str) -> std::io::Result<socket2::Socket> {
    let socket = socket2::Socket::from(adopt_fd(fd, what)?);
    socket.set_cloexec(true)?;
    Ok(socket)
}

/// Adopts a listening socket inherited under the number `fd`, after checking that it is
/// an open TCP socket in the listening state.
pub fn adopt_listener(fd: RawFd) -> std::io::Result<TcpListener> {
    let socket = adopt_socket(fd, "a listener")?;
    if socket.r#type()? != socket2::Type::STREAM || !socket.is_listener()? {
        return Err(std::io::Error::other(format!(
            "fd {fd} is not a listening TCP socket"
        )));
    }
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// Adopts a Unix listening socket inherited under the number `fd` (the control socket,
/// from the supervisor an upgrade replaces).
pub fn adopt_unix_listener(fd: RawFd) -> std::io::Result<std::os::unix::net::UnixListener> {
    let socket = adopt_socket(fd, "the control socket")?;
    if socket.domain()? != socket2::Domain::UNIX || !socket.is_listener()? {
        return Err(std::io::Error::other(format!(
            "fd {fd} is not a listening Unix socket"
        )));
    }
    socket.set_nonblocking(true)?;
    Ok(OwnedFd::from(socket).into())
}

/// Adopts the end of a socket pair inherited under the number `fd` (the channel to the
/// supervisor an upgrade replaces).
pub fn adopt_stream(fd: RawFd) -> std::io::Result<std::os::unix::net::UnixStream> {
    Ok(OwnedFd::from(adopt_socket(fd, "a channel")?).into())
}

/// Sets (`true`) or clears FD_CLOEXEC on `fd`, a descriptor this process holds open: a
/// cleared one is inherited by the next program this process starts.
pub fn set_cloexec(fd: RawFd, on: bool) -> std::io::Result<()> {
    // SAFETY: F_GETFD only reads the descriptor's flags; it fails with EBADF on a closed fd.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    if flags < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let flags = if on {
        flags | libc::FD_CLOEXEC
    } else {
        flags & !libc::FD_CLOEXEC
    };
    // SAFETY: F_SETFD only writes the flags of the same open descriptor.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, flags) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Seconds since the epoch, by the wall clock: certificates' validity, cached
/// responses' ages.
pub fn unix_seconds() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Milliseconds on CLOCK_MONOTONIC: one clock for every process on the machine, so a
/// deadline one worker writes into the shared table means the same to the others.
pub fn monotonic_ms() -> u64 {
    monotonic_us() / 1000
}

/// Microseconds on the machine's monotonic clock: the same in every process.
pub fn monotonic_us() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into `now`, which is valid and borrowed
    // exclusively for the call; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    now.tv_sec as u64 * 1_000_000 + now.tv_nsec as u64 / 1000
}

/// Creates a zero-filled in-memory file of `len` bytes for the shared table. It is
/// created without FD_CLOEXEC: the worker processes the supervisor starts inherit it
/// (they are the only processes it starts).
pub fn shared_memory_file(len: usize) -> std::io::Result<File> {
    // SAFETY: the name is a NUL-terminated literal that memfd_create only reads.
    let fd = unsafe { libc::memfd_create(c"gateway-table".as_ptr(), 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: memfd_create just returned `fd`: it is open and owned by nothing else.
    let file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    file.set_len(len as u64)?;
    Ok(file)
}

/// Adopts the shared table's file inherited under the number `fd`.
pub fn adopt_shared_memory_file(fd: RawFd) -> std::io::Result<File> {
    Ok(File::from(adopt_fd(fd, "the shared table")?))
}

/// Maps `file` read-write and shared, for the rest of the process's life, and views it as
/// the shared table.
pub fn map_table(file: &File) -> std::io::Result<&'static TableMemory> {
    let len = std::mem::size_of::<TableMemory>();
    if file.metadata()?.len() < len as u64 {
        return Err(std::io::Error::other(
            "the shared table file is smaller than the table",
        ));
    }
    // SAFETY: a fresh mapping chosen by the kernel (null hint) of `len` bytes of an open
    // file at least that long; it aliases no Rust object.
    let address = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            file.as_raw_fd(),
            0,
        )
    };
    if address == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error());
    }
    debug_assert_eq!(address as usize % std::mem::align_of::<TableMemory>(), 0);
    // SAFETY: the mapping is page-aligned (more than TableMemory's alignment), `len` bytes
    // long and never unmapped, so a 'static shared reference is sound. TableMemory is made
    // only of atomics (arrays of them), for which every bit pattern, zero-filled memory
    // included, is a valid value, and which other processes may change concurrently: all
    // access goes through atomic operations, which work across processes on shared pages.
    Ok(unsafe { &*(address as *const TableMemory) })
}

/// Gives the memory the allocator holds free back to the kernel. glibc keeps freed heap
/// memory for reuse: after a burst of thousands of connections closes, a worker would
/// hold its peak RSS for ever.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks and trims the allocator's own free lists; it takes
    // the allocator's locks itself and touches no memory the program owns.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Opens `relative` under the directory `dir` for reading, the kernel refusing any
/// resolution that leaves `dir`: `..`, an absolute path, or a symbolic link pointing out
/// (openat2 with RESOLVE_BENEATH, Linux 5.6). `ENOSYS` on older kernels: the caller then
/// checks containment itself.
pub fn open_beneath(dir: &File, relative: &std::path::Path) -> std::io::Result<File> {
    use std::os::unix::ffi::OsStrExt;
    let name = std::ffi::CString::new(relative.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    /// The kernel's `struct open_how` (libc's is not constructible).
    #[repr(C)]
    struct OpenHow {
        flags: u64,
        mode: u64,
        resolve: u64,
    }
    let how = OpenHow {
        flags: (libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NOCTTY) as u64,
        mode: 0,
        resolve: libc::RESOLVE_BENEATH | libc::RESOLVE_NO_MAGICLINKS,
    };
    // SAFETY: openat2 reads the NUL-terminated `name` and the `how` struct of the size
    // given, both borrowed for the call; `dir` is an open directory descriptor we own.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir.as_raw_fd(),
            name.as_ptr(),
            &how as *const OpenHow,
            std::mem::size_of::<OpenHow>(),
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: openat2 just returned `fd`: it is open and owned by nothing else.
    Ok(File::from(unsafe { OwnedFd::from_raw_fd(fd as RawFd) }))
}

/// Sends up to `count` bytes of `file` from `*offset` on the socket `out` without copying
/// them through this process (sendfile(2)), and moves `*offset` past what went.
pub fn sendfile(out: RawFd, file: &File, offset: &mut u64, count: usize) -> std::io::Result<usize> {
    let mut off = *offset as libc::off_t;
    // SAFETY: both descriptors are open for the call (`file` is borrowed, `out` is the
    // caller's socket); sendfile reads and writes only the `off` it is given.
    let sent = unsafe { libc::sendfile(out, file.as_raw_fd(), &mut off, count) };
    if sent < 0 {
        return Err(std::io::Error::last_os_error());
    }
    *offset = off as u64;
    Ok(sent as usize)
}

/// Makes the child `command` starts get `SIGKILL` when this process dies, so an app
/// instance is never left behind by a supervisor that was killed (the signal follows the
/// thread that forks: the supervisor forks from its one runtime thread); and keeps every
/// descriptor but stdin, stdout and stderr from it: the shared table, the control socket
/// and anything else the supervisor holds open are not the app's.
pub fn app_process(command: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: the closure runs in the child between fork and exec, where only
    // async-signal-safe calls are allowed: prctl, getppid, kill, syscall(close_range) and
    // fcntl are, and it touches no memory but the `parent` it copied.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent died before the prctl: nothing will send the signal.
            if libc::getppid() != parent {
                libc::kill(libc::getpid(), libc::SIGKILL);
            }
            // Close-on-exec rather than closed: the pipe that reports a failed exec to
            // the parent stays usable until the exec.
            let marked = libc::syscall(
                libc::SYS_close_range,
                3u32,
                u32::MAX,
                libc::CLOSE_RANGE_CLOEXEC,
            );
            if marked != 0 {
                // Before Linux 5.11: one descriptor at a time.
                for fd in 3..65_536 {
                    libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
                }
            }
            Ok(())
        });
    }
}

/// Sends `signal` to every process of the group `pgid` (an app instance and what it
/// started). A group that is gone is no error.
pub fn signal_group(pgid: u32, signal: libc::c_int) {
    // SAFETY: kill only sends a signal; a negative pid names the process group.
    unsafe {
        libc::kill(-(pgid as libc::pid_t), signal);
    }
}
