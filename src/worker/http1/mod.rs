//! The HTTP/1.1 front end: one client connection, from its first byte to its close.
//!
//! Owned here rather than left to hyper's server for memory: an idle keep-alive
//! connection holds no buffer, only its socket and a readiness wait (hyper keeps an 8 KB
//! read buffer and a box sized for the whole proxy future on every connection). A
//! request head is read into a buffer from a per-worker pool, parsed with httparse
//! (`head`), checked, and handed to the proxy; its body is decoded as it arrives
//! (`decode`) and passed on through a one-frame channel, so a client uploading faster
//! than the upstream takes costs one frame; the response is written with its framing
//! (`response`) one frame at a time. The connection then waits for the next request,
//! or serves the pipelined one already read.
//!
//! ```text
//! wait readable (no buffer) ─► buffer from pool ─► read head ─► parse ─► proxy.handle
//!     ▲                                                   body: decode ─► channel ─┘
//!     └── keep-alive ◄── write response (head + first frame in one write) ◄──┘
//! ```

pub mod date;
pub mod head;
pub mod response;

use super::websocket;
use super::DRAINING;
use crate::proxy::body::{BodyEvent, ClientBodyError, RequestBody};
use crate::proxy::{ConnInfo, Proxy, Tunnel};
use crate::wire::decode::{BodyDecoder, Step};
use crate::wire::Framing;
use bytes::{Buf, BytesMut};
use head::RequestHead;
use http::{Request, StatusCode};
use response::RequestFacts;
use std::cell::RefCell;
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How long a draining worker keeps an idle keep-alive connection open for a request that
/// may already be on its way.
pub const DRAIN_GRACE: Duration = Duration::from_secs(1);
/// What a head is first read into; grows up to the head limit when needed.
const HEAD_BUFFER: usize = 8 * 1024;
/// Request body bytes read from the client at a time.
const BODY_READ: usize = 16 * 1024;
/// Buffers kept by the per-worker pool.
const POOLED_BUFFERS: usize = 64;
/// After an error, how long the gateway keeps reading (and discarding) what the client
/// still sends, so that closing does not reset the connection under the answer.
const LINGER: Duration = Duration::from_secs(1);
const LINGER_BYTES: usize = 256 * 1024;

/// A client connection as the engine needs it: a byte stream that can say when it has
/// something to read without a buffer being handed to it, and without a waiter node of
/// its own (the socket's reader slot holds the waker).
pub trait ClientIo: AsyncRead + AsyncWrite + Unpin + Send + response::ResponseOut {
    fn poll_readable(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>>;
}

impl ClientIo for tokio::net::TcpStream {
    fn poll_readable(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.poll_read_ready(cx)
    }
}

impl ClientIo for tokio_rustls::server::TlsStream<tokio::net::TcpStream> {
    fn poll_readable(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let (tcp, tls) = self.get_mut();
        // Plaintext rustls already decrypted is readable now, whatever the socket says.
        match tls.process_new_packets() {
            Ok(state) if state.plaintext_bytes_to_read() == 0 => tcp.poll_read_ready(cx),
            _ => Poll::Ready(Ok(())),
        }
    }
}

fn readable<S: ClientIo>(io: &mut S) -> impl Future<Output = std::io::Result<()>> + '_ {
    std::future::poll_fn(|cx| io.poll_readable(cx))
}

thread_local! {
    /// The worker's head buffers (one runtime thread per worker: no locking).
    static BUFFERS: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
}

fn take_buffer() -> BytesMut {
    BUFFERS
        .with(|b| b.borrow_mut().pop())
        .unwrap_or_else(|| BytesMut::with_capacity(HEAD_BUFFER))
}

/// Returns an emptied buffer to the pool if it is still a plain head buffer.
fn give_back(mut buf: BytesMut) {
    if buf.capacity() == 0 {
        // A placeholder (the buffer itself went back earlier): reserving below would
        // allocate a new one.
        return;
    }
    buf.clear();
    // What was read and consumed is room again (no copy: the buffer is empty), unless a
    // part of it is still shared.
    buf.reserve(HEAD_BUFFER);
    if buf.capacity() < HEAD_BUFFER || buf.capacity() > 2 * HEAD_BUFFER {
        return;
    }
    BUFFERS.with(|b| {
        let mut pool = b.borrow_mut();
        if pool.len() < POOLED_BUFFERS {
            pool.push(buf);
        }
    });
}

