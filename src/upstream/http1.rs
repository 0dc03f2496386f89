//! The upstream side of our HTTP/1 engine: a keep-alive connection to one server, a
//! request written on it (its head in one write, its body streamed with its framing),
//! and the response read back with httparse, its body decoded only as fast as the client
//! takes it.
//!
//! Owned rather than left to hyper's client for CPU: an exchange runs inside the client
//! connection's own future, where hyper's client runs a task per connection and passes
//! every request and response between the two through channels; and an idle pooled
//! connection is only its socket and read buffer, watched by the runtime without a task.
//!
//! ```text
//! send: write head ─► [write body frames] ─► read head (skip 1xx) ─► Response
//!       body: read ─► decode (Content-Length, chunked, until close) ─► frames
//!       complete and kept alive ─► back to the pool     101 ─► the socket, as a tunnel
//! ```

use crate::wire::decode::{BodyDecoder, Step};
use crate::wire::{self, Framing, MAX_HEADERS};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::header::{HeaderMap, CONTENT_LENGTH};
use http::{Method, Response, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use std::future::Future;
use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{ready, Context, Poll, Waker};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// Why no connection could be had.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connect to {0} timed out")]
    Timeout(SocketAddr),
    #[error("connect to {0} failed: {1}")]
    Io(SocketAddr, io::Error),
    /// A new connection took no byte of the request.
    #[error("{0} accepted the connection but took no byte of the request: {1}")]
    NotTaken(SocketAddr, io::Error),
    /// A pooled connection and then a new one were closed before any response byte: the
    /// server is going away (killed, restarting).
    #[error("{0} closed a pooled connection and then a new one before answering: {1}")]
    Closing(SocketAddr, String),
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

/// Why an exchange that went out got no response.
#[derive(Debug)]
pub enum ExchangeError<E> {
    /// The server closed or reset the connection before a whole response head.
    Closed(String),
    /// What the server sent is not a response we can pass on.
    Invalid(String),
    /// The response head does not fit in one read.
    HeadTooLarge,
    /// The client's request body failed: its own error says how.
    RequestBody(E),
    /// The server took no byte of the request for `send_timeout`.
    SendTimeout,
    /// The server sent no response head within `read_timeout` of the request's end.
    ReadTimeout,
}

/// How long an exchange waits on the server: a slow upload is the client's pace, not
/// the server's, so no limit runs while the gateway waits for the client's body.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// Each write of the request: the server must take some of it within this.
    pub send: Duration,
    /// From the request's last byte to the response head.
    pub read: Duration,
}

/// What an exchange is waiting for, which decides the limit that runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Waiting {
    /// The server to take more of the request, after this many bytes of it.
    Server(u64),
    /// The client to send more of its body: its own `client_body_timeout` runs.
    Client,
    /// The response head, the request being out.
    Answer,
}

/// What became of a request that got no response.
pub enum SendError<B: Body> {
    /// Not a byte of it went out (the connection was already closed): it may go on
    /// another connection, with this, its body.
    NotSent(B, io::Error),
    /// It went out, at least in part, and the exchange failed.
    Failed(ExchangeError<B::Error>),
}

/// A connection to one server, idle between exchanges.
pub struct Connection {
    stream: TcpStream,
    /// What the server sent and no exchange consumed yet; empty while idle.
    buf: BytesMut,
    /// The most read from the server at a time: a slow client holds at most this much
    /// of its response in the gateway.
    read_size: usize,
}

