//! Verification: one `Verifier` per route, built once from config. A verifier is pure — no
//! I/O, time passed in — so every scheme is tested exactly, without sleeps.
//!
//! Adding a scheme is one file here, one arm in [`build`]. Promises every verifier keeps:
//! secrets are compared in constant time, every configured secret is tried (rotation), and
//! an error never carries the expected signature.

mod crypto;
mod hmac;
mod none;

// Provider presets (issue 3, part b).
mod calendly;
mod hubspot;
mod intercom;
mod kit;
mod meta;
mod msgraph;
pub(crate) mod okta;
mod razorpay;
mod sendgrid;
mod twitch;
mod typeform;
// Provider presets (issue 3). One file each; `preset` holds what they share.
mod basic;
mod bearer;
mod discord;
mod github;
pub(crate) mod gitlab;
mod linear;
mod paddle;
mod preset;
mod shopify;
mod slack;
mod square;
mod standard_webhooks;
mod stripe;
mod twilio;
mod zoom;

use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use http::request::Parts;
use http::{Method, StatusCode};

use crate::config::raw::RawVerify;
use crate::config::{Problems, Secret};

pub use crypto::{ct_eq, mac, Algorithm, Encoding};

/// The proof that a request passed verification; the only way to build a recordable event.
#[derive(Debug, Clone)]
pub struct Verified {
    /// The configured scheme's name, sent upstream as `Hookgate-Verified`.
    pub scheme: &'static str,
    /// The provider's own id for the event (for `dedupe.key = "auto"`), when it has one.
    pub event_id: Option<String>,
    /// Which configured secret matched (its index, never its value).
    pub secret_index: Option<usize>,
    /// Set when `event_id` comes from a header the signature does not cover: a key over what
    /// the signature does cover, recorded beside the id's (`dedupe::replay_key`). Otherwise a
    /// captured request sent again under a fresh id would be a new event.
    pub replay_key: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerifyError {
    MissingSignature,
    InvalidSignature,
    StaleTimestamp,
}

impl VerifyError {
    pub fn code(self) -> &'static str {
        match self {
            VerifyError::MissingSignature => "missing_signature",
            VerifyError::InvalidSignature => "invalid_signature",
            VerifyError::StaleTimestamp => "stale_timestamp",
        }
    }
}

/// A reply the gateway sends itself (a provider's endpoint handshake); nothing is recorded.
#[derive(Debug, Clone)]
pub struct Handshake {
    pub status: StatusCode,
    pub content_type: &'static str,
    pub body: Bytes,
}

pub trait Verifier: Send + Sync + fmt::Debug {
    fn scheme(&self) -> &'static str;

    /// Pure: no I/O; `now` passed in. Tries every configured secret.
    fn verify(&self, req: &Parts, body: &[u8], now: SystemTime) -> Result<Verified, VerifyError>;

    /// The provider's event id a request `verify` refused carries, read where `verify` reads
    /// it, for its log line only (never trusted): an operator asked about a provider's event
    /// finds that it came and why it was refused. A body is only scanned, never built
    /// (`preset::claimed_json_field`): it is anyone's.
    fn claimed_id(&self, _req: &Parts, _body: &[u8]) -> Option<String> {
        None
    }

    /// The time (unix seconds) a request refused as stale says it was signed at, read where
    /// `verify` reads it, for its log line (`skew_s`).
    fn signed_at(&self, _req: &Parts, _body: &[u8]) -> Option<i64> {
        None
    }

    /// A provider handshake this request is, answered by the gateway (after verifying it where
    /// the provider signs it). `None`: an ordinary event, go on to `verify`.
    fn handshake(
        &self,
        _req: &Parts,
        _body: &[u8],
        _now: SystemTime,
    ) -> Option<Result<Handshake, VerifyError>> {
        None
    }

