//! The relay of an upgraded WebSocket connection, both ways, byte for byte. It follows
//! the frame boundaries of each direction (without buffering a frame) so that, when the
//! worker drains and its `shutdown_timeout` is nearly over, it can end the session the way
//! RFC 6455 §7.1.2 asks: a Close frame with status 1001 (going away) to each side, at the
//! next boundary, instead of a cut the peers would see as an abnormal closure (1006).

use std::sync::LazyLock;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

/// Cancelled when this worker's WebSockets must close: shortly before its
/// `shutdown_timeout` ends (see [`going_away_after`]).
pub static GOING_AWAY: LazyLock<CancellationToken> = LazyLock::new(CancellationToken::new);

/// The most a relay waits for the peers' answering Close frames once it sent its own.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// When, after a drain starts, the WebSockets are told to go away: early enough that the
/// close handshake fits in `shutdown_timeout` (a second, or half of it when it is short).
pub fn going_away_after(shutdown_timeout: Duration) -> Duration {
    shutdown_timeout.saturating_sub(CLOSE_GRACE.min(shutdown_timeout / 2))
}

/// Close, status 1001, as a server sends it (unmasked).
const CLOSE_TO_CLIENT: [u8; 4] = [0x88, 0x02, 0x03, 0xE9];

/// Close, status 1001, as a client sends it: masked (RFC 6455 §5.3), here with a fixed key,
/// which is allowed for a frame whose content is known to both sides anyway.
fn close_to_server() -> [u8; 8] {
    let key = [0x5a, 0x17, 0xc3, 0x3e];
    [
        0x88,
        0x82,
        key[0],
        key[1],
        key[2],
        key[3],
        0x03 ^ key[0],
        0xE9 ^ key[1],
    ]
}

/// Where a direction's byte stream is among its frames.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Frames {
    /// The start of the frame head being read (at most its 14 bytes).
    head: [u8; 14],
    head_len: usize,
    /// Payload bytes of the current frame still to pass.
    payload_left: u64,
}

impl Frames {
    /// Follows `bytes` as they pass.
    fn pass(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.payload_left > 0 {
                let n = self.payload_left.min(bytes.len() as u64);
                self.payload_left -= n;
                bytes = &bytes[n as usize..];
                continue;
            }
            self.head[self.head_len] = bytes[0];
            self.head_len += 1;
            bytes = &bytes[1..];
            if let Some(payload) = self.whole_head() {
                self.payload_left = payload;
                self.head_len = 0;
            }
        }
    }

    /// Between two frames: a frame of our own may go in here.
    fn at_boundary(&self) -> bool {
        self.head_len == 0 && self.payload_left == 0
    }

    /// The payload length once the head read so far is whole.
    fn whole_head(&self) -> Option<u64> {
        let head = &self.head[..self.head_len];
        if head.len() < 2 {
            return None;
        }
        let masked = head[1] & 0x80 != 0;
        let short = u64::from(head[1] & 0x7f);
        let extended = match short {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        if head.len() < 2 + extended + if masked { 4 } else { 0 } {
            return None;
        }
        Some(match extended {
            0 => short,
            _ => head[2..2 + extended]
                .iter()
                .fold(0u64, |n, &b| (n << 8) | u64::from(b)),
        })
    }
}

/// Copies `from` to `to` until `from` ends, or until the worker says go away: then,
/// between two frames, `close` goes to `to` and what `from` still sends (its side's
/// answering Close) is read and dropped for a moment.
async fn pipe<R, W>(mut from: R, mut to: W, mut frames: Frames, close: &[u8])
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    // As large as tokio's copy_bidirectional uses: an idle WebSocket holds two of these.
    let mut buf = vec![0u8; 8 * 1024];
    let mut going_away = false;
    loop {
        if going_away && frames.at_boundary() {
            let _ = to.write_all(close).await;
            let _ = to.flush().await;
            let _ = tokio::time::timeout(CLOSE_GRACE, async {
                while matches!(from.read(&mut buf).await, Ok(n) if n > 0) {}
            })
            .await;
            let _ = to.shutdown().await;
            return;
        }
        let n = tokio::select! {
            read = from.read(&mut buf) => match read {
                Ok(n) if n > 0 => n,
                _ => break,
            },
            _ = GOING_AWAY.cancelled(), if !going_away => {
                going_away = true;
                continue;
            }
        };
        frames.pass(&buf[..n]);
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
    let _ = to.shutdown().await;
}

