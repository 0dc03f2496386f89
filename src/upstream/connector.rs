//! The one place upstream connections are taken from a server's pool, opened, and given
//! back to it.
//!
//! A pooled connection that turns out to be closing is replaced by a new one without
//! counting against the server: when the request's first write fails (not a byte went
//! out), and, for a request that may be sent again (`replayable`), when the connection
//! is reset after the request went out (the server closed an idle connection as we
//! reused it). If the new connection is reset as well, the server is going away
//! (killed, restarting): the request is handed back as not sent, and may go to another
//! server as if this one had refused the connection.

use super::http1::{ConnectError, Connection, ExchangeError, SendError, Timeouts, UpstreamBody};
use super::{Server, Upstream};
use bytes::Bytes;
use http::Response;
use http_body::Body;

/// The least an upstream is read at a time, and so the largest response head it may
/// send at least.
const MIN_UPSTREAM_READ: usize = 8 * 1024;

/// What became of one try on one server.
pub enum TryError<B: Body> {
    /// The request did not leave, or may leave again (a replayable request whose server
    /// went away): it may go to another server, with this, its body.
    NotSent(B, ConnectError),
    /// The request went out (at least in part): it cannot be sent again.
    Failed(ExchangeError<B::Error>),
}

pub struct Connector {
    /// How much of a response is read from an upstream at a time: an eighth of
    /// `response_buffer` (8 KiB by default, nginx's buffer size). A slow client holds one
    /// read, or two while the last frame is still being written.
    read_size: usize,
}

impl Connector {
    pub fn new(response_buffer: usize) -> Self {
        Connector {
            read_size: (response_buffer / 8).max(MIN_UPSTREAM_READ),
        }
    }

    /// Sends the request to `server` on a pooled connection, or a new one (always a new
    /// one for an upgrade, which takes the connection for itself), and reads the
    /// response head.
    pub async fn send<B>(
        &self,
        upstream: &Upstream,
        server: &Server,
        head: &http::request::Parts,
        mut body: B,
        replayable: bool,
        upgrade: bool,
    ) -> Result<Response<UpstreamBody<B>>, TryError<B>>
    where
        B: Body<Data = Bytes> + Unpin + Default,
    {
        let config = &upstream.config;
        let addr = server.config.addr;
        let timeouts = Timeouts {
            send: config.send_timeout,
            read: config.read_timeout,
        };
        let mut pooled = if upgrade { None } else { server.pool.take() };
        let mut replayed = false;
        loop {
            let reused = pooled.is_some();
            let conn = match pooled.take() {
                Some(conn) => conn,
                None => {
                    match Connection::open(addr, config.connect_timeout, self.read_size).await {
                        Ok(conn) => conn,
                        Err(e) => return Err(TryError::NotSent(body, e)),
                    }
                }
            };
            match conn.send(head, body, timeouts).await {
                Ok(response) => return Ok(response),
                Err(SendError::NotSent(back, _)) if reused => body = back,
                Err(SendError::NotSent(back, e)) => {
                    return Err(TryError::NotSent(back, ConnectError::NotTaken(addr, e)))
                }
                Err(SendError::Failed(ExchangeError::Closed(_))) if replayable && reused => {
                    body = B::default();
                    replayed = true;
                }
                Err(SendError::Failed(ExchangeError::Closed(why))) if replayable && replayed => {
                    return Err(TryError::NotSent(
                        B::default(),
                        ConnectError::Closing(addr, why),
                    ));
                }
                Err(SendError::Failed(e)) => return Err(TryError::Failed(e)),
            }
        }
    }

    /// A connection whose last exchange completed goes back to its server's pool.
    pub fn give_back(server: &Server, conn: Connection) {
        server.pool.put(conn);
    }
}