impl Connection {
    /// Connects to `addr` within `timeout`. The server will be read `read_size` bytes at a
    /// time, never more, and a response head must fit in one read.
    pub async fn open(
        addr: SocketAddr,
        timeout: Duration,
        read_size: usize,
    ) -> Result<Self, ConnectError> {
        let stream = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
            Err(_) => return Err(ConnectError::Timeout(addr)),
            Ok(Err(e)) => return Err(ConnectError::Io(addr, e)),
            Ok(Ok(s)) => s,
        };
        let _ = stream.set_nodelay(true);
        Ok(Connection {
            stream,
            buf: BytesMut::new(),
            read_size,
        })
    }

    /// Whether an idle connection may carry a request: the server has neither closed it
    /// nor sent anything since the last response. Costs a system call only when the
    /// runtime saw the socket become readable (a close, or an event not yet cleared).
    pub fn is_usable(&mut self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        match self.stream.poll_read_ready(&mut cx) {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            Poll::Ready(Ok(())) => {
                let mut probe = [0u8; 1];
                matches!(self.stream.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
            }
        }
    }

    /// Sends a request and reads the response head. The body, if any, is sent as the
    /// server takes it, and goes on being sent while the response comes back when the
    /// server answers early (it may echo what it reads). The head is only borrowed: a
    /// request that can be sent again keeps it for the next try.
    pub async fn send<B>(
        mut self,
        request: &http::request::Parts,
        body: B,
        timeouts: Timeouts,
    ) -> Result<Response<UpstreamBody<B>>, SendError<B>>
    where
        B: Body<Data = Bytes> + Unpin,
    {
        let mut head = wire::take_head_buffer();
        let framing = encode_head(&mut head, request, &body);
        // Until a byte is written, the request is whole and may go elsewhere.
        let written = match self.stream.write(&head).await {
            Ok(n) => n,
            Err(e) => return Err(SendError::NotSent(body, e)),
        };
        let unwritten = if written == head.len() {
            wire::give_back_head_buffer(head);
            Bytes::new()
        } else {
            Bytes::from(head).slice(written..)
        };
        let head_only = request.method == Method::HEAD;
        // Most requests are a head alone, written whole: nothing more to send.
        let mut sending = (framing != Framing::Empty || !unwritten.is_empty()).then(|| {
            let mut outgoing = Box::new(Outgoing::new(body, framing));
            outgoing.queue[0] = unwritten;
            outgoing
        });
        let mut kept_alive = true;
        let mut waiting = Waiting::Answer;
        let mut last_write = tokio::time::Instant::now();
        let mut limit = std::pin::pin!(tokio::time::sleep_until(last_write + timeouts.read));
        let head = std::future::poll_fn(|cx| {
            if let Err(e) = poll_sending(&mut sending, &mut kept_alive, cx, &mut self.stream) {
                return Poll::Ready(Err(ExchangeError::RequestBody(e)));
            }
            if let Poll::Ready(head) = self.poll_head(cx) {
                return Poll::Ready(head);
            }
            let now_waiting = match &sending {
                None => Waiting::Answer,
                Some(out) if out.blocked_on_socket => Waiting::Server(out.written),
                Some(_) => Waiting::Client,
            };
            if now_waiting != waiting {
                // A change is progress: the server took bytes, or the client sent some.
                waiting = now_waiting;
                last_write = tokio::time::Instant::now();
                match waiting {
                    Waiting::Server(_) => limit.as_mut().reset(last_write + timeouts.send),
                    Waiting::Answer => limit.as_mut().reset(last_write + timeouts.read),
                    Waiting::Client => {}
                }
            }
            match waiting {
                Waiting::Client => Poll::Pending,
                Waiting::Server(_) => limit
                    .as_mut()
                    .poll(cx)
                    .map(|()| Err(ExchangeError::SendTimeout)),
                Waiting::Answer => limit
                    .as_mut()
                    .poll(cx)
                    .map(|()| Err(ExchangeError::ReadTimeout)),
            }
        })
        .await
        .map_err(SendError::Failed)?;
        let waited = last_write.elapsed();

        let reading = if head.status == StatusCode::SWITCHING_PROTOCOLS {
            Reading::Upgrade
        } else {
            match response_framing(head_only, head.status, &head.headers) {
                Ok(Some(framing)) => Reading::Decoder(BodyDecoder::new(framing)),
                Ok(None) => Reading::UntilClose,
                Err(why) => return Err(SendError::Failed(ExchangeError::Invalid(why.into()))),
            }
        };
        let kept_alive = kept_alive
            && matches!(reading, Reading::Decoder(_))
            && wire::keeps_alive(head.version, &head.headers);
        let mut response = Response::new(UpstreamBody {
            conn: Some(self),
            reading,
            sending,
            kept_alive,
            waited,
        });
        *response.status_mut() = head.status;
        *response.version_mut() = head.version;
        *response.headers_mut() = head.headers;
        Ok(response)
    }

    /// Reads until a final response head (1xx other than 101 are passed over) is at the
    /// front of the buffer, and takes it from there.
    fn poll_head<E>(&mut self, cx: &mut Context<'_>) -> Poll<Result<Head, ExchangeError<E>>> {
        loop {
            if !self.buf.is_empty() {
                match parse_head(&self.buf) {
                    Ok(Some(head)) => {
                        self.buf.advance(head.len);
                        if head.status.is_informational()
                            && head.status != StatusCode::SWITCHING_PROTOCOLS
                        {
                            continue;
                        }
                        return Poll::Ready(Ok(head));
                    }
                    Ok(None) if self.buf.len() >= self.read_size => {
                        return Poll::Ready(Err(ExchangeError::HeadTooLarge))
                    }
                    Ok(None) => {}
                    Err(why) => return Poll::Ready(Err(ExchangeError::Invalid(why))),
                }
            }
            let before = self.buf.len();
            match ready!(self.poll_read(cx)) {
                Ok(0) if before == 0 => {
                    return Poll::Ready(Err(ExchangeError::Closed("connection closed".into())))
                }
                Ok(0) => {
                    return Poll::Ready(Err(ExchangeError::Closed(
                        "connection closed in the middle of the response head".into(),
                    )))
                }
                Ok(_) => {}
                Err(e) => return Poll::Ready(Err(ExchangeError::Closed(e.to_string()))),
            }
        }
    }

    /// One read of at most `read_size` bytes (less when part of a head is waiting).
    fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let room = self.read_size.saturating_sub(self.buf.len()).max(1);
        // Reclaims the buffer in place once the frames cut from it are gone.
        self.buf.reserve(room);
        let mut limited = (&mut self.buf).limit(room);
        tokio_util::io::poll_read_buf(Pin::new(&mut self.stream), cx, &mut limited)
    }
}

