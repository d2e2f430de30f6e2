//! `scheme = "twitch"` (EventSub, webhook transport).
//!
//! `Twitch-Eventsub-Message-Signature: sha256=<hex(HMAC-SHA256(secret, id + timestamp +
//! body))>` with `Twitch-Eventsub-Message-Id` and `Twitch-Eventsub-Message-Timestamp`
//! (RFC 3339, nanoseconds). Messages more than 10 minutes away from now (either direction;
//! `tolerance` overrides) are refused. The event id is the message id: Twitch resends with it.
//!
//! Handshake: a `webhook_callback_verification` message is verified like any other, then
//! answered `200 text/plain` with the raw `challenge`; nothing is recorded.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::request::Parts;
use http::StatusCode;

use super::kit::{match_secret, tolerance, within};
use super::{header, only_keys, secrets, Algorithm, Encoding, Handshake, Verified, VerifyError};
use crate::config::raw::RawVerify;
use crate::config::{Problems, Secret};

const SCHEME: &str = "twitch";
const SIGNATURE: &str = "twitch-eventsub-message-signature";
const ID: &str = "twitch-eventsub-message-id";
const TIMESTAMP: &str = "twitch-eventsub-message-timestamp";
const TYPE: &str = "twitch-eventsub-message-type";

#[derive(Debug)]
pub struct TwitchVerifier {
    secrets: Vec<Secret>,
    tolerance: Duration,
}

pub fn build(raw: &RawVerify, at: &str, p: &mut Problems) -> Option<TwitchVerifier> {
    only_keys(raw, &["secrets", "tolerance"], SCHEME, at, p);
    let secrets = secrets(raw, at, p);
    let tolerance = tolerance(raw, Duration::from_secs(600), at, p);
    if secrets.is_empty() {
        return None;
    }
    Some(TwitchVerifier { secrets, tolerance })
}