    /// Methods the scheme needs besides POST when `methods` is not configured (GET handshakes).
    fn extra_methods(&self) -> &'static [Method] {
        &[]
    }

    /// Headers of a correctly signed request for `body` at `now` (`hookgate sign`), with the
    /// first configured secret; `url` is the public URL the provider would call, `method` the
    /// one the request is sent with (only `hmac` with `{method}` in its template signs it). `None` when
    /// the scheme cannot sign (public-key schemes need the provider's private key).
    fn sign(
        &self,
        _method: &http::Method,
        _body: &[u8],
        _now: SystemTime,
        _url: &str,
    ) -> Option<Vec<(String, String)>> {
        None
    }

    /// Whether the provider signs a timestamp and signs every retry afresh (Stripe, Standard
    /// Webhooks/Svix, Slack): then a duplicate carrying the original's very signature is no
    /// retry but a replayed capture, worth a warning. `false` where a redelivery carries the
    /// same signature (GitHub, Shopify, Twilio, Meta…) or it is not known (the generic `hmac`:
    /// a sender's HTTP client may resend the same bytes; a 2-hour soak with 1 % such copies
    /// warned 28,931 times).
    fn retries_resigned(&self) -> bool {
        false
    }

    /// The request header (lower-case name) that carries the route's secret itself, a static
    /// token compared as sent, besides `Authorization`, which is always treated so: shown
    /// masked wherever the admin API shows an event's headers.
    fn credential_header(&self) -> Option<&str> {
        None
    }
}

/// What a scheme's builder may need besides its own keys.
pub struct BuildCtx<'a> {
    pub public_url: Option<&'a str>,
}

/// Every `scheme` `build` knows, for the message naming an unknown one.
const SCHEMES: &[&str] = &[
    "hmac",
    "none",
    "stripe",
    "github",
    "standard-webhooks",
    "svix",
    "slack",
    "shopify",
    "twilio",
    "discord",
    "paddle",
    "square",
    "zoom",
    "linear",
    "gitlab",
    "basic",
    "bearer",
    "typeform",
    "razorpay",
    "twitch",
    "meta",
    "intercom",
    "calendly",
    "hubspot",
    "sendgrid",
    "msgraph",
    "okta",
];

/// Builds the route's verifier from `[route.verify]`, recording problems under `at`.
pub fn build(
    raw: &RawVerify,
    ctx: &BuildCtx,
    at: &str,
    p: &mut Problems,
) -> Option<Arc<dyn Verifier>> {
    let Some(scheme) = raw.scheme.as_deref() else {
        p.error(
            format!("{at}.scheme"),
            "is required (a scheme name, or \"none\" for an unverified route)",
        );
        return None;
    };
    match scheme {
        "hmac" => hmac::build(raw, ctx, at, p).map(|v| Arc::new(v) as Arc<dyn Verifier>),
        "none" => none::build(raw, at, p).map(|v| Arc::new(v) as Arc<dyn Verifier>),
        "typeform" => typeform::build(raw, at, p).map(|v| Arc::new(v) as Arc<dyn Verifier>),
        "razorpay" => razorpay::build(raw, at, p).map(|v| Arc::new(v) as Arc<dyn Verifier>),
        "twitch" => twitch::build(raw, at, p).map(|v| Arc::new(v) as Arc<dyn Verifier>),
        "meta" => meta::build(raw, at, p).map(|v| Arc::new(v) as Arc<dyn Verifier>),
        "intercom" => intercom::build(raw, at, p).map(|v| Arc::new(v) as Arc<dyn Verifier>),
        "calendly" => calendly::build(raw, at, p).map(|v| Arc::new(v) as Arc<dyn Verifier>),
        "hubspot" => hubspot::build(raw, ctx, at, p).map(|v| Arc::new(v) as Arc<dyn Verifier>),
        "sendgrid" => sendgrid::build(raw, at, p).map(|v| Arc::new(v) as Arc<dyn Verifier>),
        "msgraph" => msgraph::build(raw, at, p).map(|v| Arc::new(v) as Arc<dyn Verifier>),
        "okta" => okta::build(raw, at, p).map(|v| Arc::new(v) as Arc<dyn Verifier>),
        "stripe" => stripe::build(raw, at, p).map(|v| Arc::new(v) as Arc<dyn Verifier>),
        "github" => github::build(raw, at, p).map(|v| Arc::new(v) as Arc<dyn Verifier>),
        "standard-webhooks" => standard_webhooks::build(raw, "standard-webhooks", at, p)
            .map(|v| Arc::new(v) as Arc<dyn Verifier>),
        "svix" => {
            standard_webhooks::build(raw, "svix", at, p).map(|v| Arc::new(v) as Arc<dyn Verifier>)
        }
        "slack" => slack::build(raw, at, p).map(|v| Arc::new(v) as Arc<dyn Verifier>),
        "shopify" => shopify::build(raw, at, p).map(|v| Arc::new(v) as Arc<dyn Verifier>),
        "twilio" => twilio::build(raw, ctx, at, p).map(|v| Arc::new(v) as Arc<dyn Verifier>),
        "discord" => discord::build(raw, at, p).map(|v| Arc::new(v) as Arc<dyn Verifier>),
        "paddle" => paddle::build(raw, at, p).map(|v| Arc::new(v) as Arc<dyn Verifier>),
        "square" => square::build(raw, ctx, at, p).map(|v| Arc::new(v) as Arc<dyn Verifier>),
        "zoom" => zoom::build(raw, at, p).map(|v| Arc::new(v) as Arc<dyn Verifier>),
        "linear" => linear::build(raw, at, p).map(|v| Arc::new(v) as Arc<dyn Verifier>),
        "gitlab" => gitlab::build(raw, at, p).map(|v| Arc::new(v) as Arc<dyn Verifier>),
        "basic" => basic::build(raw, at, p).map(|v| Arc::new(v) as Arc<dyn Verifier>),
        "bearer" => bearer::build(raw, at, p).map(|v| Arc::new(v) as Arc<dyn Verifier>),
        other => {
            p.error(
                format!("{at}.scheme"),
                format!(
                    "unknown scheme {other:?} (expected one of {})",
                    SCHEMES.join(", ")
                ),
            );
            None
        }
    }
}

