//! Every answer the gateway makes itself, rather than pass on from an upstream: the
//! failures (400 to 504) and the redirects, all written by [`own`], so they look alike
//! and each leaves its reason in the access log.

use super::body::ResponseBody;
use super::failure::Failure;
use super::request_log::RequestLog;
use super::route::host_without_port;
use crate::config::Redirect;
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Response, StatusCode, Uri};

/// The body of an answer of our own: the status and its reason phrase, one line of
/// plain text (the HTTP/1 engine's refusals of requests that never became one use it too).
pub fn status_text(status: StatusCode) -> String {
    format!(
        "{} {}\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    )
}

/// The answer to a request that failed. The client connection closes after it when the
/// failure says so, and after a refused WebSocket upgrade (the client may already be
/// sending frames, which must not be read as a next request).
pub fn failure(log: RequestLog, failure: Failure, upgrade: bool) -> Response<ResponseBody> {
    let status = failure.status();
    let close = failure.closes_client() || upgrade;
    // RFC 9110 §15.5.6: a 405 says which methods the resource takes; RFC 6585: a 429
    // may say when to come back.
    let extra = match &failure {
        Failure::MethodNotAllowed(allow) => Some((header::ALLOW, allow.clone())),
        Failure::RateLimited { retry_after } => {
            Some((header::RETRY_AFTER, HeaderValue::from(*retry_after)))
        }
        _ => None,
    };
    own(
        log,
        status,
        status_text(status),
        extra,
        Some(failure.reason()),
        close,
    )
}

/// A directory asked for without its trailing `/`: `301` to it, as nginx does.
pub fn moved(log: RequestLog, location: &str) -> Response<ResponseBody> {
    let status = StatusCode::MOVED_PERMANENTLY;
    match HeaderValue::from_str(location) {
        Ok(value) => own(
            log,
            status,
            format!("301 {location}\n"),
            Some((header::LOCATION, value)),
            None,
            false,
        ),
        Err(_) => failure(log, Failure::NoFile, false),
    }
}

/// An ACME HTTP-01 validation: `200` with the token's key authorization.
pub fn challenge(log: RequestLog, key_authorization: String) -> Response<ResponseBody> {
    own(log, StatusCode::OK, key_authorization, None, None, false)
}

/// The answer of a `redirect` route: `Location` from its template, `{host}` being the
/// host the request named (without port) and `{uri}` its path and query.
pub fn redirect(
    log: RequestLog,
    redirect: &Redirect,
    host: Option<&HeaderValue>,
    uri: &Uri,
) -> Response<ResponseBody> {
    let host = host_without_port(host.and_then(|h| h.to_str().ok()).unwrap_or_default());
    let target = uri.path_and_query().map_or("/", |p| p.as_str());
    let location = redirect
        .location
        .replace("{host}", host)
        .replace("{uri}", target);
    let Ok(value) = HeaderValue::from_str(&location) else {
        let why = format!("the redirect's Location is not a valid header value: {location:?}");
        let status = StatusCode::BAD_REQUEST;
        return own(log, status, status_text(status), None, Some(why), true);
    };
    let text = format!("{} {}\n", redirect.status.as_u16(), location);
    own(
        log,
        redirect.status,
        text,
        Some((header::LOCATION, value)),
        None,
        false,
    )
}

/// Writes an answer of our own: short plain text, one more header when it needs one
/// (`Location`, `Allow`), and `Connection: close` when the client connection must not
/// carry another request.
fn own(
    mut log: RequestLog,
    status: StatusCode,
    text: String,
    extra: Option<(header::HeaderName, HeaderValue)>,
    error: Option<String>,
    close: bool,
) -> Response<ResponseBody> {
    log.status = status.as_u16();
    log.error = error;
    let mut response = Response::new(ResponseBody::fixed(Bytes::from(text), log));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    if let Some((name, value)) = extra {
        headers.insert(name, value);
    }
    if close {
        headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// A route's `error_pages`: a response with one of their statuses (the gateway's own or
/// the upstream's) gets the page as its body, the status unchanged.
pub fn error_page(
    response: &mut Response<ResponseBody>,
    pages: &[(StatusCode, crate::config::ErrorPage)],
) {
    let Some((_, page)) = pages
        .iter()
        .find(|(status, _)| *status == response.status())
    else {
        return;
    };
    let headers = response.headers_mut();
    for name in [
        header::CONTENT_ENCODING,
        header::TRANSFER_ENCODING,
        header::CONTENT_RANGE,
        header::ETAG,
        header::LAST_MODIFIED,
    ] {
        headers.remove(name);
    }
    headers.insert(header::CONTENT_TYPE, page.content_type.clone());
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(page.body.len()));
    response.body_mut().replace(page.body.clone());
}
