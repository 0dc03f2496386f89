//! Cuts off HTTP/2 clients that flood the connection with control frames.
//!
//! h2 answers every PING with a PING and every SETTINGS with an acknowledgement, and
//! processes PRIORITY, RST_STREAM and empty DATA frames, all without limit: a client that
//! sends nothing but those costs a quarter of a core per connection and never trips a
//! request limit. h2 itself already stops rapid reset, CONTINUATION floods and HPACK
//! bombs; this guard covers the rest by reading the frame headers as the bytes come in,
//! below h2.
//!
//! The rule: a connection has an allowance of [`BURST`] control frames. Each control
//! frame (SETTINGS, PING, PRIORITY, RST_STREAM, an empty DATA frame without END_STREAM,
//! an unknown frame type) spends one; each request (HEADERS) and each DATA frame that
//! carries bytes earns [`CREDIT_PER_USEFUL_FRAME`] back, and time earns
//! [`REFILL_PER_SECOND`], both up to [`BURST`]. A connection that overdraws is closed.
//! WINDOW_UPDATE frames are not counted: a client downloading a large body sends many,
//! and h2 treats them in constant time. nginx cuts a connection off after about 10,000
//! queued control frames ("http2 flood detected"); this limit is lower.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Control frames a connection may send beyond what its requests earned.
pub const BURST: u32 = 1000;
/// Control frames each request or data frame earns.
pub const CREDIT_PER_USEFUL_FRAME: u32 = 4;
/// Control frames each second of the connection's life earns (keep-alive pings).
pub const REFILL_PER_SECOND: u32 = 10;

/// The 24 bytes a client starts an HTTP/2 connection with.
const PREFACE_LEN: usize = 24;
const FRAME_HEADER_LEN: usize = 9;

const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const GOAWAY: u8 = 0x7;
const WINDOW_UPDATE: u8 = 0x8;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;

/// Follows the frame boundaries of a client's byte stream and keeps the allowance.
pub struct FrameMeter {
    preface_left: usize,
    header: [u8; FRAME_HEADER_LEN],
    header_len: usize,
    payload_left: usize,
    allowance: u32,
    /// Control frames seen, for the log line.
    control_frames: u64,
    last_refill: Instant,
}

#[derive(Debug, PartialEq, Eq)]
pub struct Flood {
    pub control_frames: u64,
}

impl FrameMeter {
    pub fn new(now: Instant) -> Self {
        FrameMeter {
            preface_left: PREFACE_LEN,
            header: [0; FRAME_HEADER_LEN],
            header_len: 0,
            payload_left: 0,
            allowance: BURST,
            control_frames: 0,
            last_refill: now,
        }
    }

    /// Accounts for `bytes`, the next bytes the client sent, however they were split.
    pub fn feed(&mut self, mut bytes: &[u8], now: Instant) -> Result<(), Flood> {
        while !bytes.is_empty() {
            if self.preface_left > 0 {
                let n = self.preface_left.min(bytes.len());
                self.preface_left -= n;
                bytes = &bytes[n..];
            } else if self.payload_left > 0 {
                let n = self.payload_left.min(bytes.len());
                self.payload_left -= n;
                bytes = &bytes[n..];
            } else {
                let n = (FRAME_HEADER_LEN - self.header_len).min(bytes.len());
                self.header[self.header_len..self.header_len + n].copy_from_slice(&bytes[..n]);
                self.header_len += n;
                bytes = &bytes[n..];
                if self.header_len == FRAME_HEADER_LEN {
                    self.header_len = 0;
                    let h = self.header;
                    self.payload_left =
                        usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]);
                    self.count(h[3], h[4], self.payload_left, now)?;
                }
            }
        }
        Ok(())
    }

    fn count(&mut self, kind: u8, flags: u8, len: usize, now: Instant) -> Result<(), Flood> {
        let useful = match kind {
            HEADERS => true,
            DATA => len > 0 || flags & END_STREAM != 0,
            WINDOW_UPDATE | GOAWAY | CONTINUATION => return Ok(()),
            _ => false,
        };
        if useful {
            self.allowance = (self.allowance + CREDIT_PER_USEFUL_FRAME).min(BURST);
            return Ok(());
        }
        self.control_frames += 1;
        if self.allowance == 0 {
            let seconds = now.duration_since(self.last_refill).as_secs();
            if seconds > 0 {
                let refill = seconds.saturating_mul(u64::from(REFILL_PER_SECOND));
                self.allowance = refill.min(u64::from(BURST)) as u32;
                self.last_refill = now;
            }
        }
        match self.allowance.checked_sub(1) {
            Some(left) => {
                self.allowance = left;
                Ok(())
            }
            None => Err(Flood {
                control_frames: self.control_frames,
            }),
        }
    }
}