/// Refuses keys a scheme does not use, so a misplaced setting is never silently ignored.
pub(crate) fn only_keys(
    raw: &RawVerify,
    allowed: &[&str],
    scheme: &str,
    at: &str,
    p: &mut Problems,
) {
    let set = [
        ("secrets", raw.secrets.is_some()),
        ("public_key", raw.public_key.is_some()),
        ("verify_token", raw.verify_token.is_some()),
        ("signature_header", raw.signature_header.is_some()),
        ("timestamp_header", raw.timestamp_header.is_some()),
        ("signed_payload", raw.signed_payload.is_some()),
        ("id_header", raw.id_header.is_some()),
        ("algorithm", raw.algorithm.is_some()),
        ("encoding", raw.encoding.is_some()),
        ("signature_prefix", raw.signature_prefix.is_some()),
        ("tolerance", raw.tolerance.is_some()),
    ];
    for (key, present) in set {
        if present && !allowed.contains(&key) {
            p.error(
                format!("{at}.{key}"),
                format!("not used by scheme {scheme:?}"),
            );
        }
    }
}

/// Resolves `secrets`, requiring at least one.
pub(crate) fn secrets(raw: &RawVerify, at: &str, p: &mut Problems) -> Vec<Secret> {
    match raw.secrets.as_deref() {
        None | Some([]) => {
            p.error(format!("{at}.secrets"), "at least one secret is required");
            Vec::new()
        }
        Some(list) => list
            .iter()
            .enumerate()
            .filter_map(|(i, s)| {
                crate::config::resolve_secret_at(s, &format!("{at}.secrets[{i}]"), p)
            })
            .collect(),
    }
}

/// A header's value as text; `None` when absent or not visible ASCII/UTF-8.
pub(crate) fn header<'a>(req: &'a Parts, name: &str) -> Option<&'a str> {
    req.headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
}

/// Checks a unix-seconds timestamp against `now ± tolerance`, in both directions.
pub(crate) fn fresh(ts_secs: i64, now: SystemTime, tolerance: std::time::Duration) -> bool {
    let now = match now.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(_) => return false,
    };
    now.abs_diff(ts_secs) <= tolerance.as_secs()
}

#[cfg(test)]
mod tests {
    /// The list an unknown scheme's message gives holds only schemes `build` knows.
    #[test]
    fn every_listed_scheme_is_known() {
        for scheme in super::SCHEMES {
            let raw: crate::config::raw::RawVerify =
                toml::from_str(&format!("scheme = {scheme:?}")).unwrap();
            let mut p = crate::config::Problems::default();
            super::build(&raw, &super::BuildCtx { public_url: None }, "v", &mut p);
            assert!(
                p.errors.iter().all(|e| !e.contains("unknown scheme")),
                "{scheme}: {:?}",
                p.errors
            );
        }
    }
}
