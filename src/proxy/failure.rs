//! Why a request got no answer from an upstream: the one failure type of the request
//! path. Each stage returns it, and it alone decides the client's status, whether the
//! client connection closes after the answer, whether the server is blamed for passive
//! health, and whether the request may go to another server.

use super::body::ClientBodyError;
use super::check::Rejection;
use crate::config::RetryOn;
use crate::upstream::http1::{ConnectError, ExchangeError};
use http::StatusCode;

#[derive(Debug)]
pub enum Failure {
    /// The request itself is not acceptable (its target, Host, framing, path): refused
    /// before it goes anywhere.
    Refused(Rejection),
    NoRoute,
    /// The route's `allow` / `deny` keep the client out.
    Forbidden,
    /// The client is over the route's rate limit: it may try again in this many seconds.
    RateLimited {
        retry_after: u64,
    },
    /// A route with `root` has no such file (and no fallback).
    NoFile,
    /// The route (or a route with `root`) does not take this method: `Allow` says which.
    MethodNotAllowed(http::HeaderValue),
    NoServerUp,
    /// The gateway is out of file descriptors or the like: its own trouble, not the
    /// server's.
    OutOfResources(ConnectError),
    Unreachable(ConnectError),
    /// The upstream did not take the request within send_timeout or answer within
    /// read_timeout: which, and how, in words.
    Timeout(&'static str),
    /// The connection closed or was reset before any response byte.
    Reset(String),
    BadResponse(String),
    /// The client's body broke, stalled or was too large.
    ClientBody(ClientBodyError),
}

impl From<Rejection> for Failure {
    fn from(rejection: Rejection) -> Self {
        Failure::Refused(rejection)
    }
}

impl From<ExchangeError<ClientBodyError>> for Failure {
    /// What an exchange that went out and got no response says.
    fn from(error: ExchangeError<ClientBodyError>) -> Self {
        match error {
            ExchangeError::RequestBody(body) => Failure::ClientBody(body),
            ExchangeError::HeadTooLarge => Failure::BadResponse(
                "upstream response head too large: it must fit in one read, an eighth of \
                 gateway.response_buffer"
                    .to_string(),
            ),
            ExchangeError::Invalid(why) => {
                Failure::BadResponse(format!("upstream sent an invalid response: {why}"))
            }
            ExchangeError::Closed(why) => Failure::Reset(format!(
                "upstream closed the connection before answering: {why}"
            )),
            ExchangeError::SendTimeout => {
                Failure::Timeout("upstream took no request bytes within send_timeout")
            }
            ExchangeError::ReadTimeout => Failure::Timeout(
                "upstream did not answer within read_timeout of the end of the request",
            ),
        }
    }
}

impl Failure {
    /// A server that could not be connected to: the gateway's own trouble when the
    /// connect failed for want of a local resource.
    pub fn of_connect(error: ConnectError) -> Self {
        if error.is_local() {
            Failure::OutOfResources(error)
        } else {
            Failure::Unreachable(error)
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Failure::Refused(rejection) => rejection.status,
            Failure::NoRoute | Failure::NoFile => StatusCode::NOT_FOUND,
            Failure::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Failure::Forbidden => StatusCode::FORBIDDEN,
            Failure::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Failure::NoServerUp | Failure::OutOfResources(_) => StatusCode::SERVICE_UNAVAILABLE,
            Failure::Unreachable(ConnectError::Timeout(_)) | Failure::Timeout(_) => {
                StatusCode::GATEWAY_TIMEOUT
            }
            Failure::Unreachable(_) | Failure::Reset(_) | Failure::BadResponse(_) => {
                StatusCode::BAD_GATEWAY
            }
            Failure::ClientBody(ClientBodyError::Timeout(_)) => StatusCode::REQUEST_TIMEOUT,
            Failure::ClientBody(ClientBodyError::Broken(_)) => StatusCode::BAD_REQUEST,
            Failure::ClientBody(ClientBodyError::TooLarge(_)) => StatusCode::PAYLOAD_TOO_LARGE,
        }
    }

    /// Why, for the log line.
    pub fn reason(&self) -> String {
        match self {
            Failure::Refused(rejection) => rejection.reason.into(),
            Failure::NoRoute => "no route matches".into(),
            Failure::Forbidden => "the route's allow and deny lists keep this client out".into(),
            Failure::RateLimited { .. } => "the client is over the route's rate limit".into(),
            Failure::NoFile => "no such file".into(),
            Failure::MethodNotAllowed(allow) => format!(
                "the method is not one the route takes ({})",
                String::from_utf8_lossy(allow.as_bytes())
            ),
            Failure::NoServerUp => "no server of the upstream is up".into(),
            Failure::Unreachable(e) => e.to_string(),
            Failure::OutOfResources(e) => format!("the gateway is out of resources: {e}"),
            Failure::Timeout(why) => why.to_string(),
            Failure::Reset(why) | Failure::BadResponse(why) => why.clone(),
            Failure::ClientBody(e) => e.to_string(),
        }
    }

    /// Whether the failure says something about the upstream server's health.
    pub fn blames_server(&self) -> bool {
        matches!(
            self,
            Failure::Unreachable(_)
                | Failure::Timeout(_)
                | Failure::Reset(_)
                | Failure::BadResponse(_)
        )
    }

    /// Whether the client connection must close after the answer: a refused request may
    /// have framing we cannot trust, and a body that broke or was cut off leaves unread
    /// bytes that must not be taken for the next request.
    pub fn closes_client(&self) -> bool {
        matches!(self, Failure::Refused(_) | Failure::ClientBody(_))
    }

    /// Whether a request that went out and failed this way may go to another server, as
    /// `retry_on` says (the request must also be replayable and the retry budget allow
    /// it: the upstream stage checks those). A request that never left may always go on.
    pub fn retryable(&self, retry_on: RetryOn) -> bool {
        match self {
            Failure::Reset(_) => retry_on.reset,
            Failure::Timeout(_) => retry_on.timeout,
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn each_failure_has_its_status_close_and_blame() {
        let addr = "127.0.0.1:1".parse().unwrap();
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let no_fds = std::io::Error::from_raw_os_error(libc::EMFILE);
        let cases = [
            (Failure::NoRoute, 404, false, false),
            (Failure::NoServerUp, 503, false, false),
            (
                Failure::of_connect(ConnectError::Io(addr, no_fds)),
                503,
                false,
                false,
            ),
            (
                Failure::of_connect(ConnectError::Io(addr, refused)),
                502,
                false,
                true,
            ),
            (
                Failure::of_connect(ConnectError::Timeout(addr)),
                504,
                false,
                true,
            ),
            (ExchangeError::ReadTimeout.into(), 504, false, true),
            (ExchangeError::Closed("x".into()).into(), 502, false, true),
            (ExchangeError::HeadTooLarge.into(), 502, false, true),
            (
                Failure::ClientBody(ClientBodyError::Timeout(Duration::from_secs(1))),
                408,
                true,
                false,
            ),
            (
                Failure::ClientBody(ClientBodyError::TooLarge(10)),
                413,
                true,
                false,
            ),
            (
                Rejection {
                    status: StatusCode::METHOD_NOT_ALLOWED,
                    reason: "TRACE is not allowed",
                }
                .into(),
                405,
                true,
                false,
            ),
        ];
        for (failure, status, closes, blames) in cases {
            assert_eq!(failure.status().as_u16(), status, "{failure:?}");
            assert_eq!(failure.closes_client(), closes, "{failure:?}");
            assert_eq!(failure.blames_server(), blames, "{failure:?}");
        }
    }
}