impl super::Verifier for TwitchVerifier {
    fn scheme(&self) -> &'static str {
        SCHEME
    }

    fn signed_at(&self, req: &Parts, _body: &[u8]) -> Option<i64> {
        let t = humantime::parse_rfc3339(header(req, TIMESTAMP)?).ok()?;
        let secs = match t.duration_since(SystemTime::UNIX_EPOCH) {
            Ok(d) => d.as_secs() as i64,
            Err(e) => -(e.duration().as_secs() as i64),
        };
        Some(secs)
    }

    fn verify(&self, req: &Parts, body: &[u8], now: SystemTime) -> Result<Verified, VerifyError> {
        let sig = header(req, SIGNATURE)
            .filter(|s| !s.is_empty())
            .ok_or(VerifyError::MissingSignature)?;
        let ts = header(req, TIMESTAMP).ok_or(VerifyError::StaleTimestamp)?;
        let t = humantime::parse_rfc3339(ts).map_err(|_| VerifyError::StaleTimestamp)?;
        if !within(t, now, self.tolerance) {
            return Err(VerifyError::StaleTimestamp);
        }
        // The id is signed; without it no signature can match.
        let id = header(req, ID)
            .filter(|s| !s.is_empty())
            .ok_or(VerifyError::InvalidSignature)?;
        let candidates: Vec<Vec<u8>> = sig
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter_map(|s| s.strip_prefix("sha256="))
            .filter_map(|s| Encoding::Hex.decode(s))
            .collect();
        let chunks: [&[u8]; 3] = [id.as_bytes(), ts.as_bytes(), body];
        let i = match_secret(Algorithm::Sha256, &self.secrets, &chunks, &candidates)
            .ok_or(VerifyError::InvalidSignature)?;
        Ok(Verified {
            scheme: SCHEME,
            event_id: Some(id.to_string()),
            secret_index: Some(i),
            replay_key: None,
        })
    }

    fn handshake(
        &self,
        req: &Parts,
        body: &[u8],
        now: SystemTime,
    ) -> Option<Result<Handshake, VerifyError>> {
        if header(req, TYPE) != Some("webhook_callback_verification") {
            return None;
        }
        Some(self.verify(req, body, now).map(|_| {
            // Parsed only now that the signature verified.
            let challenge = serde_json::from_slice::<serde_json::Value>(body)
                .ok()
                .and_then(|v| v.get("challenge")?.as_str().map(str::to_string));
            match challenge {
                Some(c) => Handshake {
                    status: StatusCode::OK,
                    content_type: "text/plain",
                    body: Bytes::from(c),
                },
                None => Handshake {
                    status: StatusCode::BAD_REQUEST,
                    content_type: "application/json",
                    body: Bytes::from_static(br#"{"error":"missing_challenge"}"#),
                },
            }
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::kit::testutil::{at, parts, raw};
    use crate::verify::Verifier;

    // Fixtures generated with Python's standard library (Twitch publishes no vector; its CLI
    // is not a registry package): hmac.new(b"twitch_secret_0123", ID + TS + BODY,
    // hashlib.sha256).hexdigest()
    const TS: &str = "2019-11-16T10:11:12.634234626Z";
    const NOW: u64 = 1_573_899_072; // 2019-11-16T10:11:12Z
    const MSG_ID: &str = "e76c6bd4-55c9-4987-8304-da1588d8988b";
    const BODY: &[u8] = br#"{"subscription":{"id":"f1c2a387-161a-49f9-a165-0f21d7a4e1c4","type":"channel.follow","version":"2","status":"enabled"},"event":{"user_id":"1337","user_login":"awesome_user","broadcaster_user_id":"12826"}}"#;
    const SIG: &str = "sha256=b9691467cfe23c8559f932c2cc09a15e8a623d765eece858485a1209c23ce2ba";
    const VER_ID: &str = "f1c2a387-0000-49f9-a165-0f21d7a4e1c4";
    const VER_BODY: &[u8] = br#"{"challenge":"pogchamp-kappa-360noscope-vohiyo","subscription":{"id":"f1c2a387-161a-49f9-a165-0f21d7a4e1c4","status":"webhook_callback_verification_pending","type":"channel.follow","version":"2"}}"#;
    const VER_SIG: &str = "sha256=c3ad8d35d1d859ef489a28a06ecc78cbb1b2bd32cabe00ac28529d88db956d7b";

    fn v(secrets: &[&str]) -> TwitchVerifier {
        build(&raw("twitch", secrets), "v", &mut Problems::default()).unwrap()
    }

    fn notification(id: &str, ts: &str, sig: &str) -> Parts {
        parts(
            "POST",
            "/",
            &[
                (ID, id),
                (TIMESTAMP, ts),
                (SIGNATURE, sig),
                (TYPE, "notification"),
            ],
        )
    }

    #[test]
    fn fixture_rotation_and_event_id() {
        let r = notification(MSG_ID, TS, SIG);
        let ok = v(&["other", "twitch_secret_0123"])
            .verify(&r, BODY, at(NOW))
            .unwrap();
        assert_eq!(ok.secret_index, Some(1));
        assert_eq!(ok.event_id.as_deref(), Some(MSG_ID));
        assert!(v(&["twitch_secret_0123"])
            .handshake(&r, BODY, at(NOW))
            .is_none());
    }

    #[test]
    fn negatives() {
        let good = v(&["twitch_secret_0123"]);
        let now = at(NOW);
        let r = notification(MSG_ID, TS, SIG);
        assert_eq!(
            good.verify(&r, &BODY[..BODY.len() - 1], now).unwrap_err(),
            VerifyError::InvalidSignature
        );
        assert_eq!(
            v(&["wrong"]).verify(&r, BODY, now).unwrap_err(),
            VerifyError::InvalidSignature
        );
        // The id and the timestamp are signed.
        let other_id = notification("e76c6bd4-55c9-4987-8304-da1588d8988c", TS, SIG);
        assert_eq!(
            good.verify(&other_id, BODY, now).unwrap_err(),
            VerifyError::InvalidSignature
        );
        let other_ts = notification(MSG_ID, "2019-11-16T10:11:12.634234627Z", SIG);
        assert_eq!(
            good.verify(&other_ts, BODY, now).unwrap_err(),
            VerifyError::InvalidSignature
        );
        let no_sig = parts("POST", "/", &[(ID, MSG_ID), (TIMESTAMP, TS)]);
        assert_eq!(
            good.verify(&no_sig, BODY, now).unwrap_err(),
            VerifyError::MissingSignature
        );
        let no_id = parts("POST", "/", &[(TIMESTAMP, TS), (SIGNATURE, SIG)]);
        assert_eq!(
            good.verify(&no_id, BODY, now).unwrap_err(),
            VerifyError::InvalidSignature
        );
        // 10 minutes, both directions; a refusal's log line says when it was signed.
        assert_eq!(good.signed_at(&r, BODY), Some(NOW as i64));
        assert!(good.verify(&r, BODY, at(NOW + 600)).is_ok());
        assert_eq!(
            good.verify(&r, BODY, at(NOW + 601)).unwrap_err(),
            VerifyError::StaleTimestamp
        );
        assert!(good.verify(&r, BODY, at(NOW - 599)).is_ok());
        assert_eq!(
            good.verify(&r, BODY, at(NOW - 601)).unwrap_err(),
            VerifyError::StaleTimestamp
        );
        for ts in [
            "",
            "1573899072",
            "2019-11-16 10:11:12",
            "2019-11-16T10:11:12+01:00",
            "garbage-garbage-garbage",
        ] {
            let r = notification(MSG_ID, ts, SIG);
            assert_eq!(
                good.verify(&r, BODY, now).unwrap_err(),
                VerifyError::StaleTimestamp,
                "{ts:?}"
            );
        }
        let no_ts = parts("POST", "/", &[(ID, MSG_ID), (SIGNATURE, SIG)]);
        assert_eq!(
            good.verify(&no_ts, BODY, now).unwrap_err(),
            VerifyError::StaleTimestamp
        );
        let several = format!("sha256={},{SIG}", "0".repeat(64));
        assert!(good
            .verify(&notification(MSG_ID, TS, &several), BODY, now)
            .is_ok());
    }

    #[test]
    fn tolerance_is_configurable() {
        let mut r = raw("twitch", &["twitch_secret_0123"]);
        r.tolerance = Some("1m".into());
        let v = build(&r, "v", &mut Problems::default()).unwrap();
        assert_eq!(
            v.verify(&notification(MSG_ID, TS, SIG), BODY, at(NOW + 61))
                .unwrap_err(),
            VerifyError::StaleTimestamp
        );
    }

    #[test]
    fn verification_handshake() {
        let good = v(&["twitch_secret_0123"]);
        let now = at(NOW);
        let hs_req = |sig: &str| {
            parts(
                "POST",
                "/",
                &[
                    (ID, VER_ID),
                    (TIMESTAMP, TS),
                    (SIGNATURE, sig),
                    (TYPE, "webhook_callback_verification"),
                ],
            )
        };
        let hs = good
            .handshake(&hs_req(VER_SIG), VER_BODY, now)
            .unwrap()
            .unwrap();
        assert_eq!(hs.status, StatusCode::OK);
        assert_eq!(hs.content_type, "text/plain");
        assert_eq!(&hs.body[..], b"pogchamp-kappa-360noscope-vohiyo");
        // A forged or stale verification is refused: the challenge is never echoed unverified.
        assert_eq!(
            good.handshake(&hs_req(SIG), VER_BODY, now)
                .unwrap()
                .unwrap_err(),
            VerifyError::InvalidSignature
        );
        assert_eq!(
            v(&["x"])
                .handshake(&hs_req(VER_SIG), VER_BODY, now)
                .unwrap()
                .unwrap_err(),
            VerifyError::InvalidSignature
        );
        assert_eq!(
            good.handshake(&hs_req(VER_SIG), VER_BODY, at(NOW + 601))
                .unwrap()
                .unwrap_err(),
            VerifyError::StaleTimestamp
        );
    }
}
