//! Dedupe-key derivation, pure: from the route's `[route.dedupe]`, the verifier's output and
//! the request, the key to record (prefixed by its kind so kinds never collide), `None` for
//! `key = "none"`, or `MissingKey` when the key is required and absent.

use http::HeaderMap;
use sha2::{Digest, Sha256};

use crate::config::{DedupeConfig, DedupeKeySpec};
use crate::verify::Verified;

#[derive(Debug, PartialEq, Eq)]
pub struct MissingKey;

/// `key = "none"`: the route records no key.
struct NoKey;

/// The one scheme whose `auto` key may come from the `Idempotency-Key` header.
const GENERIC_HMAC: &str = "hmac";

pub(crate) fn body_sha256(body: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(body)))
}

fn header_value(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_string)
}

fn json_value(body: &[u8], pointer: &str) -> Option<String> {
    let doc: serde_json::Value = serde_json::from_slice(body).ok()?;
    match doc.pointer(pointer)? {
        serde_json::Value::Null => None,
        serde_json::Value::String(s) if s.is_empty() => None,
        serde_json::Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

/// The recorded keys a sender's value may stand for (`ListQuery::key`): the value under each
/// prefix `derive` gives it, and the value itself when it is already a recorded key.
pub fn keys_matching(value: &str) -> [String; 4] {
    [
        value.to_string(),
        format!("header:{value}"),
        format!("json:{value}"),
        format!("id:{value}"),
    ]
}

pub fn derive(
    cfg: &DedupeConfig,
    verified: &Verified,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Option<String>, MissingKey> {
    let Ok(found) = found(
        cfg,
        verified.scheme,
        verified.event_id.as_deref(),
        headers,
        body,
    ) else {
        return Ok(None);
    };
    match found {
        Some(k) => Ok(Some(k)),
        None if cfg.required => Err(MissingKey),
        // Where the verifier keyed what its signature covers, that is the fallback: a Twilio
        // GET's body is empty, so its body's hash was every GET's key.
        None => Ok(Some(
            verified
                .replay_key
                .clone()
                .unwrap_or_else(|| body_sha256(body)),
        )),
    }
}

/// The key a request that failed verification would have been recorded under, for its log
/// line: from a header, or the event id it claims (`event_id`, asked only then). `None` for a
/// key of the body (`json:`, `body-sha256`) — a forged body is not parsed or hashed again
/// (SPEC §5: the signature is checked before the body is parsed) — and where only the
/// fallback would have keyed it.
pub fn claimed(
    cfg: &DedupeConfig,
    scheme: &'static str,
    event_id: impl FnOnce() -> Option<String>,
    headers: &HeaderMap,
) -> Option<String> {
    match &cfg.key {
        DedupeKeySpec::Auto | DedupeKeySpec::Header(_) => {
            found(cfg, scheme, event_id().as_deref(), headers, b"")
                .ok()
                .flatten()
        }
        DedupeKeySpec::None | DedupeKeySpec::BodySha256 | DedupeKeySpec::Json(_) => None,
    }
}

/// The key `cfg.key` names, if the request has it; `Err` for `key = "none"`.
fn found(
    cfg: &DedupeConfig,
    scheme: &str,
    event_id: Option<&str>,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Option<String>, NoKey> {
    Ok(match &cfg.key {
        DedupeKeySpec::None => return Err(NoKey),
        DedupeKeySpec::BodySha256 => Some(body_sha256(body)),
        DedupeKeySpec::Header(name) => {
            header_value(headers, name.as_str()).map(|v| format!("header:{v}"))
        }
        DedupeKeySpec::Json(ptr) => json_value(body, ptr).map(|v| format!("json:{v}")),
        // SPEC §3: the preset's event id; for the generic `hmac` scheme only, the sender's
        // `Idempotency-Key` (a preset's signature does not cover that header, so honouring it
        // would let a captured request be replayed under a fresh key).
        DedupeKeySpec::Auto => event_id.map(|id| format!("id:{id}")).or_else(|| {
            (scheme == GENERIC_HMAC)
                .then(|| header_value(headers, "idempotency-key"))
                .flatten()
                .map(|v| format!("header:{v}"))
        }),
    })
}

/// A second key to record beside `key` (what `derive` gave) when a provider's id comes from a
/// header its signature does not cover (`Verified::replay_key`). A request matching either key
/// is a duplicate, so a captured request sent again under a fresh id is one, while the
/// provider's own retries still match by id (even where a retry's signed content changes, as
/// with a fresh signed timestamp). Only under `auto`, beside a provider's id or its body's hash
/// (without an id `derive` gives the `signed:` key itself, and none is added): a key the
/// operator named, and the generic scheme's `Idempotency-Key` (SPEC §3), are taken as the
/// sender's word.
pub fn replay_key(cfg: &DedupeConfig, verified: &Verified, key: &str) -> Option<String> {
    if !matches!(cfg.key, DedupeKeySpec::Auto) {
        return None;
    }
    // Only presets set `replay_key`: the generic scheme's `header:` key never gets one.
    verified.replay_key.clone().filter(|a| a != key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn cfg(key: DedupeKeySpec, required: bool) -> DedupeConfig {
        DedupeConfig {
            key,
            ttl: Duration::from_secs(60),
            required,
        }
    }

    fn verified(id: Option<&str>) -> Verified {
        Verified {
            scheme: "hmac",
            event_id: id.map(str::to_string),
            secret_index: None,
            replay_key: None,
        }
    }

    /// A refused request's key, for its log line: as `derive` would give it from a header or
    /// the claimed id, but never from the body (not parsed or hashed again) nor the fallback.
    #[test]
    fn a_claimed_key_is_derived_without_the_body() {
        let mut h = HeaderMap::new();
        fn id(v: Option<&'static str>) -> impl FnOnce() -> Option<String> {
            move || v.map(str::to_string)
        }
        let auto = cfg(DedupeKeySpec::Auto, false);
        assert_eq!(
            claimed(&auto, "stripe", id(Some("evt_1")), &h),
            Some("id:evt_1".into())
        );
        assert_eq!(claimed(&auto, "stripe", id(None), &h), None);
        assert_eq!(claimed(&auto, "hmac", id(None), &h), None);
        h.insert("idempotency-key", "k1".parse().unwrap());
        assert_eq!(
            claimed(&auto, "hmac", id(None), &h),
            Some("header:k1".into())
        );
        assert_eq!(claimed(&auto, "github", id(None), &h), None);
        let header = cfg(
            DedupeKeySpec::Header(http::HeaderName::from_static("idempotency-key")),
            true,
        );
        assert_eq!(
            claimed(&header, "stripe", id(None), &h),
            Some("header:k1".into())
        );
        let never = || -> Option<String> { panic!("the id is not asked for") };
        for body_key in [
            DedupeKeySpec::Json("/s".into()),
            DedupeKeySpec::BodySha256,
            DedupeKeySpec::None,
        ] {
            assert_eq!(claimed(&cfg(body_key, false), "hmac", never, &h), None);
        }
    }

    #[test]
    fn kinds() {
        let mut h = HeaderMap::new();
        h.insert("idempotency-key", "k1".parse().unwrap());
        let body = br#"{"data":{"id":42},"s":"x"}"#;
        let v = verified(None);
        assert_eq!(
            derive(&cfg(DedupeKeySpec::Auto, false), &v, &h, body),
            Ok(Some("header:k1".into()))
        );
        assert_eq!(
            derive(
                &cfg(DedupeKeySpec::Auto, false),
                &verified(Some("evt_1")),
                &h,
                body
            ),
            Ok(Some("id:evt_1".into()))
        );
        assert_eq!(
            derive(
                &cfg(DedupeKeySpec::Json("/data/id".into()), true),
                &v,
                &h,
                body
            ),
            Ok(Some("json:42".into()))
        );
        assert_eq!(
            derive(&cfg(DedupeKeySpec::Json("/s".into()), true), &v, &h, body),
            Ok(Some("json:x".into()))
        );
        assert_eq!(
            derive(&cfg(DedupeKeySpec::None, false), &v, &h, body),
            Ok(None)
        );
        let sha = derive(&cfg(DedupeKeySpec::BodySha256, false), &v, &h, body)
            .unwrap()
            .unwrap();
        assert!(sha.starts_with("sha256:") && sha.len() == 7 + 64);
    }

    /// SPEC §3: `auto` falls back to `Idempotency-Key` only for the generic `hmac` scheme; a
    /// preset's signature does not cover that header, so without an event id it is body-sha256.
    #[test]
    fn auto_idempotency_key_only_for_generic_hmac() {
        let body = br#"{"entry":[]}"#;
        let sha = body_sha256(body);
        for key in ["k1", "k2"] {
            let mut h = HeaderMap::new();
            h.insert("idempotency-key", key.parse().unwrap());
            for scheme in ["meta", "none", "bearer", "github"] {
                let v = Verified {
                    scheme,
                    event_id: None,
                    secret_index: None,
                    replay_key: None,
                };
                assert_eq!(
                    derive(&cfg(DedupeKeySpec::Auto, false), &v, &h, body),
                    Ok(Some(sha.clone())),
                    "{scheme}"
                );
                // Required: the preset's id is the key; the unsigned header does not stand in.
                assert_eq!(
                    derive(&cfg(DedupeKeySpec::Auto, true), &v, &h, body),
                    Err(MissingKey),
                    "{scheme}"
                );
            }
            assert_eq!(
                derive(&cfg(DedupeKeySpec::Auto, false), &verified(None), &h, body),
                Ok(Some(format!("header:{key}")))
            );
        }
    }

    /// An id the signature does not cover gets a second key over what it does; a signed id,
    /// a body key and a key the operator named get none.
    #[test]
    fn a_key_the_sender_chose_unsigned_gets_a_replay_key_beside_it() {
        let auto = cfg(DedupeKeySpec::Auto, false);
        let signed = body_sha256(b"{}");
        let unsigned = Verified {
            replay_key: Some(signed.clone()),
            ..verified(Some("d-1"))
        };
        assert_eq!(replay_key(&auto, &unsigned, "id:d-1"), Some(signed.clone()));
        assert_eq!(
            replay_key(&auto, &verified(None), "header:k1"),
            None,
            "the generic scheme's Idempotency-Key is the sender's word"
        );
        assert_eq!(
            replay_key(&auto, &unsigned, &body_sha256(b"{}")),
            None,
            "the key itself"
        );
        let without_id = Verified {
            replay_key: Some("signed:1".into()),
            ..verified(None)
        };
        assert_eq!(
            replay_key(&auto, &without_id, &body_sha256(b"x")),
            Some("signed:1".into()),
            "a capture resent without its id matches by what is signed"
        );
        assert_eq!(
            replay_key(&auto, &verified(Some("evt_1")), "id:evt_1"),
            None
        );
        assert_eq!(
            replay_key(&auto, &unsigned, &signed),
            None,
            "the key itself"
        );
        let named = cfg(DedupeKeySpec::Header("x-key".parse().unwrap()), false);
        assert_eq!(replay_key(&named, &unsigned, "header:k1"), None);
    }

    #[test]
    fn without_an_id_the_signed_key_is_the_fallback() {
        let v = Verified {
            replay_key: Some("signed:abc".into()),
            ..verified(None)
        };
        let auto = cfg(DedupeKeySpec::Auto, false);
        assert_eq!(
            derive(&auto, &v, &HeaderMap::new(), b""),
            Ok(Some("signed:abc".into()))
        );
        assert_eq!(
            replay_key(&auto, &v, "signed:abc"),
            None,
            "one key, not two"
        );
    }

    #[test]
    fn missing_required_or_fallback() {
        let h = HeaderMap::new();
        let v = verified(None);
        let hdr = DedupeKeySpec::Header("x-key".parse().unwrap());
        assert_eq!(
            derive(&cfg(hdr.clone(), true), &v, &h, b"{}"),
            Err(MissingKey)
        );
        assert!(derive(&cfg(hdr, false), &v, &h, b"{}")
            .unwrap()
            .unwrap()
            .starts_with("sha256:"));
        // A json: key on a body that is not JSON counts as missing.
        assert_eq!(
            derive(
                &cfg(DedupeKeySpec::Json("/id".into()), true),
                &v,
                &h,
                b"not json"
            ),
            Err(MissingKey)
        );
        assert_eq!(
            derive(&cfg(DedupeKeySpec::Auto, true), &v, &h, b"{}"),
            Err(MissingKey)
        );
    }
}