/// Serves one client connection until it closes, fails, times out, or the worker drains.
///
/// Every state of this future is part of every connection's task for as long as the
/// connection lives, so only the idle wait is kept inline; a request's reading and
/// handling (and the pipelined ones after it) live in one boxed future while they last. (A plain `fn` returning an `async
/// move` block: an `async fn` would keep a second copy of its arguments in every state.)
#[allow(clippy::manual_async_fn)] // on purpose, see above
pub fn serve<S: ClientIo>(
    mut io: S,
    conn: ConnInfo,
    proxy: Arc<Proxy>,
    shutdown: CancellationToken,
) -> impl Future<Output = ()> + Send {
    async move {
        loop {
            let timeout = proxy.limits().header_read_timeout;
            let Some(deadline) = wait_for_request(&mut io, timeout, &shutdown).await else {
                return;
            };
            // Written straight into its box: `Box::pin` built the 4 KB future on the
            // stack and copied it, once per request on a keep-alive connection.
            let requests = Box::write(
                Box::new_uninit(),
                serve_requests(&mut io, deadline, &conn, &proxy),
            );
            if !Box::into_pin(requests).await {
                return;
            }
        }
    }
}

/// Serves the request whose first bytes have arrived, and those pipelined after it: true
/// once the connection is idle again, false once it is closed.
async fn serve_requests<S: ClientIo>(
    io: &mut S,
    mut deadline: Instant,
    conn: &ConnInfo,
    proxy: &Proxy,
) -> bool {
    let mut buf = take_buffer();
    loop {
        match next_request(io, buf, deadline, conn, proxy).await {
            Next::KeepAlive(rest) if rest.is_empty() => {
                give_back(rest);
                return true;
            }
            // The next request was read together with this one.
            Next::KeepAlive(rest) => {
                buf = rest;
                deadline = Instant::now() + proxy.limits().header_read_timeout;
            }
            Next::Close => {
                linger(io).await;
                return false;
            }
            Next::Closed => return false,
        }
    }
}

/// Reads the next request head (within `deadline`, the header read timeout) and serves
/// the request.
async fn next_request<S: ClientIo>(
    io: &mut S,
    mut buf: BytesMut,
    deadline: Instant,
    conn: &ConnInfo,
    proxy: &Proxy,
) -> Next {
    let limits = proxy.limits();
    let head = loop {
        let refused = match head::parse(&buf, limits) {
            Ok(Some((head, len))) => {
                buf.advance(len);
                break head;
            }
            Ok(None) => {
                if buf.capacity() - buf.len() < 1024 {
                    buf.reserve(HEAD_BUFFER);
                }
                match tokio::time::timeout_at(deadline, io.read_buf(&mut buf)).await {
                    Ok(Ok(n)) if n > 0 => continue,
                    // Too slow (slowloris) with part of a head sent: told so, as HAProxy
                    // does.
                    Err(_) if !buf.is_empty() => (
                        StatusCode::REQUEST_TIMEOUT,
                        "request head not complete within header_read_timeout",
                    ),
                    // Closed or failed, or nothing sent: nothing to answer.
                    _ => return Next::Closed,
                }
            }
            Err(rejected) => (rejected.status, rejected.reason),
        };
        // One write for every refusal (one await point in this future, not one each).
        tracing::debug!(client = %conn.client, "request refused: {}", refused.1);
        return refuse(io, refused.0).await;
    };
    serve_request(io, head, buf, conn, proxy).await
}

/// Waits, holding no buffer, until the client sends something, and gives the deadline of
/// its request head (`timeout` from the start of the wait); `None` if nothing comes
/// before then, or the client closes. A draining worker gives an idle connection
/// DRAIN_GRACE for a request that may already be on its way.
/// (Not an `async fn`, which would keep its arguments twice in every idle connection.)
#[allow(clippy::manual_async_fn)] // on purpose, see above
fn wait_for_request<'a, S: ClientIo>(
    io: &'a mut S,
    timeout: Duration,
    shutdown: &'a CancellationToken,
) -> impl Future<Output = Option<Instant>> + Send + 'a {
    async move {
        let deadline = Instant::now() + timeout;
        let drained = tokio::select! {
            ready = readable(io) => return ready.ok().map(|()| deadline),
            _ = tokio::time::sleep_until(deadline) => return None,
            _ = shutdown.cancelled() => true,
        };
        // Boxed, as every state of this future is part of every idle connection's task.
        let ready = drained
            && Box::pin(async {
                matches!(
                    tokio::time::timeout(DRAIN_GRACE, readable(io)).await,
                    Ok(Ok(()))
                )
            })
            .await;
        ready.then_some(deadline)
    }
}

enum Next {
    /// Serve the next request; the buffer holds what was read of it already.
    KeepAlive(BytesMut),
    /// Close after letting the client's remaining input drain.
    Close,
    /// Already closed (or handed over to a tunnel that ended).
    Closed,
}