/// A parsed response head.
pub struct Head {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    /// Its length in bytes.
    pub len: usize,
}

/// The response head at the start of `buf`: `Ok(None)` while it is incomplete.
pub fn parse_head(buf: &[u8]) -> Result<Option<Head>, String> {
    // Left uninitialised, as for requests (`worker::http1::head::parse`).
    let mut slots = [const { std::mem::MaybeUninit::uninit() }; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut response,
        buf,
        &mut slots,
    ) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(e.to_string()),
    };
    let Some(status) = response.code.and_then(|c| StatusCode::from_u16(c).ok()) else {
        return Err("invalid status code".into());
    };
    let version = match response.version {
        Some(0) => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    let map = wire::response_map(response.headers.len());
    let headers = wire::field_map(buf, len, response.headers, map)?;
    Ok(Some(Head {
        status,
        version,
        headers,
        len,
    }))
}

/// Where the response body ends (RFC 9112 §6.3): `None` when only the end of the
/// connection ends it.
pub fn response_framing(
    head_request: bool,
    status: StatusCode,
    headers: &HeaderMap,
) -> Result<Option<Framing>, &'static str> {
    if head_request
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Ok(Some(Framing::Empty));
    }
    if headers.contains_key(http::header::TRANSFER_ENCODING) {
        if headers.contains_key(CONTENT_LENGTH) {
            return Err("both Content-Length and Transfer-Encoding");
        }
        return Ok(wire::chunked_is_last(headers).then_some(Framing::Chunked));
    }
    Ok(wire::content_length(headers)?.map(Framing::Length))
}

/// Writes the request line and headers into `head` (emptied first), and says how the
/// body goes: as it is when the request says its length, else chunked. The headers are
/// the proxy's rewrite of the client's, the hop-by-hop ones gone.
fn encode_head<B: Body>(head: &mut Vec<u8>, request: &http::request::Parts, body: &B) -> Framing {
    let target = request.uri.path_and_query().map_or("/", |p| p.as_str());
    let headers = &request.headers;
    head.clear();
    head.reserve(256 + 64 * headers.len());
    head.extend_from_slice(request.method.as_str().as_bytes());
    head.push(b' ');
    head.extend_from_slice(target.as_bytes());
    head.extend_from_slice(b" HTTP/1.1\r\n");
    wire::encode_fields(head, headers);
    let framing = if body.is_end_stream() {
        Framing::Empty
    } else if let Ok(Some(n)) = wire::content_length(headers) {
        Framing::Length(n)
    } else if let Some(n) = body.size_hint().exact() {
        head.extend_from_slice(b"content-length: ");
        head.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
        head.extend_from_slice(b"\r\n");
        Framing::Length(n)
    } else {
        head.extend_from_slice(b"transfer-encoding: chunked\r\n");
        Framing::Chunked
    };
    head.extend_from_slice(b"\r\n");
    framing
}

