//! `scheme = "slack"`: `X-Slack-Signature: v0=<hex HMAC-SHA256(signing_secret, "v0:{ts}:{body}")>`
//! with `X-Slack-Request-Timestamp` (unix s), ±5 min as slack_sdk checks. The body is verified as
//! received (form bodies of slash commands included). `url_verification` is signed like any
//! request; after verifying it the gateway answers the `challenge` itself (text/plain), and
//! records nothing. Event id: the body's `event_id` (Events API), read after verification.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::request::Parts;
use http::StatusCode;

use super::preset::{self, check_fresh, find_secret, parse_ts};
use super::{crypto, only_keys, secrets, Algorithm, Encoding, Handshake, Verified, VerifyError};
use crate::config::raw::RawVerify;
use crate::config::{Problems, Secret};

const SCHEME: &str = "slack";

#[derive(Debug)]
pub struct SlackVerifier {
    secrets: Vec<Secret>,
    tolerance: Duration,
}

pub fn build(raw: &RawVerify, at: &str, p: &mut Problems) -> Option<SlackVerifier> {
    only_keys(raw, &["secrets", "tolerance"], SCHEME, at, p);
    let tolerance = preset::tolerance(raw, Duration::from_secs(300), at, p);
    let secrets = secrets(raw, at, p);
    (!secrets.is_empty()).then_some(SlackVerifier { secrets, tolerance })
}

/// `v0=` HMAC-SHA256 of `v0:{ts}:{body}` (Zoom signs the same way).
pub(super) fn expected(secret: &[u8], ts: &str, body: &[u8]) -> Vec<u8> {
    crypto::mac(
        Algorithm::Sha256,
        secret,
        &[b"v0:", ts.as_bytes(), b":", body],
    )
}

