//! Every answer the ingress gives besides 202/200, as one enum: status, error code (also the
//! metric outcome) and JSON body of SPEC §5. Bodies never echo request data or secrets.

use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::Full;

use crate::verify::VerifyError;

pub type Reply = Response<Full<Bytes>>;

/// What a request refused by verification claimed, unverified: the dedupe key it would have
/// been recorded under and, for a refused timestamp, how many seconds it lies behind this
/// host's clock (negative: ahead). Only logged.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Claimed {
    pub key: Option<String>,
    pub skew_secs: Option<i64>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Reject {
    NotFound,
    MethodNotAllowed(HeaderValue),
    Forbidden,
    RateLimited(Duration),
    BodyTooLarge,
    /// Verification failed; what the request claimed, for the log line.
    Verify(VerifyError, Box<Claimed>),
    MissingDedupeKey,
    Unavailable,
    /// The bytes of bodies being received, all routes together, fill
    /// `server.max_body_memory`: `503 unavailable` too, for a moment.
    BodyMemoryFull,
    /// The body did not arrive within `server.body_timeout`.
    RequestTimeout,
    /// The client broke off or sent a malformed body.
    BadRequest,
    /// The request head (line and headers) is over 64 KiB.
    HeadersTooLarge,
    /// A transfer coding other than `chunked` (e.g. `gzip, chunked`): the body would reach
    /// the upstream still coded, with nothing saying so.
    UnsupportedTransferCoding,
    /// The query string would make the upstream URL longer than an HTTP client can send
    /// (`forward.url` + query over 65,534 bytes): no attempt could deliver the event.
    UriTooLong,
}

impl Reject {
    pub fn code(&self) -> &'static str {
        match self {
            Reject::NotFound => "not_found",
            Reject::MethodNotAllowed(_) => "method_not_allowed",
            Reject::Forbidden => "forbidden",
            Reject::RateLimited(_) => "rate_limited",
            Reject::BodyTooLarge => "body_too_large",
            Reject::Verify(e, _) => e.code(),
            Reject::MissingDedupeKey => "missing_dedupe_key",
            Reject::Unavailable | Reject::BodyMemoryFull => "unavailable",
            Reject::RequestTimeout => "request_timeout",
            Reject::BadRequest => "bad_request",
            Reject::HeadersTooLarge => "headers_too_large",
            Reject::UnsupportedTransferCoding => "unsupported_transfer_coding",
            Reject::UriTooLong => "uri_too_long",
        }
    }

    /// The metrics' and the log's outcome: the error code, but for bodies refused for want of
    /// memory, told apart from a store that cannot record (which pages someone).
    pub fn outcome(&self) -> &'static str {
        match self {
            Reject::BodyMemoryFull => "body_memory_full",
            other => other.code(),
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Reject::NotFound => StatusCode::NOT_FOUND,
            Reject::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Reject::Forbidden => StatusCode::FORBIDDEN,
            Reject::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            Reject::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Reject::Verify(..) => StatusCode::UNAUTHORIZED,
            Reject::MissingDedupeKey | Reject::BadRequest => StatusCode::BAD_REQUEST,
            Reject::Unavailable | Reject::BodyMemoryFull => StatusCode::SERVICE_UNAVAILABLE,
            Reject::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            Reject::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Reject::UnsupportedTransferCoding => StatusCode::NOT_IMPLEMENTED,
            Reject::UriTooLong => StatusCode::URI_TOO_LONG,
        }
    }

    pub fn response(&self) -> Reply {
        let mut r = json(self.status(), format!("{{\"error\":\"{}\"}}", self.code()));
        let h = r.headers_mut();
        match self {
            Reject::MethodNotAllowed(allow) => {
                h.insert(header::ALLOW, allow.clone());
            }
            Reject::RateLimited(wait) => {
                let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
                h.insert(header::RETRY_AFTER, HeaderValue::from(secs));
            }
            Reject::Unavailable => {
                h.insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
            }
            Reject::BodyMemoryFull => {
                // Bodies in flight last milliseconds, or until body_timeout cuts a slow one
                // off; the body was not read to its end, so the connection cannot be reused.
                h.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                h.insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            Reject::BodyTooLarge
            | Reject::RequestTimeout
            | Reject::BadRequest
            | Reject::HeadersTooLarge
            | Reject::UnsupportedTransferCoding
            | Reject::UriTooLong => {
                // The body was not read to its end: the connection cannot be reused.
                h.insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            _ => {}
        }
        r
    }
}

pub fn json(status: StatusCode, body: String) -> Reply {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

pub fn accepted(event_id: &str) -> Reply {
    json(
        StatusCode::ACCEPTED,
        format!("{{\"status\":\"accepted\",\"event_id\":\"{event_id}\"}}"),
    )
}

pub fn duplicate(event_id: &str) -> Reply {
    json(
        StatusCode::OK,
        format!("{{\"status\":\"duplicate\",\"event_id\":\"{event_id}\"}}"),
    )
}