pin_project_lite::pin_project! {
    /// A client stream whose incoming HTTP/2 frames are metered; reading fails once the
    /// client floods, which makes h2 close the connection.
    pub struct Metered<S> {
        #[pin]
        inner: S,
        meter: FrameMeter,
        client: std::net::SocketAddr,
    }
}

impl<S> Metered<S> {
    pub fn new(inner: S, client: std::net::SocketAddr) -> Self {
        Metered {
            inner,
            meter: FrameMeter::new(Instant::now()),
            client,
        }
    }
}

impl<S: AsyncRead> AsyncRead for Metered<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let result = this.inner.poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = result {
            if let Err(flood) = this.meter.feed(&buf.filled()[before..], Instant::now()) {
                tracing::warn!(
                    client = %this.client,
                    "http2 flood detected: {} control frames; closing the connection",
                    flood.control_frames
                );
                return Poll::Ready(Err(std::io::Error::new(
                    std::io::ErrorKind::ConnectionAborted,
                    "http2 flood detected",
                )));
            }
        }
        result
    }
}

impl<S: AsyncWrite> AsyncWrite for Metered<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.project().inner.poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        self.project().inner.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::time::Duration;

    fn frame(kind: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
        let len = payload.len();
        let mut f = vec![
            (len >> 16) as u8,
            (len >> 8) as u8,
            len as u8,
            kind,
            flags,
            0,
            0,
            0,
            1,
        ];
        f.extend_from_slice(payload);
        f
    }

    fn preface() -> Vec<u8> {
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec()
    }

    const PING: u8 = 0x6;
    const SETTINGS: u8 = 0x4;

    #[test]
    fn a_ping_flood_is_cut_after_the_burst() {
        let now = Instant::now();
        let mut meter = FrameMeter::new(now);
        meter.feed(&preface(), now).unwrap();
        meter.feed(&frame(SETTINGS, 0, &[]), now).unwrap();
        let ping = frame(PING, 0, &[0; 8]);
        for _ in 1..BURST {
            meter.feed(&ping, now).unwrap();
        }
        assert_eq!(
            meter.feed(&ping, now),
            Err(Flood {
                control_frames: u64::from(BURST) + 1
            })
        );
    }

    #[test]
    fn requests_and_time_earn_control_frames_back() {
        let start = Instant::now();
        let mut meter = FrameMeter::new(start);
        meter.feed(&preface(), start).unwrap();
        let ping = frame(PING, 0, &[0; 8]);
        for _ in 0..BURST {
            meter.feed(&ping, start).unwrap();
        }
        // A busy client: a request and a ping each time, for ever.
        for _ in 0..10_000 {
            meter.feed(&frame(HEADERS, 0x5, &[0x82]), start).unwrap();
            meter.feed(&ping, start).unwrap();
        }
        // An idle client that pings every 30 s for days.
        let mut meter = FrameMeter::new(start);
        meter.feed(&preface(), start).unwrap();
        for i in 1..10_000u64 {
            meter
                .feed(&ping, start + Duration::from_secs(30 * i))
                .unwrap();
        }
        // Uploads and downloads do not count.
        let mut meter = FrameMeter::new(start);
        meter.feed(&preface(), start).unwrap();
        for _ in 0..10_000 {
            meter.feed(&frame(DATA, 0, &[1; 100]), start).unwrap();
            meter
                .feed(&frame(WINDOW_UPDATE, 0, &[0, 0, 1, 0]), start)
                .unwrap();
        }
    }

    #[test]
    fn empty_data_frames_are_control_frames() {
        let now = Instant::now();
        let mut meter = FrameMeter::new(now);
        meter.feed(&preface(), now).unwrap();
        let empty = frame(DATA, 0, &[]);
        let result: Result<Vec<()>, Flood> = (0..=BURST).map(|_| meter.feed(&empty, now)).collect();
        assert!(result.is_err());
    }

    proptest! {
        /// However the stream is cut into reads, the verdict and the count are the same.
        #[test]
        fn the_split_of_the_stream_does_not_matter(
            kinds in prop::collection::vec((0u8..12, 0u8..2, 0usize..40), 0..300),
            cuts in prop::collection::vec(1usize..50, 1..100),
        ) {
            let now = Instant::now();
            let mut stream = preface();
            for (kind, flags, len) in kinds {
                stream.extend(frame(kind, flags, &vec![0; len]));
            }
            let mut whole = FrameMeter::new(now);
            let expected = whole.feed(&stream, now);
            let mut split = FrameMeter::new(now);
            let mut rest = &stream[..];
            let mut got = Ok(());
            for cut in cuts.iter().cycle() {
                if rest.is_empty() || got.is_err() {
                    break;
                }
                let n = (*cut).min(rest.len());
                got = split.feed(&rest[..n], now);
                rest = &rest[n..];
            }
            prop_assert_eq!(got.is_err(), expected.is_err());
            prop_assert_eq!(split.control_frames, whole.control_frames);
        }
    }
}