/// Drives the rest of the request, if some is still going out; `Err` with the client
/// body's error if it failed. A server that stops reading ends the sending, and the
/// connection's reuse: its answer may still come.
fn poll_sending<B: Body<Data = Bytes> + Unpin>(
    sending: &mut Option<Box<Outgoing<B>>>,
    kept_alive: &mut bool,
    cx: &mut Context<'_>,
    stream: &mut TcpStream,
) -> Result<(), B::Error> {
    let Some(out) = sending else {
        return Ok(());
    };
    match out.poll_send(cx, stream) {
        Poll::Pending => {}
        Poll::Ready(Ok(())) => *sending = None,
        Poll::Ready(Err(Sending::Body(e))) => return Err(e),
        Poll::Ready(Err(Sending::Io(e))) => {
            tracing::debug!("upstream stopped taking the request: {e}");
            *sending = None;
            *kept_alive = false;
        }
    }
    Ok(())
}

/// Why a request body stopped going out.
enum Sending<E> {
    Body(E),
    Io(io::Error),
}

/// The rest of a request on its way out: bytes queued for the socket, then the body's
/// frames one at a time (the next is taken only once the last is written).
struct Outgoing<B> {
    /// Unwritten bytes in order: what is left of the head, or a chunk's size line, its
    /// data and its CRLF.
    queue: [Bytes; 3],
    /// `None` once the body has ended.
    body: Option<B>,
    /// With a stated length, how much of it is still to come: a body that would send
    /// more is cut off rather than let the extra bytes be read as another request.
    framing: Framing,
    /// Bytes the server has taken so far.
    written: u64,
    /// Waiting for the server to take bytes (rather than for the client to send some).
    blocked_on_socket: bool,
}

impl<B: Body<Data = Bytes> + Unpin> Outgoing<B> {
    fn new(body: B, framing: Framing) -> Self {
        Outgoing {
            queue: Default::default(),
            body: (framing != Framing::Empty).then_some(body),
            framing,
            written: 0,
            blocked_on_socket: false,
        }
    }

    fn poll_send(
        &mut self,
        cx: &mut Context<'_>,
        stream: &mut TcpStream,
    ) -> Poll<Result<(), Sending<B::Error>>> {
        loop {
            while !self.queue.iter().all(Bytes::is_empty) {
                let slices = [
                    IoSlice::new(&self.queue[0]),
                    IoSlice::new(&self.queue[1]),
                    IoSlice::new(&self.queue[2]),
                ];
                self.blocked_on_socket = true;
                let n = ready!(crate::net::poll_write_gathered(
                    Pin::new(&mut *stream),
                    cx,
                    &slices
                ))
                .map_err(Sending::Io)?;
                self.blocked_on_socket = false;
                self.written += n as u64;
                if n == 0 {
                    return Poll::Ready(Err(Sending::Io(io::ErrorKind::WriteZero.into())));
                }
                wire::consume(&mut self.queue, n);
            }
            let Some(body) = &mut self.body else {
                return Poll::Ready(Ok(()));
            };
            let chunked = self.framing == Framing::Chunked;
            match ready!(Pin::new(body).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) if data.is_empty() => {}
                    Ok(data) if chunked => {
                        let line = Bytes::copy_from_slice(&wire::chunk_line(data.len()));
                        self.queue = [line, data, Bytes::from_static(b"\r\n")];
                    }
                    Ok(data) => {
                        if let Framing::Length(left) = &mut self.framing {
                            if data.len() as u64 > *left {
                                self.body = None;
                                let longer = "request body longer than its Content-Length";
                                return Poll::Ready(Err(Sending::Io(io::Error::other(longer))));
                            }
                            *left -= data.len() as u64;
                        }
                        self.queue[0] = data;
                    }
                    Err(frame) => {
                        if let (Ok(trailers), true) = (frame.into_trailers(), chunked) {
                            let mut end = b"0\r\n".to_vec();
                            wire::encode_fields(&mut end, &trailers);
                            end.extend_from_slice(b"\r\n");
                            self.queue[0] = end.into();
                            self.body = None;
                        }
                    }
                },
                Some(Err(e)) => {
                    self.body = None;
                    return Poll::Ready(Err(Sending::Body(e)));
                }
                None => {
                    self.body = None;
                    if chunked {
                        self.queue[0] = Bytes::from_static(b"0\r\n\r\n");
                    }
                }
            }
        }
    }
}

