//! Helpers the provider presets share: tolerance and public-URL config, timestamps, trying every
//! secret, reading a JSON field once a body is verified, and length-hiding token equality.
//! Each preset file stays the provider's algorithm and nothing else.

use std::time::{Duration, SystemTime};

use http::request::Parts;
use sha2::{Digest, Sha256};

use super::{ct_eq, BuildCtx, Verified, VerifyError};
use crate::config::raw::RawVerify;
use crate::config::units::parse_duration;
use crate::config::{Problems, Secret};

/// `tolerance`, or the provider's documented default.
pub(crate) fn tolerance(
    raw: &RawVerify,
    default: Duration,
    at: &str,
    p: &mut Problems,
) -> Duration {
    match raw.tolerance.as_deref().map(parse_duration) {
        None => default,
        Some(Ok(d)) => d,
        Some(Err(e)) => {
            p.error(format!("{at}.tolerance"), e);
            default
        }
    }
}

/// `server.public_url`, required by schemes that sign the URL the provider called.
pub(crate) fn public_url(ctx: &BuildCtx, scheme: &str, at: &str, p: &mut Problems) -> String {
    match ctx.public_url {
        Some(u) => u.trim_end_matches('/').to_string(),
        None => {
            p.error(
                "server.public_url",
                format!(
                    "is required by {at}.scheme = {scheme:?}: the provider signs the public URL it calls \
                     (e.g. public_url = \"https://hooks.example.com\")"
                ),
            );
            String::new()
        }
    }
}

/// The URL the provider called: public base URL + path + query as received.
pub(crate) fn request_url(public_url: &str, req: &Parts) -> String {
    let pq = req
        .uri
        .path_and_query()
        .map(|pq| pq.as_str())
        .unwrap_or("/");
    format!("{public_url}{pq}")
}

/// A timestamp of ASCII digits (optionally signed); anything else is `StaleTimestamp`.
pub(crate) fn parse_ts(s: &str) -> Result<i64, VerifyError> {
    let digits = s.strip_prefix('-').unwrap_or(s);
    if digits.is_empty() || digits.len() > 18 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(VerifyError::StaleTimestamp);
    }
    s.parse().map_err(|_| VerifyError::StaleTimestamp)
}

/// A timestamp header's text (unix seconds) as `Verifier::signed_at` gives it.
pub(crate) fn signed_at(ts: Option<&str>) -> Option<i64> {
    ts.and_then(|t| parse_ts(t).ok())
}

/// Checks `ts` (in `unit`s since the epoch) against `now ± tolerance`, both directions.
pub(crate) fn check_fresh(
    ts: i64,
    unit: Duration,
    now: SystemTime,
    tolerance: Duration,
) -> Result<(), VerifyError> {
    let now = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_err(|_| VerifyError::StaleTimestamp)?
        .as_nanos() as i128;
    let ts = ts as i128 * unit.as_nanos() as i128;
    if (now - ts).unsigned_abs() <= tolerance.as_nanos() {
        Ok(())
    } else {
        Err(VerifyError::StaleTimestamp)
    }
}

pub(crate) fn unix_secs(now: SystemTime) -> i64 {
    now.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// The index of the first secret `matches` accepts; every secret is tried (rotation).
pub(crate) fn find_secret(
    secrets: &[Secret],
    mut matches: impl FnMut(&[u8]) -> bool,
) -> Option<usize> {
    secrets.iter().position(|s| matches(s.expose()))
}

pub(crate) fn verified(
    scheme: &'static str,
    event_id: Option<String>,
    secret_index: Option<usize>,
) -> Verified {
    Verified {
        scheme,
        event_id: event_id.filter(|s| !s.is_empty()),
        secret_index,
        replay_key: None,
    }
}

/// `verified` for a scheme whose event id comes from a header its signature does not cover:
/// the replay key (see `Verified::replay_key`) is a SHA-256 over `parts`, what the signature
/// covers plus what tells the provider's events with equal content apart (Shopify sends
/// `orders/create` and `orders/updated` with byte-identical bodies: the topic is a part), each
/// part with its length so no two lists give the same bytes.
pub(crate) fn verified_unsigned_id(
    scheme: &'static str,
    event_id: Option<String>,
    secret_index: Option<usize>,
    parts: &[&[u8]],
) -> Verified {
    use sha2::{Digest, Sha256};
    // With or without an id: a capture resent with the id header left out must match too.
    let mut v = verified(scheme, event_id, secret_index);
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_be_bytes());
        h.update(p);
    }
    v.replay_key = Some(format!("signed:{}", hex::encode(h.finalize())));
    v
}