impl super::Verifier for SlackVerifier {
    fn scheme(&self) -> &'static str {
        SCHEME
    }

    fn claimed_id(&self, _req: &Parts, body: &[u8]) -> Option<String> {
        preset::claimed_json_field(body, "event_id")
    }

    fn signed_at(&self, req: &Parts, _body: &[u8]) -> Option<i64> {
        preset::signed_at(preset::header_nonempty(req, "x-slack-request-timestamp"))
    }

    fn retries_resigned(&self) -> bool {
        true
    }

    fn verify(&self, req: &Parts, body: &[u8], now: SystemTime) -> Result<Verified, VerifyError> {
        let h = preset::header_nonempty(req, "x-slack-signature")
            .ok_or(VerifyError::MissingSignature)?;
        let ts = preset::header_nonempty(req, "x-slack-request-timestamp")
            .ok_or(VerifyError::StaleTimestamp)?;
        check_fresh(parse_ts(ts)?, Duration::from_secs(1), now, self.tolerance)?;
        let sig = h
            .strip_prefix("v0=")
            .and_then(|s| Encoding::Hex.decode(s))
            .ok_or(VerifyError::InvalidSignature)?;
        let i = find_secret(&self.secrets, |s| {
            crypto::ct_eq(&sig, &expected(s, ts, body))
        })
        .ok_or(VerifyError::InvalidSignature)?;
        Ok(preset::verified(
            SCHEME,
            preset::json_field(body, "event_id"),
            Some(i),
        ))
    }

    fn handshake(
        &self,
        req: &Parts,
        body: &[u8],
        now: SystemTime,
    ) -> Option<Result<Handshake, VerifyError>> {
        if !preset::contains(body, b"url_verification") {
            return None;
        }
        if let Err(e) = self.verify(req, body, now) {
            return Some(Err(e));
        }
        let doc: serde_json::Value = serde_json::from_slice(body).ok()?;
        if doc.get("type")?.as_str()? != "url_verification" {
            return None;
        }
        let challenge = doc.get("challenge")?.as_str()?;
        Some(Ok(Handshake {
            status: StatusCode::OK,
            content_type: "text/plain",
            body: Bytes::from(challenge.to_string()),
        }))
    }

    fn sign(
        &self,
        _method: &http::Method,
        body: &[u8],
        now: SystemTime,
        _url: &str,
    ) -> Option<Vec<(String, String)>> {
        let ts = preset::unix_secs(now).to_string();
        let m = expected(self.secrets.first()?.expose(), &ts, body);
        Some(vec![
            ("X-Slack-Request-Timestamp".into(), ts),
            ("X-Slack-Signature".into(), format!("v0={}", hex::encode(m))),
        ])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::preset::testing::*;
    use crate::verify::Verifier;

    // PROVIDERS §3 #5: Slack docs "Verifying requests from Slack" = slack_sdk test vector.
    const SECRET: &str = "8f742231b10e8888abcd99yyyzzz85a5";
    const BODY: &[u8] = b"token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c";
    const SIG: &str = "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503";
    const TS: &str = "1531420618";

    fn v() -> std::sync::Arc<dyn Verifier> {
        verifier(&format!(
            "scheme = \"slack\"\nsecrets = [\"old-secret\", \"{SECRET}\"]"
        ))
    }

    fn r(ts: &str, sig: &str) -> Parts {
        req(&[
            ("X-Slack-Request-Timestamp", ts),
            ("X-Slack-Signature", sig),
        ])
    }

    #[test]
    fn published_vector() {
        let ok = v().verify(&r(TS, SIG), BODY, at(1_531_420_618)).unwrap();
        assert_eq!(
            (ok.scheme, ok.secret_index, ok.event_id),
            ("slack", Some(1), None)
        );
    }

    #[test]
    fn negatives() {
        let v = v();
        let now = at(1_531_420_618);
        let mut tampered = BODY.to_vec();
        tampered[0] = b'T';
        assert_eq!(
            v.verify(&r(TS, SIG), &tampered, now).unwrap_err(),
            VerifyError::InvalidSignature
        );
        assert_eq!(
            v.verify(&req(&[("X-Slack-Request-Timestamp", TS)]), BODY, now)
                .unwrap_err(),
            VerifyError::MissingSignature
        );
        assert_eq!(
            v.verify(&req(&[("X-Slack-Signature", SIG)]), BODY, now)
                .unwrap_err(),
            VerifyError::StaleTimestamp
        );
        assert_eq!(
            v.verify(&r(TS, SIG), BODY, at(1_531_420_919)).unwrap_err(),
            VerifyError::StaleTimestamp
        );
        assert_eq!(
            v.verify(&r(TS, SIG), BODY, at(1_531_420_317)).unwrap_err(),
            VerifyError::StaleTimestamp
        );
        assert_eq!(
            v.verify(&r("1531420619", SIG), BODY, now).unwrap_err(),
            VerifyError::InvalidSignature
        );
        assert_eq!(
            v.verify(&r(TS, &SIG[3..]), BODY, now).unwrap_err(),
            VerifyError::InvalidSignature
        );
        assert_eq!(
            v.verify(&r(TS, &format!("{SIG},{SIG}")), BODY, now)
                .unwrap_err(),
            VerifyError::InvalidSignature
        );
        let wrong = verifier("scheme = \"slack\"\nsecrets = [\"nope\"]");
        assert_eq!(
            wrong.verify(&r(TS, SIG), BODY, now).unwrap_err(),
            VerifyError::InvalidSignature
        );
    }

    #[test]
    fn url_verification_is_answered_after_verification() {
        let v = v();
        let now = at(1_700_000_000);
        let body = br#"{"token":"Jhj5dZrVaK7ZwHHjRyZWjbDl","challenge":"3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P","type":"url_verification"}"#;
        let h = v.sign(&http::Method::POST, body, now, "").unwrap();
        let hs = v.handshake(&signed_req(&h), body, now).unwrap().unwrap();
        assert_eq!(hs.status, StatusCode::OK);
        assert_eq!(
            &hs.body[..],
            b"3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P"
        );
        // Unsigned or forged: refused, no challenge echoed.
        assert_eq!(
            v.handshake(&req(&[]), body, now).unwrap().unwrap_err(),
            VerifyError::MissingSignature
        );
        let mut forged = body.to_vec();
        forged[20] = b'x';
        assert_eq!(
            v.handshake(&signed_req(&h), &forged, now)
                .unwrap()
                .unwrap_err(),
            VerifyError::InvalidSignature
        );
        // An ordinary event is not a handshake; its event_id is the dedupe id.
        let ev = br#"{"type":"event_callback","event_id":"Ev123","event":{"type":"message"}}"#;
        let h = v.sign(&http::Method::POST, ev, now, "").unwrap();
        assert!(v.handshake(&signed_req(&h), ev, now).is_none());
        assert_eq!(
            v.verify(&signed_req(&h), ev, now)
                .unwrap()
                .event_id
                .as_deref(),
            Some("Ev123")
        );
    }
}
