//! Small pieces the provider presets share: trying every secret against every received
//! signature in constant time, a preset's `tolerance`, freshness of millisecond and
//! RFC 3339 timestamps, query parameters, and provider event ids read from a body that has
//! already been verified.

use std::time::{Duration, SystemTime};

use http::request::Parts;

use super::{crypto, Algorithm, Encoding, VerifyError};
use crate::config::Secret;

/// Index of the first secret whose MAC over `chunks` equals any of `candidates`.
pub(crate) fn match_secret(
    alg: Algorithm,
    secrets: &[Secret],
    chunks: &[&[u8]],
    candidates: &[Vec<u8>],
) -> Option<usize> {
    secrets.iter().position(|s| {
        let expected = crypto::mac(alg, s.expose(), chunks);
        // `|` not `||`: every candidate is compared, whichever matches.
        candidates
            .iter()
            .fold(false, |hit, c| hit | crypto::ct_eq(c, &expected))
    })
}

pub(crate) use super::preset::{token_eq, tolerance};

/// The index of the first of `secrets` equal to `sent` (see [`token_eq`]); all are compared.
pub(crate) fn match_token(secrets: &[Secret], sent: &[u8]) -> Option<usize> {
    let mut found = None;
    for (i, s) in secrets.iter().enumerate() {
        if token_eq(sent, s.expose()) && found.is_none() {
            found = Some(i);
        }
    }
    found
}

/// `|now - t| <= tolerance`, in both directions.
pub(crate) fn within(t: SystemTime, now: SystemTime, tolerance: Duration) -> bool {
    match now.duration_since(t) {
        Ok(age) => age <= tolerance,
        Err(e) => e.duration() <= tolerance,
    }
}

/// A unix-milliseconds timestamp header, checked against `now ± tolerance`.
pub(crate) fn fresh_millis(
    ts: Option<&str>,
    now: SystemTime,
    tolerance: Duration,
) -> Result<(), VerifyError> {
    let ms: u64 = ts
        .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|s| s.parse().ok())
        .ok_or(VerifyError::StaleTimestamp)?;
    let t = SystemTime::UNIX_EPOCH
        .checked_add(Duration::from_millis(ms))
        .ok_or(VerifyError::StaleTimestamp)?;
    if within(t, now, tolerance) {
        Ok(())
    } else {
        Err(VerifyError::StaleTimestamp)
    }
}

/// A unix-seconds timestamp, checked against `now ± tolerance`.
pub(crate) fn fresh_secs(
    ts: Option<&str>,
    now: SystemTime,
    tolerance: Duration,
) -> Result<(), VerifyError> {
    let secs: u64 = ts
        .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|s| s.parse().ok())
        .ok_or(VerifyError::StaleTimestamp)?;
    let t = SystemTime::UNIX_EPOCH
        .checked_add(Duration::from_secs(secs))
        .ok_or(VerifyError::StaleTimestamp)?;
    if within(t, now, tolerance) {
        Ok(())
    } else {
        Err(VerifyError::StaleTimestamp)
    }
}