/// How the response body is read.
enum Reading {
    Decoder(BodyDecoder),
    /// Everything until the server closes.
    UntilClose,
    /// A `101`: no body; the connection becomes a tunnel.
    Upgrade,
    Done,
}

/// Why a response body was cut short.
#[derive(Debug, thiserror::Error)]
pub enum ResponseBodyError {
    #[error("upstream closed the connection in the middle of the body")]
    Cut,
    #[error("upstream body framing broken: {0}")]
    Framing(&'static str),
    #[error("upstream connection failed: {0}")]
    Io(io::Error),
    #[error("client request body failed while the response was sent: {0}")]
    RequestBody(String),
}

/// A response body as it comes from the server. It owns the connection: once the body
/// is complete, [`UpstreamBody::take_idle`] hands a reusable connection back for the pool.
pub struct UpstreamBody<B> {
    conn: Option<Connection>,
    reading: Reading,
    /// The rest of the request body, while the server answers before it has all of it.
    sending: Option<Box<Outgoing<B>>>,
    /// The server keeps the connection open after this response.
    kept_alive: bool,
    /// How long the server took to answer after the request's last write (or the
    /// client's last bytes while a body went out): its latency, neither the connect nor
    /// the upload.
    pub waited: Duration,
}

impl<B: Body<Data = Bytes> + Unpin> UpstreamBody<B> {
    /// The connection, once the exchange is complete and it may carry another one.
    pub fn take_idle(&mut self) -> Option<Connection> {
        let complete = match &self.reading {
            Reading::Decoder(decoder) => decoder.is_done(),
            Reading::Done => true,
            _ => false,
        };
        if !(complete && self.kept_alive && self.sending.is_none()) {
            return None;
        }
        // Bytes after the response: the server does not speak HTTP/1 as we do.
        self.conn.take().filter(|c| c.buf.is_empty())
    }

    /// After a `101`: the connection, and what the server sent after its head.
    pub fn upgrade(mut self) -> Option<(TcpStream, BytesMut)> {
        match self.reading {
            Reading::Upgrade => self.conn.take().map(|c| (c.stream, c.buf)),
            _ => None,
        }
    }