/// A top-level field of a JSON object body as text; call only on verified bytes.
pub(crate) fn json_field(body: &[u8], key: &str) -> Option<String> {
    let doc: serde_json::Value = serde_json::from_slice(body).ok()?;
    match doc.get(key)? {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// How much of a refused body `claimed_json_field` looks at: a provider's id comes first or
/// near it (Stripe's `{"id":"evt_…","object":"event",…}`).
const CLAIM_SCAN: usize = 64 << 10;

/// `json_field` of a body that failed verification, for its log line only: the string or
/// number under `key` at the top level within the body's first 64 KiB (the last one there, as
/// a verified body's key would be). The other fields are skipped, not built, and nothing past
/// 64 KiB is read: the body is anyone's. (Where it differs from what `json_field` would say of
/// the same bytes, a malformed document, the log line is only a claim anyway.)
pub(crate) fn claimed_json_field(body: &[u8], key: &str) -> Option<String> {
    use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, Visitor};
    use std::cell::RefCell;

    struct Field<'k> {
        key: &'k str,
        found: &'k RefCell<Option<String>>,
    }
    impl<'de> Visitor<'de> for Field<'_> {
        type Value = ();
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
            while let Some(k) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                if k != self.key {
                    map.next_value::<IgnoredAny>()?;
                    continue;
                }
                *self.found.borrow_mut() = match map.next_value::<serde_json::Value>()? {
                    serde_json::Value::String(s) => Some(s),
                    serde_json::Value::Number(n) => Some(n.to_string()),
                    _ => None,
                };
            }
            Ok(())
        }
    }
    impl<'de> DeserializeSeed<'de> for Field<'_> {
        type Value = ();
        fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_map(self)
        }
    }
    let found = RefCell::new(None);
    let scanned = &body[..body.len().min(CLAIM_SCAN)];
    let mut de = serde_json::Deserializer::from_slice(scanned);
    let _ = Field { key, found: &found }.deserialize(&mut de);
    found.into_inner().filter(|s| !s.is_empty())
}

/// A header as text, non-empty.
pub(crate) fn header_nonempty<'a>(req: &'a Parts, name: &str) -> Option<&'a str> {
    super::header(req, name).filter(|s| !s.is_empty())
}

/// A `key=value` list header carrying a timestamp and signatures (Stripe `t=…,v1=…`, Paddle
/// `ts=…;h1=…`, Calendly): the timestamp, and every signature under `sig_key` that decodes
/// as hex (several during a secret rotation; others are ignored).
pub(crate) fn timestamp_and_hex_signatures<'a>(
    header: &'a str,
    sep: char,
    ts_key: &str,
    sig_key: &str,
) -> (Option<&'a str>, Vec<Vec<u8>>) {
    let mut ts = None;
    let mut sigs = Vec::new();
    for item in header.split(sep) {
        match item.trim().split_once('=') {
            Some((k, v)) if k == ts_key => ts = Some(v),
            Some((k, v)) if k == sig_key => sigs.extend(super::Encoding::Hex.decode(v)),
            _ => {}
        }
    }
    (ts, sigs)
}

/// Whether `needle` occurs in `body`: a cheap pre-filter for handshakes, never a decision.
pub(crate) fn contains(body: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && body.windows(needle.len()).any(|w| w == needle)
}