/// One request and its response.
async fn serve_request<S: ClientIo>(
    io: &mut S,
    head: RequestHead,
    mut buf: BytesMut,
    conn: &ConnInfo,
    proxy: &Proxy,
) -> Next {
    proxy.counters.requests.fetch_add(1, Ordering::Relaxed);
    if head.framing != Framing::Empty {
        // On the heap of its own: reading a body while the request is proxied and the
        // response written makes a future twice the size of a bodiless request, and
        // most requests have no body.
        return Box::pin(serve_request_with_body(io, head, buf, conn, proxy)).await;
    }
    let facts = facts_of(&head);
    // Unless a pipelined request follows, the head buffer goes back to the pool while the
    // request is proxied: a long response to a slow reader, a long poll or a WebSocket
    // must not hold it.
    if buf.is_empty() {
        give_back(std::mem::take(&mut buf));
    }
    let request = Request::from_parts(head.parts, RequestBody::empty());
    let (response, tunnel) = proxy.handle(request, conn).await;
    let upgrade = response.status() == StatusCode::SWITCHING_PROTOCOLS;
    let written = response::write(io, response, &facts(false)).await;
    match (written, tunnel) {
        (Ok(_), Some(tunnel)) if upgrade => {
            // On the heap of its own: a relay is rare, and its state would otherwise be
            // part of every request's future.
            Box::pin(relay(io, buf, tunnel)).await;
            Next::Closed
        }
        (Ok(w), _) if !w.close => Next::KeepAlive(buf),
        (Ok(_), _) => Next::Close,
        (Err(_), _) => Next::Closed,
    }
}

/// What the response's framing needs to know of the request, taken before the head is
/// handed to the proxy: `facts(closing)` for a response that closes the connection or not.
fn facts_of(head: &RequestHead) -> impl Fn(bool) -> RequestFacts {
    let (method, version, keep_alive) = (
        head.parts.method.clone(),
        head.parts.version,
        head.keep_alive,
    );
    move |closing| RequestFacts {
        method: method.clone(),
        version,
        close: closing || !keep_alive || DRAINING.load(Ordering::Relaxed),
    }
}

/// A request with a body: the body is read as the upstream takes it, also while the
/// response is written.
async fn serve_request_with_body<S: ClientIo>(
    io: &mut S,
    head: RequestHead,
    mut buf: BytesMut,
    conn: &ConnInfo,
    proxy: &Proxy,
) -> Next {
    let facts = facts_of(&head);
    let limits = proxy.limits();
    // A client that waits for `100 Continue` sends no chunk before the upstream asks.
    if head.framing == Framing::Chunked && !head.expect_continue {
        if let Err(next) = check_first_chunk(io, &mut buf, limits.client_body_timeout).await {
            return next;
        }
    }
    let (frames, receiver) = mpsc::channel(1);
    let (wanted, wanted_rx) = oneshot::channel();
    let length = match head.framing {
        Framing::Length(n) => Some(n),
        _ => None,
    };
    let body = RequestBody::channel(receiver, wanted, length, limits.client_body_timeout);
    let mut continue_wanted = head.expect_continue.then_some(wanted_rx);
    let request = Request::from_parts(head.parts, body);

    let (mut read_half, mut write_half) = tokio::io::split(&mut *io);
    let outcome = {
        let pump = pump_body(&mut read_half, &mut buf, head.framing, frames);
        tokio::pin!(pump);
        let mut pumped: Option<bool> = None;
        let handling = proxy.handle(request, conn);
        tokio::pin!(handling);
        // Until the response: read the body as the upstream takes it, and say
        // `100 Continue` when it first asks for it.
        let (response, _tunnel) = loop {
            tokio::select! {
                // The body's end first: a body read whole by the time the answer comes
                // leaves the connection open.
                biased;
                complete = &mut pump, if pumped.is_none() => pumped = Some(complete),
                answer = &mut handling => break answer,
                asked = async { continue_wanted.as_mut().expect("guarded").await }, if continue_wanted.is_some() => {
                    continue_wanted = None;
                    if asked.is_ok() && write_half.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await.is_err() {
                        return Next::Closed;
                    }
                }
            }
        };
        // The response goes out while the rest of the body still comes in (an upstream
        // may answer as it reads). A body not read whole by now may never be (a 503
        // before any of it was wanted): the answer says `Connection: close`, so the
        // client does not send its next request on a connection about to close.
        let closing = pumped != Some(true);
        let facts = facts(closing);
        let writing = response::write(&mut write_half, response, &facts);
        tokio::pin!(writing);
        let written = loop {
            tokio::select! {
                written = &mut writing => break written,
                complete = &mut pump, if pumped.is_none() => pumped = Some(complete),
            }
        };
        match written {
            Err(_) => None,
            // A body not read to its end leaves the connection without a next request.
            Ok(w) => Some(!w.close && pumped == Some(true)),
        }
    };
    drop((read_half, write_half));
    match outcome {
        None => Next::Closed,
        Some(true) => Next::KeepAlive(buf),
        Some(false) => Next::Close,
    }
}

