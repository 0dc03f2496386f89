//! The two bodies of a proxied request, streamed frame by frame (memory stays bounded
//! whatever the size) with a timeout between frames.
//!
//! The response body also carries the [`RequestLog`]: when it is finished or dropped,
//! the request is over, so that is where the access-log line is written, the in-flight
//! count released and a cleanly finished upstream connection given back.

use super::compress::Encoder;
use super::files::FilePart;
use super::request_log::RequestLog;
use crate::upstream::http1::{ResponseBodyError, UpstreamBody};
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::Sleep;

/// Fires when a body has been silent for `timeout`. The sleep is only allocated the first
/// time a frame is not ready at once, which most small bodies never hit.
struct FrameTimer {
    timeout: Duration,
    sleep: Option<Pin<Box<Sleep>>>,
    armed: bool,
}

impl FrameTimer {
    fn new(timeout: Duration) -> Self {
        FrameTimer {
            timeout,
            sleep: None,
            armed: false,
        }
    }

    /// A frame arrived: the next wait starts from scratch.
    fn progress(&mut self) {
        self.armed = false;
    }

    /// The body is waiting: has it waited too long?
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        let deadline = tokio::time::Instant::now() + self.timeout;
        let sleep = self
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if !self.armed {
            sleep.as_mut().reset(deadline);
            self.armed = true;
        }
        sleep.as_mut().poll(cx).is_ready()
    }
}

/// Why a client's request body could not be passed on.
#[derive(Debug, thiserror::Error)]
pub enum ClientBodyError {
    #[error("client sent no body data for {0:?}")]
    Timeout(Duration),
    #[error("client request body broken: {0}")]
    Broken(String),
    #[error("request body larger than max_body_size ({0} bytes)")]
    TooLarge(u64),
}

/// What the HTTP/1 connection sends along a request body's channel.
pub enum BodyEvent {
    Frame(Frame<Bytes>),
    /// The body is complete. A channel that closes without this was cut short.
    End,
    Error(ClientBodyError),
}

enum ClientSource {
    /// HTTP/2: hyper's stream.
    Hyper(Incoming),
    /// HTTP/1: frames the connection reads and decodes, one at a time.
    Channel {
        frames: tokio::sync::mpsc::Receiver<BodyEvent>,
        /// Told when the body is first wanted (to send `100 Continue`).
        wanted: Option<tokio::sync::oneshot::Sender<()>>,
        length: Option<u64>,
        ended: bool,
    },
}

/// The client's request body on its way to the upstream: nothing for most requests, and
/// one pointer wide either way, as it is part of every request's future.
pub struct RequestBody(Option<Box<StreamedBody>>);

struct StreamedBody {
    source: ClientSource,
    timer: FrameTimer,
    /// `max_body_size`, and how much has passed so far.
    limit: Option<u64>,
    passed: u64,
}

/// How much of an HTTP/2 request body that is no longer wanted (the answer went out
/// first: a 413, an error, an early response) is still read and dropped, and for how long.
const DISCARD_BYTES: usize = 8 << 20;
const DISCARD_TIME: Duration = Duration::from_secs(2);

impl Drop for RequestBody {
    /// An HTTP/2 body dropped before its end would reset the stream (RST_STREAM with
    /// NO_ERROR, which RFC 9113 §8.1 allows, but which curl before 8.x and other clients
    /// take for a failure, and lose the answer they were sent). So the rest is read and
    /// dropped for a while, as nginx discards a body it does not want, and the stream ends
    /// cleanly with the client's last frame.
    fn drop(&mut self) {
        let Some(body) = self.0.take() else {
            return;
        };
        let ClientSource::Hyper(mut inner) = body.source else {
            return;
        };
        if inner.is_end_stream() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        runtime.spawn(async move {
            let mut dropped = 0;
            let _ = tokio::time::timeout(DISCARD_TIME, async {
                while dropped < DISCARD_BYTES {
                    match http_body_util::BodyExt::frame(&mut inner).await {
                        Some(Ok(frame)) => {
                            dropped += frame.data_ref().map_or(0, Bytes::len);
                        }
                        _ => return,
                    }
                }
            })
            .await;
        });
    }
}