/// Relays both ways until both sides are done. `to_client_first` and `to_server_first`
/// are what each side sent before the relay (the server right after its `101`, the client
/// right after its request): they go first.
pub async fn relay<C, S>(
    mut client: C,
    mut server: S,
    to_client_first: &[u8],
    to_server_first: &[u8],
) where
    C: AsyncRead + AsyncWrite + Unpin,
    S: AsyncRead + AsyncWrite + Unpin,
{
    if !to_client_first.is_empty() && client.write_all(to_client_first).await.is_err() {
        return;
    }
    if !to_server_first.is_empty() && server.write_all(to_server_first).await.is_err() {
        return;
    }
    let (mut to_client, mut to_server) = (Frames::default(), Frames::default());
    to_client.pass(to_client_first);
    to_server.pass(to_server_first);
    let (client_read, client_write) = tokio::io::split(client);
    let (server_read, server_write) = tokio::io::split(server);
    let close = close_to_server();
    tokio::join!(
        pipe(client_read, server_write, to_server, &close),
        pipe(server_read, client_write, to_client, &CLOSE_TO_CLIENT),
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn frame(masked: bool, payload: usize) -> Vec<u8> {
        let mut out = vec![0x82];
        let mask = if masked { 0x80 } else { 0 };
        match payload {
            0..=125 => out.push(mask | payload as u8),
            126..=0xffff => {
                out.push(mask | 126);
                out.extend_from_slice(&(payload as u16).to_be_bytes());
            }
            _ => {
                out.push(mask | 127);
                out.extend_from_slice(&(payload as u64).to_be_bytes());
            }
        }
        if masked {
            out.extend_from_slice(&[1, 2, 3, 4]);
        }
        out.extend(std::iter::repeat_n(b'x', payload));
        out
    }

    #[test]
    fn boundaries_are_found_with_every_length_form() {
        for (masked, payload) in [
            (false, 0),
            (true, 5),
            (false, 125),
            (true, 126),
            (false, 70_000),
        ] {
            let bytes = frame(masked, payload);
            let mut frames = Frames::default();
            frames.pass(&bytes[..bytes.len() - 1]);
            assert!(!frames.at_boundary() || bytes.len() == 1);
            frames.pass(&bytes[bytes.len() - 1..]);
            assert!(frames.at_boundary(), "{masked} {payload}");
        }
    }

    #[test]
    fn the_close_frames_say_1001() {
        let to_server = close_to_server();
        let status = [to_server[6] ^ to_server[2], to_server[7] ^ to_server[3]];
        assert_eq!(u16::from_be_bytes(status), 1001);
        assert_eq!(
            u16::from_be_bytes([CLOSE_TO_CLIENT[2], CLOSE_TO_CLIENT[3]]),
            1001
        );
        let mut frames = Frames::default();
        frames.pass(&to_server);
        assert!(frames.at_boundary());
    }

    #[test]
    fn the_close_handshake_fits_in_shutdown_timeout() {
        assert_eq!(
            going_away_after(Duration::from_secs(10)),
            Duration::from_secs(9)
        );
        assert_eq!(
            going_away_after(Duration::from_secs(1)),
            Duration::from_millis(500)
        );
        assert_eq!(going_away_after(Duration::ZERO), Duration::ZERO);
    }

    proptest! {
        /// However a run of frames is cut into reads, the boundaries are where the frames
        /// end, and only there.
        #[test]
        fn boundaries_do_not_depend_on_how_the_bytes_arrive(
            shapes in prop::collection::vec((any::<bool>(), prop_oneof![0usize..130, 60_000usize..70_000]), 1..6),
            cuts in prop::collection::vec(1usize..5000, 1..20),
        ) {
            let mut bytes = Vec::new();
            let mut ends = std::collections::BTreeSet::new();
            for (masked, payload) in shapes {
                bytes.extend(frame(masked, payload));
                ends.insert(bytes.len());
            }
            let mut frames = Frames::default();
            let mut at = 0;
            for cut in cuts.iter().cycle() {
                if at == bytes.len() {
                    break;
                }
                let next = (at + cut).min(bytes.len());
                frames.pass(&bytes[at..next]);
                at = next;
                prop_assert_eq!(frames.at_boundary(), ends.contains(&at));
            }
        }
    }
}
