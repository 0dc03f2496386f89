//! Keep-alive connections to one upstream server, our own small pool over hyper's
//! `client::conn::http1`: a stack of idle senders, newest first, so the warmest
//! connection is reused and the oldest ones age out.

use hyper::body::Body;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use std::io::IoSlice;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// A connection's sending half; `B` is the request body type.
pub type Sender<B> = http1::SendRequest<B>;

/// Idle connections, newest last. An idle connection is kept at most `idle_timeout`
/// (`upstream.idle_timeout`, 4 s by default: below the 5 s keep-alive of Node.js servers,
/// so we do not reuse a connection the server is closing at that very moment).
pub struct Pool<B> {
    idle: Mutex<Vec<(Sender<B>, Instant)>>,
    max_idle: usize,
    idle_timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connect to {0} timed out")]
    Timeout(SocketAddr),
    #[error("connect to {0} failed: {1}")]
    Io(SocketAddr, std::io::Error),
    #[error("HTTP handshake with {0} failed: {1}")]
    Handshake(SocketAddr, hyper::Error),
}

impl ConnectError {
    /// The gateway itself is out of a resource (file descriptors, memory, local ports):
    /// says nothing about the server, so it must not count against it.
    pub fn is_local(&self) -> bool {
        let ConnectError::Io(_, e) = self else {
            return false;
        };
        matches!(
            e.raw_os_error(),
            Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM | libc::EADDRNOTAVAIL)
        )
    }
}

impl<B> Pool<B> {
    pub fn new(max_idle: usize, idle_timeout: Duration) -> Self {
        Pool {
            idle: Mutex::new(Vec::with_capacity(max_idle)),
            max_idle,
            idle_timeout,
        }
    }

    /// The newest idle connection that is still open, if any.
    pub fn take(&self) -> Option<Sender<B>> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        while let Some((sender, since)) = idle.pop() {
            if now.duration_since(since) >= self.idle_timeout {
                // Everything below is older still.
                idle.clear();
                return None;
            }
            if !sender.is_closed() {
                return Some(sender);
            }
        }
        None
    }

    /// Keeps a connection whose last exchange completed, if there is room.
    pub fn put(&self, sender: Sender<B>) {
        if sender.is_closed() || self.max_idle == 0 {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() >= self.max_idle {
            idle.remove(0);
        }
        idle.push((sender, Instant::now()));
    }
}

/// Opens a new connection and starts its driver task on the current runtime.
///
/// The server is read `read_size` bytes at a time, never more (hyper's exact read
/// strategy), and a response head must fit in one read. hyper hands each read on as a
/// body chunk and reads the next one as soon as the chunk has been taken, so a response
/// going to a client that does not read holds at most three reads in memory: the one
/// being written to the client, the one waiting to be taken, and the buffer the next
/// read goes into.
pub async fn connect<B>(
    addr: SocketAddr,
    timeout: Duration,
    read_size: usize,
) -> Result<Sender<B>, ConnectError>
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stream = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Err(_) => return Err(ConnectError::Timeout(addr)),
        Ok(Err(e)) => return Err(ConnectError::Io(addr, e)),
        Ok(Ok(s)) => s,
    };
    let _ = stream.set_nodelay(true);
    let (sender, conn) = http1::Builder::new()
        .read_buf_exact_size(Some(read_size))
        .handshake(TokioIo::new(UpstreamIo(stream)))
        .await
        .map_err(|e| ConnectError::Handshake(addr, e))?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!("upstream connection to {addr} ended: {e}");
        }
    });
    Ok(sender)
}

/// The upstream socket as hyper sees it, written as the client side is
/// ([`crate::net::poll_write_gathered`]): a request head without a body, most requests,
/// goes out with a plain `write`; a head and body chunks stay one vectored write. (hyper's own
/// flattening would do the first, but copies body chunks into a buffer that keeps its
/// largest size, up to ~400 KiB, for as long as the pooled connection lives.)
struct UpstreamIo(TcpStream);

impl AsyncRead for UpstreamIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl AsyncWrite for UpstreamIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        crate::net::poll_write_gathered(Pin::new(&mut self.get_mut().0), cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}