/// Reads until the first chunk-size line of a chunked body is whole, and checks it: a
/// body broken from its first line gets `400` before its head goes upstream (a client
/// silent for `timeout` gets `408`). Errors further into the body abort the request.
async fn check_first_chunk<S: ClientIo>(
    io: &mut S,
    buf: &mut BytesMut,
    timeout: Duration,
) -> Result<(), Next> {
    loop {
        let refused = match crate::wire::decode::first_chunk_line(buf) {
            Ok(true) => return Ok(()),
            Ok(false) => {
                buf.reserve(BODY_READ);
                match tokio::time::timeout(timeout, io.read_buf(buf)).await {
                    Ok(Ok(n)) if n > 0 => continue,
                    Ok(_) => return Err(Next::Closed),
                    Err(_) => (StatusCode::REQUEST_TIMEOUT, "client sent no body data"),
                }
            }
            Err(why) => (StatusCode::BAD_REQUEST, why),
        };
        tracing::debug!("request refused: {}", refused.1);
        return Err(refuse(io, refused.0).await);
    }
}

/// Reads and decodes the request body, passing each frame on as the upstream takes it.
/// True when the body was read to its end (the buffer then holds what follows it).
async fn pump_body<R: AsyncRead + Unpin>(
    read: &mut R,
    buf: &mut BytesMut,
    framing: Framing,
    frames: mpsc::Sender<BodyEvent>,
) -> bool {
    let mut decoder = BodyDecoder::new(framing);
    let broken = |why: String| BodyEvent::Error(ClientBodyError::Broken(why));
    loop {
        match decoder.step(buf) {
            Ok(Step::Frame(frame)) => {
                if frames.send(BodyEvent::Frame(frame)).await.is_err() {
                    // The upstream exchange is over; the rest of the body is not wanted.
                    return decoder.is_done();
                }
            }
            Ok(Step::End) => {
                let _ = frames.send(BodyEvent::End).await;
                return true;
            }
            Ok(Step::NeedMore) => {
                buf.reserve(BODY_READ);
                match read.read_buf(buf).await {
                    Ok(n) if n > 0 => {}
                    Ok(_) => {
                        let _ = frames
                            .send(broken(
                                "client closed the connection in the middle of the body".into(),
                            ))
                            .await;
                        return false;
                    }
                    Err(e) => {
                        let _ = frames.send(broken(e.to_string())).await;
                        return false;
                    }
                }
            }
            Err(why) => {
                let _ = frames
                    .send(broken(format!("bad body framing: {why}")))
                    .await;
                return false;
            }
        }
    }
}

/// Relays a WebSocket both ways once the upstream switched protocols. Bytes the client
/// sent right after its request (the first frames) go first.
async fn relay<S: ClientIo>(io: &mut S, early: BytesMut, tunnel: Tunnel) {
    let Tunnel {
        upstream,
        early: from_upstream,
        lease,
    } = tunnel;
    websocket::relay(io, upstream, &from_upstream, &early).await;
    drop(lease);
}

/// Answers a request that never became one with [`plain_response`]; the connection
/// closes after it.
async fn refuse<S: ClientIo>(io: &mut S, status: StatusCode) -> Next {
    match io.write_all(&plain_response(status)).await {
        Ok(()) => Next::Close,
        Err(_) => Next::Closed,
    }
}

/// A short answer of the engine's own, for a request that never became one: the body
/// every answer of the gateway's own has, on the wire by hand.
fn plain_response(status: StatusCode) -> Vec<u8> {
    let body = crate::proxy::answer::status_text(status);
    let mut out = response::status_line(status).to_vec();
    out.extend_from_slice(
        format!(
            "content-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\ndate: {}\r\n\r\n{body}",
            body.len(),
            date::now().to_str().unwrap_or_default()
        )
        .as_bytes(),
    );
    out
}

/// Closes the way nginx's lingering close does: our side first, then what the client
/// still sends is read and dropped for a moment, so its unread input does not make the
/// kernel reset the connection before the client has read our answer.
async fn linger<S: ClientIo>(io: &mut S) {
    if io.shutdown().await.is_err() {
        return;
    }
    // On the heap rather than in this future (part of every request future).
    let mut sink = vec![0u8; 4096];
    let mut drained = 0;
    let _ = tokio::time::timeout(LINGER, async {
        while drained < LINGER_BYTES {
            match io.read(&mut sink).await {
                Ok(n) if n > 0 => drained += n,
                _ => return,
            }
        }
    })
    .await;
}