    fn fail(
        &mut self,
        error: ResponseBodyError,
    ) -> Poll<Option<Result<Frame<Bytes>, ResponseBodyError>>> {
        self.conn = None;
        self.reading = Reading::Done;
        self.kept_alive = false;
        Poll::Ready(Some(Err(error)))
    }
}

impl<B> Body for UpstreamBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    type Data = Bytes;
    type Error = ResponseBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        let Some(conn) = this.conn.as_mut() else {
            return Poll::Ready(None);
        };
        let sent = poll_sending(
            &mut this.sending,
            &mut this.kept_alive,
            cx,
            &mut conn.stream,
        );
        if let Err(e) = sent {
            return this.fail(ResponseBodyError::RequestBody(e.to_string()));
        }
        loop {
            let step = match &mut this.reading {
                Reading::Decoder(decoder) => decoder.step(&mut conn.buf),
                Reading::UntilClose if conn.buf.is_empty() => Ok(Step::NeedMore),
                Reading::UntilClose => Ok(Step::Frame(Frame::data(conn.buf.split().freeze()))),
                Reading::Upgrade | Reading::Done => Ok(Step::End),
            };
            match step {
                Ok(Step::Frame(frame)) => return Poll::Ready(Some(Ok(frame))),
                Ok(Step::End) => {
                    if !matches!(this.reading, Reading::Upgrade) {
                        this.reading = Reading::Done;
                    }
                    return Poll::Ready(None);
                }
                Err(why) => return this.fail(ResponseBodyError::Framing(why)),
                Ok(Step::NeedMore) => match ready!(conn.poll_read(cx)) {
                    Ok(0) if matches!(this.reading, Reading::UntilClose) => {
                        this.reading = Reading::Done;
                        this.conn = None;
                        return Poll::Ready(None);
                    }
                    Ok(0) => return this.fail(ResponseBodyError::Cut),
                    Ok(_) => {}
                    Err(e) => return this.fail(ResponseBodyError::Io(e)),
                },
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.reading {
            Reading::Decoder(decoder) => decoder.is_done(),
            Reading::UntilClose => false,
            Reading::Upgrade | Reading::Done => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.reading {
            Reading::Decoder(decoder) => match decoder.remaining() {
                Some(n) => SizeHint::with_exact(n),
                None => SizeHint::default(),
            },
            Reading::UntilClose => SizeHint::default(),
            Reading::Upgrade | Reading::Done => SizeHint::with_exact(0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use http_body_util::{BodyExt, Empty, Full, StreamBody};
    use proptest::prelude::*;

    const TIMEOUTS: Timeouts = Timeouts {
        send: Duration::from_secs(10),
        read: Duration::from_secs(10),
    };

    fn header<'a>(head: &'a Head, name: &str) -> Vec<&'a [u8]> {
        head.headers
            .get_all(name)
            .iter()
            .map(HeaderValue::as_bytes)
            .collect()
    }

    #[test]
    fn a_head_is_parsed_with_its_values_as_sent() {
        let raw = b"HTTP/1.0 404 Whatever\r\nA: 1\r\nb:\t two words \r\nA: 3\r\nEmpty:\r\n\r\nbody";
        let head = parse_head(raw).unwrap().unwrap();
        assert_eq!(head.status, StatusCode::NOT_FOUND);
        assert_eq!(head.version, Version::HTTP_10);
        assert_eq!(head.len, raw.len() - 4);
        assert_eq!(header(&head, "a"), [&b"1"[..], b"3"]);
        assert_eq!(header(&head, "b"), [b"two words"]);
        assert_eq!(header(&head, "empty"), [b""]);
    }

    #[test]
    fn an_incomplete_head_waits_and_a_broken_one_is_refused() {
        assert!(parse_head(b"HTTP/1.1 200 OK\r\nA: 1\r\n")
            .unwrap()
            .is_none());
        for bad in [
            &b"SSH-2.0-OpenSSH_9.2\r\n\r\n"[..],
            b"HTTP/1.1 2000 OK\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n",
            b"HTTP/2 200 OK\r\n\r\n",
        ] {
            assert!(parse_head(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn the_response_body_ends_where_rfc_9112_says() {
        let h = |pairs: &[(&'static str, &'static str)]| {
            let mut headers = HeaderMap::new();
            for (n, v) in pairs {
                headers.append(*n, HeaderValue::from_static(v));
            }
            headers
        };
        let ok = StatusCode::OK;
        let framing = |head, status, pairs: &[(&'static str, &'static str)]| {
            response_framing(head, status, &h(pairs))
        };
        let length = [("content-length", "5")];
        assert_eq!(framing(false, ok, &length), Ok(Some(Framing::Length(5))));
        assert_eq!(framing(true, ok, &length), Ok(Some(Framing::Empty)));
        for status in [204, 304, 103] {
            let status = StatusCode::from_u16(status).unwrap();
            assert_eq!(framing(false, status, &length), Ok(Some(Framing::Empty)));
        }
        let chunked = [("transfer-encoding", "gzip, chunked")];
        assert_eq!(framing(false, ok, &chunked), Ok(Some(Framing::Chunked)));
        let gzip = [("transfer-encoding", "gzip")];
        assert_eq!(framing(false, ok, &gzip), Ok(None));
        assert_eq!(framing(false, ok, &[]), Ok(None));
        let both = [("transfer-encoding", "chunked"), ("content-length", "5")];
        assert!(framing(false, ok, &both).is_err());
        let conflicting = [("content-length", "5"), ("content-length", "6")];
        assert!(framing(false, ok, &conflicting).is_err());
    }

    fn encode<B: Body>(body: B, headers: &[(&'static str, &'static str)]) -> (Vec<u8>, Framing) {
        let mut request = http::Request::new(());
        *request.method_mut() = Method::POST;
        *request.uri_mut() = "/up?x=1".parse().unwrap();
        for (n, v) in headers {
            request
                .headers_mut()
                .append(*n, HeaderValue::from_static(v));
        }
        let mut head = Vec::new();
        let framing = encode_head(&mut head, &request.into_parts().0, &body);
        (head, framing)
    }

    #[test]
    fn a_request_says_its_length_or_is_chunked() {
        let (head, framing) = encode(Empty::<Bytes>::new(), &[("host", "a")]);
        assert_eq!(head, b"POST /up?x=1 HTTP/1.1\r\nhost: a\r\n\r\n");
        assert_eq!(framing, Framing::Empty);

        let body = Full::new(Bytes::from_static(b"abc"));
        let (head, framing) = encode(body.clone(), &[("content-length", "3")]);
        assert_eq!(head, b"POST /up?x=1 HTTP/1.1\r\ncontent-length: 3\r\n\r\n");
        assert_eq!(framing, Framing::Length(3));
        let (head, framing) = encode(body, &[]);
        assert_eq!(head, b"POST /up?x=1 HTTP/1.1\r\ncontent-length: 3\r\n\r\n");
        assert_eq!(framing, Framing::Length(3));

        let frames: Vec<Result<Frame<Bytes>, std::convert::Infallible>> =
            vec![Ok(Frame::data(Bytes::from_static(b"abc")))];
        let stream = StreamBody::new(futures_util::stream::iter(frames));
        let (head, framing) = encode(stream.boxed(), &[]);
        assert_eq!(
            head,
            b"POST /up?x=1 HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n"
        );
        assert_eq!(framing, Framing::Chunked);
    }

    /// A server on loopback that answers each request with `reply` and hands back what
    /// it read, once it has read `expect` bytes.
    async fn loopback(
        reply: &'static [u8],
        expect: usize,
    ) -> (SocketAddr, tokio::sync::oneshot::Receiver<Vec<u8>>) {
        use tokio::io::AsyncReadExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (seen, seen_rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut got = Vec::new();
            let mut chunk = [0u8; 4096];
            while got.len() < expect {
                let n = stream.read(&mut chunk).await.unwrap();
                assert!(n > 0, "client closed early: {got:?}");
                got.extend_from_slice(&chunk[..n]);
            }
            stream.write_all(reply).await.unwrap();
            let _ = seen.send(got);
            // Keeps the connection open until the client is done with it.
            let _ = stream.read(&mut chunk).await;
        });
        (addr, seen_rx)
    }

    #[tokio::test]
    async fn a_request_with_a_body_goes_whole_and_the_connection_can_go_back_to_the_pool() {
        let sent = "POST /up HTTP/1.1\r\nhost: a\r\ncontent-length: 5\r\n\r\nhello";
        let (addr, seen) = loopback(
            b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok",
            sent.len(),
        )
        .await;
        let conn = Connection::open(addr, Duration::from_secs(5), 8192)
            .await
            .unwrap();
        let mut request = http::Request::new(());
        *request.method_mut() = Method::POST;
        *request.uri_mut() = "/up".parse().unwrap();
        request
            .headers_mut()
            .insert("host", HeaderValue::from_static("a"));
        let (parts, ()) = request.into_parts();
        let body = Full::new(Bytes::from_static(b"hello"));
        let Ok(response) = conn.send(&parts, body, TIMEOUTS).await else {
            panic!("no response");
        };
        assert_eq!(response.status(), StatusCode::CREATED);
        let mut body = response.into_body();
        assert_eq!(body.size_hint().exact(), Some(2));
        let data = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(&data[..], b"ok");
        assert!(body.is_end_stream());
        assert_eq!(seen.await.unwrap(), sent.as_bytes());
        let mut idle = body.take_idle().expect("kept alive");
        assert!(idle.is_usable());
    }

    fn post() -> http::request::Parts {
        let mut request = http::Request::new(());
        *request.method_mut() = Method::POST;
        *request.uri_mut() = "/up".parse().unwrap();
        request.into_parts().0
    }

    /// What `send` says of a request to a server that accepts and then does `serve`.
    async fn outcome<B, F, Fut>(body: B, timeouts: Timeouts, serve: F) -> Result<Duration, String>
    where
        B: Body<Data = Bytes> + Unpin,
        F: FnOnce(TcpStream) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send,
    {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            serve(stream).await;
        });
        let conn = Connection::open(addr, Duration::from_secs(5), 8192)
            .await
            .unwrap();
        match conn.send(&post(), body, timeouts).await {
            Ok(response) => Ok(response.body().waited),
            Err(SendError::Failed(ExchangeError::SendTimeout)) => Err("send".into()),
            Err(SendError::Failed(ExchangeError::ReadTimeout)) => Err("read".into()),
            Err(_) => Err("other".into()),
        }
    }

    /// A body that arrives 1 KiB per 100 ms from its client, for `pieces` pieces.
    fn slow_body(pieces: usize) -> impl Body<Data = Bytes, Error = std::io::Error> + Unpin {
        use futures_util::StreamExt;
        let frames = futures_util::stream::iter(0..pieces).then(|_| async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            Ok(Frame::data(Bytes::from(vec![b'x'; 1024])))
        });
        StreamBody::new(Box::pin(frames))
    }

    /// Reads everything the client sends, then answers after `delay`.
    async fn answer_after(mut stream: TcpStream, delay: Duration, expect: usize) {
        use tokio::io::AsyncReadExt;
        let mut got = 0;
        let mut buf = [0u8; 16384];
        while got < expect {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got += n,
            }
        }
        tokio::time::sleep(delay).await;
        let _ = stream
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
            .await;
        let _ = stream.read(&mut buf).await;
    }

    #[tokio::test]
    async fn read_timeout_runs_from_the_end_of_the_body_not_through_a_slow_upload() {
        let timeouts = Timeouts {
            send: Duration::from_millis(300),
            read: Duration::from_millis(300),
        };
        // 1 s of upload at the client's pace, then a prompt answer: no limit is hit, and
        // the server's time is the wait after the body, not the upload.
        let sent = outcome(slow_body(10), timeouts, |s| {
            answer_after(s, Duration::from_millis(50), 10 * 1024 + 60)
        })
        .await
        .unwrap();
        assert!(sent < Duration::from_millis(250), "{sent:?}");
        // The whole body, then no answer: a read timeout.
        let silent = outcome(slow_body(3), timeouts, |s| {
            answer_after(s, Duration::from_secs(5), 3 * 1024 + 60)
        })
        .await;
        assert_eq!(silent, Err("read".to_string()));
    }

    #[tokio::test]
    async fn a_server_that_takes_none_of_the_body_is_a_send_timeout() {
        let timeouts = Timeouts {
            send: Duration::from_millis(300),
            read: Duration::from_secs(30),
        };
        // More than the socket buffers hold, to a server that never reads.
        let body = Full::new(Bytes::from(vec![b'x'; 64 << 20]));
        let started = std::time::Instant::now();
        let stuck = outcome(body, timeouts, |s| async move {
            tokio::time::sleep(Duration::from_secs(10)).await;
            drop(s);
        })
        .await;
        assert_eq!(stuck, Err("send".to_string()));
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    proptest! {
        /// However the head arrives, it is incomplete until its last byte and then the
        /// same head; and arbitrary bytes get an answer, never a panic.
        #[test]
        fn a_head_is_the_same_however_it_arrives(
            status in 100u16..600,
            fields in prop::collection::vec(("[a-z][a-z0-9-]{0,10}", "[ -~]{0,20}"), 0..8),
            cut in 0usize..400,
            noise in prop::collection::vec(any::<u8>(), 0..300),
        ) {
            let mut raw = format!("HTTP/1.1 {status} X\r\n");
            for (name, value) in &fields {
                raw.push_str(&format!("{name}: {value}\r\n"));
            }
            raw.push_str("\r\n");
            let raw = raw.into_bytes();
            let cut = cut.min(raw.len() - 1);
            prop_assert!(parse_head(&raw[..cut]).unwrap().is_none());
            let head = parse_head(&raw).unwrap().unwrap();
            prop_assert_eq!(head.status.as_u16(), status);
            prop_assert_eq!(head.len, raw.len());
            prop_assert_eq!(head.headers.len(), fields.len());
            for (name, value) in &fields {
                let found = head.headers.get_all(name.as_str()).iter().any(|v| v.as_bytes() == value.trim().as_bytes());
                prop_assert!(found, "{name}: {value}");
            }
            let _ = parse_head(&noise);
        }
    }
}