/// No body (what a request sent again after its body went out carries).
impl Default for RequestBody {
    fn default() -> Self {
        RequestBody(None)
    }
}

impl RequestBody {
    pub fn empty() -> Self {
        RequestBody(None)
    }

    pub fn hyper(inner: Incoming, timeout: Duration) -> Self {
        if inner.is_end_stream() {
            return Self::empty();
        }
        Self::streamed(ClientSource::Hyper(inner), timeout)
    }

    fn streamed(source: ClientSource, timeout: Duration) -> Self {
        RequestBody(Some(Box::new(StreamedBody {
            source,
            timer: FrameTimer::new(timeout),
            limit: None,
            passed: 0,
        })))
    }

    /// The body fails with [`ClientBodyError::TooLarge`] once more than `bytes` passed
    /// (a chunked body is cut off where it crosses the line).
    pub fn limit(&mut self, bytes: u64) {
        if let Some(body) = &mut self.0 {
            body.limit = Some(bytes);
        }
    }

    pub fn channel(
        frames: tokio::sync::mpsc::Receiver<BodyEvent>,
        wanted: tokio::sync::oneshot::Sender<()>,
        length: Option<u64>,
        timeout: Duration,
    ) -> Self {
        let source = ClientSource::Channel {
            frames,
            wanted: Some(wanted),
            length,
            ended: false,
        };
        Self::streamed(source, timeout)
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = ClientBodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let Some(this) = self.0.as_deref_mut() else {
            return Poll::Ready(None);
        };
        let polled = match &mut this.source {
            ClientSource::Hyper(inner) => match Pin::new(inner).poll_frame(cx) {
                Poll::Ready(Some(Err(e))) => {
                    Poll::Ready(Some(Err(ClientBodyError::Broken(e.to_string()))))
                }
                other => {
                    other.map(|f| f.map(|r| r.map_err(|e| ClientBodyError::Broken(e.to_string()))))
                }
            },
            ClientSource::Channel {
                frames,
                wanted,
                ended,
                ..
            } => {
                if let Some(wanted) = wanted.take() {
                    let _ = wanted.send(());
                }
                if *ended {
                    return Poll::Ready(None);
                }
                match frames.poll_recv(cx) {
                    Poll::Ready(Some(BodyEvent::Frame(frame))) => Poll::Ready(Some(Ok(frame))),
                    Poll::Ready(Some(BodyEvent::End)) => {
                        *ended = true;
                        Poll::Ready(None)
                    }
                    Poll::Ready(Some(BodyEvent::Error(e))) => Poll::Ready(Some(Err(e))),
                    Poll::Ready(None) => Poll::Ready(Some(Err(ClientBodyError::Broken(
                        "client connection closed in the middle of the body".into(),
                    )))),
                    Poll::Pending => Poll::Pending,
                }
            }
        };
        match polled {
            Poll::Ready(Some(Ok(frame))) => {
                this.timer.progress();
                if let (Some(limit), Some(data)) = (this.limit, frame.data_ref()) {
                    this.passed += data.len() as u64;
                    if this.passed > limit {
                        return Poll::Ready(Some(Err(ClientBodyError::TooLarge(limit))));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Pending if this.timer.expired(cx) => {
                Poll::Ready(Some(Err(ClientBodyError::Timeout(this.timer.timeout))))
            }
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        match self.0.as_deref().map(|b| &b.source) {
            None => true,
            Some(ClientSource::Hyper(inner)) => inner.is_end_stream(),
            Some(ClientSource::Channel { ended, length, .. }) => *ended || *length == Some(0),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self.0.as_deref().map(|b| &b.source) {
            None => SizeHint::with_exact(0),
            Some(ClientSource::Hyper(inner)) => inner.size_hint(),
            Some(ClientSource::Channel {
                length: Some(n), ..
            }) => SizeHint::with_exact(*n),
            Some(ClientSource::Channel { .. }) => SizeHint::default(),
        }
    }
}

/// Why the response body was cut short.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamBodyError {
    #[error("upstream sent no body data for {0:?}")]
    Timeout(Duration),
    #[error("upstream response body broken: {0}")]
    Broken(ResponseBodyError),
    #[error("file read failed: {0}")]
    File(std::io::Error),
    #[error("compression failed: {0}")]
    Compress(std::io::Error),
}

impl UpstreamBodyError {
    /// Whether the server is to blame: not for the client's request body failing under
    /// a response that was already streaming, nor for the gateway's own files or encoder.
    fn blames_server(&self) -> bool {
        match self {
            UpstreamBodyError::Timeout(_) => true,
            UpstreamBodyError::Broken(e) => !matches!(e, ResponseBodyError::RequestBody(_)),
            UpstreamBodyError::File(_) | UpstreamBodyError::Compress(_) => false,
        }
    }
}

/// An upstream's response body; it carries the rest of the client's request body when
/// the server answers before it has read all of it.
pub type FromUpstream = UpstreamBody<RequestBody>;

/// How much of a file is read at a time: the most a file response holds in memory.
const FILE_READ: u64 = 64 * 1024;

enum Source {
    Upstream(FromUpstream),
    Fixed(Option<Bytes>),
    /// A file from a route's root, or a cached entry's body: what is left of it to send.
    File(FilePart),
    /// A cache fill another request writes, read as it grows.
    Tail(Box<super::cache::entry::Tail>),
}

/// The body sent back to the client: the upstream's, a file, or a short one of our own,
/// compressed on the way when the compression stage says so.
pub struct ResponseBody {
    source: Source,
    timer: FrameTimer,
    /// On the heap, as most bodies are not compressed: one pointer in every body.
    compressing: Option<Box<Compressing>>,
    /// The upstream's body is stored in the cache as it passes (on the heap: one pointer).
    filling: Option<Box<super::cache::entry::Filler>>,
    log: RequestLog,
}

impl Drop for ResponseBody {
    /// A client that goes away while its answer fills the cache does not take the fill
    /// with it: other requests may be streaming from it. The rest of the upstream's body
    /// is read into the cache in a task of its own (within the upstream's read timeout).
    fn drop(&mut self) {
        let Some(mut filler) = self.filling.take() else {
            return;
        };
        if !matches!(self.source, Source::Upstream(_))
            || tokio::runtime::Handle::try_current().is_err()
        {
            return;
        }
        let Source::Upstream(mut upstream) =
            std::mem::replace(&mut self.source, Source::Fixed(None))
        else {
            return;
        };
        let timeout = self.timer.timeout;
        tokio::spawn(async move {
            loop {
                let next = std::future::poll_fn(|cx| Pin::new(&mut upstream).poll_frame(cx));
                match tokio::time::timeout(timeout, next).await {
                    Ok(Some(Ok(frame))) => {
                        if let Some(data) = frame.data_ref() {
                            if !filler.write(data) {
                                return;
                            }
                        }
                    }
                    Ok(None) => break,
                    Ok(Some(Err(_))) | Err(_) => return,
                }
            }
            if let Err(e) = filler.finish() {
                tracing::warn!("cache: the entry was not stored: {e}");
            }
        });
    }
}

/// A body's compression, and where it stands.
struct Compressing {
    encoder: Encoder,
    /// Written to the encoder since its last flush: flushed when the source pauses.
    unflushed: bool,
    /// Trailers held back while the encoder's last bytes go out.
    held: Option<Frame<Bytes>>,
    /// The source has ended and the encoder's last bytes went out.
    ended: bool,
}

impl ResponseBody {
    pub fn upstream(inner: FromUpstream, read_timeout: Duration, log: RequestLog) -> Self {
        Self::new(Source::Upstream(inner), read_timeout, log)
    }

    pub fn fixed(bytes: Bytes, log: RequestLog) -> Self {
        Self::new(
            Source::Fixed((!bytes.is_empty()).then_some(bytes)),
            Duration::ZERO,
            log,
        )
    }

    /// A part of a file, read (at its offset) as the client takes it.
    pub fn file(part: FilePart, log: RequestLog) -> Self {
        Self::new(Source::File(part), Duration::ZERO, log)
    }

    /// A cache fill another request writes, streamed as it grows.
    pub fn tail(tail: Box<super::cache::entry::Tail>, log: RequestLog) -> Self {
        Self::new(Source::Tail(tail), Duration::ZERO, log)
    }

    /// Stores the upstream body in the cache as it goes out; the entry is complete only
    /// if the whole body passes.
    pub fn fill_cache(&mut self, filler: Box<super::cache::entry::Filler>) {
        if matches!(self.source, Source::Upstream(_)) {
            self.filling = Some(filler);
        }
    }

    fn new(source: Source, timeout: Duration, log: RequestLog) -> Self {
        let mut body = ResponseBody {
            source,
            timer: FrameTimer::new(timeout),
            compressing: None,
            filling: None,
            log,
        };
        // An empty body (HEAD, 204, 304) may never be polled: it is complete already.
        if body.is_end_stream() {
            body.finish();
        }
        body
    }

    /// A whole file body as it stands (not compressed, not read yet), for a writer that
    /// sends it from the file itself; [`ResponseBody::file_sent`] says how it went.
    pub fn as_file(&self) -> Option<&FilePart> {
        match (&self.source, &self.compressing) {
            (Source::File(part), None) => Some(part),
            _ => None,
        }
    }

    /// `sent` bytes of the file went out by other means than polling.
    pub fn file_sent(&mut self, sent: u64) {
        if let Source::File(part) = &mut self.source {
            part.advance(sent);
        }
        self.log.bytes_sent += sent;
        if self.is_end_stream() {
            self.finish();
        }
    }

    /// Sends `bytes` instead (an error page): the source is dropped unread (an upstream
    /// connection with it, not to be reused half read) and the log goes on.
    pub fn replace(&mut self, bytes: Bytes) {
        self.source = Source::Fixed((!bytes.is_empty()).then_some(bytes));
        self.compressing = None;
        if self.is_end_stream() {
            self.finish();
        }
    }

    /// Compresses the body with `encoder` from now on.
    pub fn compress(&mut self, encoder: Encoder) {
        self.compressing = Some(Box::new(Compressing {
            encoder,
            unflushed: false,
            held: None,
            ended: false,
        }));
    }

    /// The whole body went out: the request is complete, and the upstream connection
    /// may serve another request.
    fn finish(&mut self) {
        if let Some(filler) = self.filling.take() {
            if let Err(e) = filler.finish() {
                tracing::warn!("cache: the entry was not stored: {e}");
            }
        }
        let idle = match &mut self.source {
            Source::Upstream(inner) => inner.take_idle(),
            Source::Fixed(_) | Source::File(_) | Source::Tail(_) => None,
        };
        self.log.finish(idle);
    }

    /// The next frame of the source itself.
    fn poll_source(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, UpstreamBodyError>>> {
        match &mut self.source {
            Source::Fixed(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Source::Tail(tail) => match tail.poll_chunk(cx) {
                Poll::Ready(Some(Ok(data))) => Poll::Ready(Some(Ok(Frame::data(data)))),
                Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(UpstreamBodyError::File(e)))),
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            },
            Source::Upstream(inner) => match Pin::new(inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    if let (Some(filler), Some(data)) = (&mut self.filling, frame.data_ref()) {
                        if !filler.write(data) {
                            // Too large, or the disk failed: the fill is given up.
                            self.filling = None;
                        }
                    }
                    Poll::Ready(Some(Ok(frame)))
                }
                Poll::Ready(Some(Err(e))) => {
                    self.filling = None;
                    Poll::Ready(Some(Err(UpstreamBodyError::Broken(e))))
                }
                Poll::Pending if self.timer.expired(cx) => {
                    Poll::Ready(Some(Err(UpstreamBodyError::Timeout(self.timer.timeout))))
                }
                other => other.map(|f| f.map(|r| r.map_err(UpstreamBodyError::Broken))),
            },
            // Read on the worker's thread, as nginx reads without aio: a file in the page
            // cache costs a copy, and one read is at most FILE_READ.
            Source::File(part) => {
                if part.len == 0 {
                    return Poll::Ready(None);
                }
                let mut chunk = vec![0; part.len.min(FILE_READ) as usize];
                match std::os::unix::fs::FileExt::read_at(&part.file, &mut chunk, part.offset) {
                    Ok(0) => Poll::Ready(Some(Err(UpstreamBodyError::File(
                        std::io::ErrorKind::UnexpectedEof.into(),
                    )))),
                    Ok(n) => {
                        part.advance(n as u64);
                        chunk.truncate(n);
                        Poll::Ready(Some(Ok(Frame::data(Bytes::from(chunk)))))
                    }
                    Err(e) => Poll::Ready(Some(Err(UpstreamBodyError::File(e)))),
                }
            }
        }
    }

    /// The next frame for the client: the source's, through the encoder if there is one.
    fn poll_out(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, UpstreamBodyError>>> {
        if self.compressing.is_none() {
            return self.poll_source(cx);
        }
        let compressed = |out: Bytes| Poll::Ready(Some(Ok(Frame::data(out))));
        let fail = |e| Poll::Ready(Some(Err(UpstreamBodyError::Compress(e))));
        loop {
            let c = self.compressing.as_deref_mut().expect("compressing");
            if let Some(trailers) = c.held.take() {
                return Poll::Ready(Some(Ok(trailers)));
            }
            if c.ended {
                return Poll::Ready(None);
            }
            let polled = self.poll_source(cx);
            let c = self.compressing.as_deref_mut().expect("compressing");
            match polled {
                Poll::Ready(Some(Ok(frame))) => {
                    self.timer.progress();
                    let out = match frame.into_data() {
                        Ok(data) => {
                            c.unflushed = true;
                            c.encoder.write(&data)
                        }
                        Err(trailers) => {
                            c.held = Some(trailers);
                            c.encoder.finish()
                        }
                    };
                    match out {
                        Ok(out) if out.is_empty() => continue,
                        Ok(out) => return compressed(out),
                        Err(e) => return fail(e),
                    }
                }
                Poll::Ready(None) => {
                    c.ended = true;
                    match c.encoder.finish() {
                        Ok(out) if out.is_empty() => continue,
                        Ok(out) => return compressed(out),
                        Err(e) => return fail(e),
                    }
                }
                Poll::Pending if c.unflushed => {
                    // The source pauses: what it sent so far goes out now.
                    c.unflushed = false;
                    match c.encoder.flush() {
                        Ok(out) if out.is_empty() => return Poll::Pending,
                        Ok(out) => return compressed(out),
                        Err(e) => return fail(e),
                    }
                }
                other => return other,
            }
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = UpstreamBodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        let polled = this.poll_out(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                this.timer.progress();
                if let Some(data) = frame.data_ref() {
                    this.log.bytes_sent += data.len() as u64;
                }
                if this.is_end_stream() {
                    this.finish();
                }
            }
            Poll::Ready(Some(Err(e))) => this.log.fail_body(e.to_string(), e.blames_server()),
            Poll::Ready(None) => this.finish(),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        if let Some(c) = &self.compressing {
            return c.ended && c.held.is_none();
        }
        match &self.source {
            Source::Upstream(inner) => inner.is_end_stream(),
            Source::Fixed(bytes) => bytes.is_none(),
            Source::File(part) => part.len == 0,
            Source::Tail(_) => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        if self.compressing.is_some() {
            return SizeHint::default();
        }
        match &self.source {
            Source::Upstream(inner) => inner.size_hint(),
            Source::Fixed(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
            Source::File(part) => SizeHint::with_exact(part.len),
            Source::Tail(_) => SizeHint::default(),
        }
    }
}