/// The first value of query parameter `name`, percent-decoded.
pub(crate) fn query_param(req: &Parts, name: &str) -> Option<String> {
    let q = req.uri.query()?;
    form_urlencoded::parse(q.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// A scalar at `pointer` in a JSON body, as text (strings unquoted). Call only after the
/// body's signature verified.
pub(crate) fn json_id(body: &[u8], pointer: &str) -> Option<String> {
    let doc: serde_json::Value = serde_json::from_slice(body).ok()?;
    scalar(doc.pointer(pointer)?)
}

fn scalar(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) if !s.is_empty() => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// The id of a batch body (a JSON array of events): for each event its `fields` joined with
/// `:`, the events joined with `,` in body order (hashed when long); `None` unless every event
/// has every field. A redelivered batch has the same ids, so it de-duplicates even when other
/// fields (attempt numbers) change.
pub(crate) fn batch_id(body: &[u8], fields: &[&str]) -> Option<String> {
    let doc: serde_json::Value = serde_json::from_slice(body).ok()?;
    let items = doc.as_array().filter(|a| !a.is_empty())?;
    let ids: Option<Vec<String>> = items
        .iter()
        .map(|e| {
            let parts: Option<Vec<String>> = fields.iter().map(|f| scalar(e.get(*f)?)).collect();
            parts.map(|p| p.join(":"))
        })
        .collect();
    let joined = ids?.join(",");
    if joined.len() <= 256 {
        Some(joined)
    } else {
        use sha2::Digest;
        Some(format!(
            "sha256-of-ids:{}",
            hex::encode(sha2::Sha256::digest(joined.as_bytes()))
        ))
    }
}

/// The usual "one header, optional prefix, MAC over the raw body" check: the header's value
/// may carry several signatures separated by `,` or spaces (a secret roll); every secret is
/// tried. Returns the matching secret's index.
#[derive(Debug)]
pub(crate) struct BodyMac {
    pub header: &'static str,
    pub prefix: &'static str,
    pub algorithm: Algorithm,
    pub encoding: Encoding,
    pub secrets: Vec<Secret>,
}

impl BodyMac {
    pub fn check(&self, req: &Parts, body: &[u8]) -> Result<usize, VerifyError> {
        let value = super::header(req, self.header)
            .filter(|s| !s.is_empty())
            .ok_or(VerifyError::MissingSignature)?;
        let candidates: Vec<Vec<u8>> = value
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter_map(|s| s.strip_prefix(self.prefix))
            .filter_map(|s| self.encoding.decode(s))
            .collect();
        match_secret(self.algorithm, &self.secrets, &[body], &candidates)
            .ok_or(VerifyError::InvalidSignature)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn freshness_both_directions() {
        let tol = Duration::from_secs(300);
        assert!(fresh_secs(Some("1000"), at(1300), tol).is_ok());
        assert!(fresh_secs(Some("1000"), at(700), tol).is_ok());
        assert!(fresh_secs(Some("1000"), at(1301), tol).is_err());
        assert!(fresh_secs(Some("1000"), at(699), tol).is_err());
        for bad in [
            None,
            Some(""),
            Some("-1"),
            Some("+1000"),
            Some("1e3"),
            Some("99999999999999999999999"),
        ] {
            assert_eq!(
                fresh_secs(bad, at(1000), tol),
                Err(VerifyError::StaleTimestamp)
            );
        }
        assert!(fresh_millis(Some("1000000"), at(1300), tol).is_ok());
        assert!(fresh_millis(Some("1000000"), at(1301), tol).is_err());
        assert!(
            fresh_millis(Some("1000"), at(1000), tol).is_err(),
            "seconds given as millis"
        );
    }

    #[test]
    fn tokens() {
        let secrets = [Secret::new("a"), Secret::new("bb"), Secret::new("bb")];
        assert_eq!(match_token(&secrets, b"bb"), Some(1));
        assert_eq!(match_token(&secrets, b"b"), None);
        assert_eq!(match_token(&secrets, b""), None);
        assert!(token_eq(b"x", b"x") && !token_eq(b"x", b"X"));
    }

    #[test]
    fn batch_ids() {
        assert_eq!(
            batch_id(br#"[{"eventId":1},{"eventId":"b"}]"#, &["eventId"]).as_deref(),
            Some("1,b")
        );
        assert_eq!(
            batch_id(br#"[{"a":1,"b":"x","c":0},{"a":2,"b":"y"}]"#, &["a", "b"]).as_deref(),
            Some("1:x,2:y")
        );
        assert_eq!(batch_id(br#"[{"a":1,"b":"x"},{"a":2}]"#, &["a", "b"]), None);
        assert_eq!(batch_id(br#"[{"eventId":1},{"x":2}]"#, &["eventId"]), None);
        assert_eq!(batch_id(br#"{"eventId":1}"#, &["eventId"]), None);
        assert_eq!(batch_id(b"[]", &["eventId"]), None);
        let many: Vec<String> = (0..100).map(|i| format!(r#"{{"id":{i}}}"#)).collect();
        let body = format!("[{}]", many.join(","));
        assert!(batch_id(body.as_bytes(), &["id"])
            .unwrap()
            .starts_with("sha256-of-ids:"));
    }
}

/// Helpers for the presets' unit tests.
#[cfg(test)]
pub(crate) mod testutil {
    use std::time::{Duration, SystemTime};

    use http::request::Parts;

    use crate::config::raw::RawVerify;

    /// A `[route.verify]` with literal secrets.
    pub fn raw(scheme: &str, secrets: &[&str]) -> RawVerify {
        RawVerify {
            scheme: Some(scheme.into()),
            secrets: Some(secrets.iter().map(|s| s.to_string()).collect()),
            ..RawVerify::default()
        }
    }

    pub fn parts(method: &str, uri: &str, headers: &[(&str, &str)]) -> Parts {
        let mut b = http::Request::builder().method(method).uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    pub fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    pub fn at_ms(ms: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_millis(ms)
    }
}