/// Constant-time equality of two tokens that hides their lengths too (compares digests).
pub(crate) fn token_eq(a: &[u8], b: &[u8]) -> bool {
    ct_eq(&Sha256::digest(a), &Sha256::digest(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A refused body's id, for its log line: found without building the document, the last
    /// one (as a verified body's key), and nothing past the first 64 KiB looked at.
    #[test]
    fn a_claimed_json_field_is_the_first_at_the_top_level() {
        let f = |body: &str| claimed_json_field(body.as_bytes(), "id");
        assert_eq!(
            f(r#"{"id":"evt_1","object":"event"}"#),
            Some("evt_1".into())
        );
        assert_eq!(f(r#"{"data":{"id":"inner"},"id":42}"#), Some("42".into()));
        assert_eq!(f(r#"{"id":"a\u00e9\"b"}"#), Some("aé\"b".into()));
        assert_eq!(f(r#"{"id":"first","id":"last"}"#), Some("last".into()));
        assert_eq!(f(r#"{"id":"evt_1","broken":}"#), Some("evt_1".into()));
        let late = format!(r#"{{"pad":"{}","id":"evt_late"}}"#, "x".repeat(CLAIM_SCAN));
        assert_eq!(f(&late), None, "past the first 64 KiB");
        for not_one in [
            r#"{"other":[1,{"id":"x"}]}"#,
            r#"{"id":null}"#,
            r#"{"id":""}"#,
            r#"{"id":{"x":1}}"#,
            r#"["id","evt_1"]"#,
            r#""evt_1""#,
            "",
            "id=evt_1",
        ] {
            assert_eq!(f(not_one), None, "{not_one}");
        }
    }

    #[test]
    fn timestamps() {
        assert_eq!(parse_ts("1700000000"), Ok(1_700_000_000));
        for bad in ["", "17e8", " 1", "1.5", "-", "99999999999999999999"] {
            assert_eq!(parse_ts(bad), Err(VerifyError::StaleTimestamp), "{bad:?}");
        }
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        let s = Duration::from_secs(1);
        let tol = Duration::from_secs(10);
        assert!(check_fresh(990, s, now, tol).is_ok());
        assert!(check_fresh(1010, s, now, tol).is_ok());
        assert!(check_fresh(989, s, now, tol).is_err());
        assert!(check_fresh(1011, s, now, tol).is_err());
        assert!(check_fresh(i64::MAX, s, now, tol).is_err());
        assert!(check_fresh(1_000_010, Duration::from_millis(1), now, tol).is_ok());
        assert!(check_fresh(1_010_001, Duration::from_millis(1), now, tol).is_err());
    }

    #[test]
    fn tokens() {
        assert!(token_eq(b"abc", b"abc"));
        assert!(!token_eq(b"abc", b"abcd"));
        assert!(contains(b"xx url_verification", b"url_verification"));
        assert!(!contains(b"", b"x"));
    }
}

/// Resolves `public_key` (a literal, `env:` or `file:`; public, so a literal is fine).
pub(crate) fn public_key_text(raw: &RawVerify, at: &str, p: &mut Problems) -> Option<String> {
    let spec = raw.public_key.as_deref()?;
    match p.resolve(spec) {
        Ok((s, _)) => match s.expose_str() {
            Some(t) => Some(t.trim().to_string()),
            None => {
                p.error(format!("{at}.public_key"), "is not valid UTF-8");
                None
            }
        },
        Err(e) => {
            p.error(format!("{at}.public_key"), e);
            None
        }
    }
}

/// An Ed25519 public key from its 32 bytes; `what` describes the expected form for the error.
pub(crate) fn ed25519_key(
    bytes: Option<Vec<u8>>,
    what: &str,
    at: &str,
    p: &mut Problems,
) -> Option<ed25519_dalek::VerifyingKey> {
    let key = bytes
        .and_then(|b| <[u8; 32]>::try_from(b.as_slice()).ok())
        .and_then(|b| ed25519_dalek::VerifyingKey::from_bytes(&b).ok());
    if key.is_none() {
        p.error(
            format!("{at}.public_key"),
            format!("is not a valid Ed25519 public key (expected {what})"),
        );
    }
    key
}

/// Ed25519 verification over the concatenation of `chunks` (strict: rejects malleable forms).
pub(crate) fn ed25519_ok(key: &ed25519_dalek::VerifyingKey, sig: &[u8], chunks: &[&[u8]]) -> bool {
    let Ok(sig) = ed25519_dalek::Signature::from_slice(sig) else {
        return false;
    };
    let msg = chunks.concat();
    key.verify_strict(&msg, &sig).is_ok()
}

/// Shared by the presets' tests: build a verifier from TOML, make requests, fix the time.
#[cfg(test)]
pub(crate) mod testing {
    use std::sync::Arc;
    use std::time::{Duration, SystemTime};

    use http::request::Parts;

    use crate::config::raw::RawVerify;
    use crate::config::Problems;
    use crate::verify::{build, BuildCtx, Verifier};

    pub const PUBLIC_URL: &str = "https://hooks.example.com";

    /// Builds `[route.verify]` from TOML; `Err` holds every problem.
    pub fn try_build(
        toml_text: &str,
        public_url: Option<&str>,
    ) -> Result<Arc<dyn Verifier>, String> {
        let raw: RawVerify = toml::from_str(toml_text).map_err(|e| e.to_string())?;
        let mut p = Problems::default();
        let v = build(&raw, &BuildCtx { public_url }, "route[0].verify", &mut p);
        match v {
            Some(v) if p.errors.is_empty() => Ok(v),
            _ => Err(p.errors.join("\n")),
        }
    }

    pub fn verifier(toml_text: &str) -> Arc<dyn Verifier> {
        match try_build(toml_text, Some(PUBLIC_URL)) {
            Ok(v) => v,
            Err(e) => panic!("config rejected: {e}"),
        }
    }

    pub fn req_to(method: &str, uri: &str, headers: &[(&str, &str)]) -> Parts {
        let mut b = http::Request::builder().method(method).uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    pub fn req(headers: &[(&str, &str)]) -> Parts {
        req_to("POST", "/hook", headers)
    }

    pub fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    /// Turns `sign()` output into a request.
    pub fn signed_req(headers: &[(String, String)]) -> Parts {
        let h: Vec<(&str, &str)> = headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        req(&h)
    }
}
