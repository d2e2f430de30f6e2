//! `scheme = "sendgrid"` (Twilio SendGrid signed Event Webhook).
//!
//! `X-Twilio-Email-Event-Webhook-Signature: base64(DER(ECDSA-P256-SHA256(timestamp + body)))`
//! with `X-Twilio-Email-Event-Webhook-Timestamp` (unix seconds). `public_key` is the
//! verification key SendGrid shows: base64 of the DER SubjectPublicKeyInfo (also accepted as
//! `env:NAME` / `file:/path`). SendGrid documents no freshness window; hookgate applies
//! 5 minutes in both directions (`tolerance` overrides). The body (a JSON array, often ending
//! in `\r\n`) is verified byte for byte; the event id is its events' `sg_event_id`s.

use std::time::{Duration, SystemTime};

use base64::Engine;
use http::request::Parts;
use p256::ecdsa::signature::DigestVerifier;
use p256::ecdsa::{Signature, VerifyingKey};
use p256::pkcs8::DecodePublicKey;
use sha2::{Digest, Sha256};

use super::kit::{batch_id, fresh_secs, tolerance};
use super::{header, only_keys, Verified, VerifyError};
use crate::config::raw::RawVerify;
use crate::config::Problems;

const SCHEME: &str = "sendgrid";
const SIGNATURE: &str = "x-twilio-email-event-webhook-signature";
const TIMESTAMP: &str = "x-twilio-email-event-webhook-timestamp";

#[derive(Debug)]
pub struct SendgridVerifier {
    key: VerifyingKey,
    tolerance: Duration,
}

fn decode_key(text: &[u8]) -> Result<VerifyingKey, &'static str> {
    let text: Vec<u8> = text
        .iter()
        .copied()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(&text)
        .map_err(|_| {
            "is not base64 (expected SendGrid's verification key: base64 DER of a P-256 public key)"
        })?;
    VerifyingKey::from_public_key_der(&der)
        .map_err(|_| "is not a DER-encoded P-256 (prime256v1) public key")
}

pub fn build(raw: &RawVerify, at: &str, p: &mut Problems) -> Option<SendgridVerifier> {
    only_keys(raw, &["public_key", "tolerance"], SCHEME, at, p);
    let tolerance = tolerance(raw, Duration::from_secs(300), at, p);
    let Some(spec) = raw.public_key.as_deref() else {
        p.error(
            format!("{at}.public_key"),
            "is required (SendGrid's verification key)",
        );
        return None;
    };
    // A public key is not secret: a literal is fine, `env:`/`file:` too.
    let bytes = match p.resolve(spec) {
        Ok((s, _)) => s,
        Err(e) => {
            p.error(format!("{at}.public_key"), e);
            return None;
        }
    };
    match decode_key(bytes.expose()) {
        Ok(key) => Some(SendgridVerifier { key, tolerance }),
        Err(e) => {
            p.error(format!("{at}.public_key"), e);
            None
        }
    }
}

impl super::Verifier for SendgridVerifier {
    fn scheme(&self) -> &'static str {
        SCHEME
    }

    fn signed_at(&self, req: &Parts, _body: &[u8]) -> Option<i64> {
        super::preset::signed_at(header(req, TIMESTAMP))
    }

    fn verify(&self, req: &Parts, body: &[u8], now: SystemTime) -> Result<Verified, VerifyError> {
        let sig = header(req, SIGNATURE)
            .filter(|s| !s.is_empty())
            .ok_or(VerifyError::MissingSignature)?;
        let ts = header(req, TIMESTAMP);
        fresh_secs(ts, now, self.tolerance)?;
        let ts = ts.unwrap_or_default();
        let sig = base64::engine::general_purpose::STANDARD
            .decode(sig)
            .ok()
            .and_then(|der| Signature::from_der(&der).ok())
            .ok_or(VerifyError::InvalidSignature)?;
        let digest = Sha256::new_with_prefix(ts.as_bytes()).chain_update(body);
        self.key
            .verify_digest(digest, &sig)
            .map_err(|_| VerifyError::InvalidSignature)?;
        Ok(Verified {
            scheme: SCHEME,
            event_id: batch_id(body, &["sg_event_id"]),
            secret_index: None,
            replay_key: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::kit::testutil::{at, parts};
    use crate::verify::Verifier;

    // PROVIDERS.md §3 #9: sendgrid-python `test/unit/test_eventwebhook.py`.
    const KEY: &str = "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE83T4O/n84iotIvIW4mdBgQ/7dAfSmpqIM8kF9mN1flpVKS3GRqe62gw+2fNNRaINXvVpiglSI8eNEc6wEA3F+g==";
    const TS: u64 = 1_600_112_502;
    const BODY: &[u8] = b"[{\"email\":\"hello@world.com\",\"event\":\"dropped\",\"reason\":\"Bounced Address\",\"sg_event_id\":\"ZHJvcC0xMDk5NDkxOS1MUnpYbF9OSFN0T0doUTRrb2ZTbV9BLTA\",\"sg_message_id\":\"LRzXl_NHStOGhQ4kofSm_A.filterdrecv-p3mdw1-756b745b58-kmzbl-18-5F5FC76C-9.0\",\"smtp-id\":\"<LRzXl_NHStOGhQ4kofSm_A@ismtpd0039p1iad1.sendgrid.net>\",\"timestamp\":1600112492}]\r\n";
    const SIG: &str = "MEUCIGHQVtGj+Y3LkG9fLcxf3qfI10QysgDWmMOVmxG0u6ZUAiEAyBiXDWzM+uOe5W0JuG+luQAbPIqHh89M15TluLtEZtM=";
    // Another P-256 key, generated with `cryptography` 50.0.2 (ec.generate_private_key(SECP256R1())).
    const OTHER_KEY: &str = "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEiYMc+LJsYg+xMR9cpuu1VpHE3GTNTWbiU+Pj38T7nI7kDpdw4nFJ8295sf10zmXsLRFe4sHtsOsTuIxdW6aRhg==";
    // A P-384 key (SECP384R1), which SendGrid never uses.
    const P384_KEY: &str = "MHYwEAYHKoZIzj0CAQYFK4EEACIDYgAE3i8pzk/pYOBKFU0+Hn1fvIQPY+JPbV9z9pcIjECzxfH87DKyrIPNO66ItmLKaQMobhyCGD8dQRtB77GXg3HZffFzxEGG9sGdmDJV9IUhbe1/ylV1V+tKoi4pDJODLP0Y";

    fn v(key: &str) -> SendgridVerifier {
        let raw = RawVerify {
            scheme: Some("sendgrid".into()),
            public_key: Some(key.into()),
            ..RawVerify::default()
        };
        build(&raw, "v", &mut Problems::default()).unwrap()
    }

    fn req(sig: &str, ts: &str) -> Parts {
        parts("POST", "/", &[(SIGNATURE, sig), (TIMESTAMP, ts)])
    }

    #[test]
    fn published_vector() {
        // Its S is in the upper half of the order ("high S"): SendGrid's signatures are not
        // normalised, so they must not be refused for it.
        let ok = v(KEY)
            .verify(&req(SIG, "1600112502"), BODY, at(TS))
            .unwrap();
        assert_eq!(ok.scheme, "sendgrid");
        assert_eq!(
            ok.event_id.as_deref(),
            Some("ZHJvcC0xMDk5NDkxOS1MUnpYbF9OSFN0T0doUTRrb2ZTbV9BLTA")
        );
    }

    #[test]
    fn negatives() {
        let good = v(KEY);
        let now = at(TS);
        let r = req(SIG, "1600112502");
        // The trailing \r\n is signed: dropping it (a "normalising" proxy) breaks it.
        assert_eq!(
            good.verify(&r, &BODY[..BODY.len() - 2], now).unwrap_err(),
            VerifyError::InvalidSignature
        );
        assert_eq!(
            v(OTHER_KEY).verify(&r, BODY, now).unwrap_err(),
            VerifyError::InvalidSignature
        );
        let moved = req(SIG, "1600112503");
        assert_eq!(
            good.verify(&moved, BODY, at(TS)).unwrap_err(),
            VerifyError::InvalidSignature
        );
        assert_eq!(
            good.verify(&parts("POST", "/", &[(TIMESTAMP, "1600112502")]), BODY, now)
                .unwrap_err(),
            VerifyError::MissingSignature
        );
        assert_eq!(
            good.verify(&req("not base64!", "1600112502"), BODY, now)
                .unwrap_err(),
            VerifyError::InvalidSignature
        );
        assert_eq!(
            good.verify(&req("AAAA", "1600112502"), BODY, now)
                .unwrap_err(),
            VerifyError::InvalidSignature
        );
        assert!(good.verify(&r, BODY, at(TS + 300)).is_ok());
        assert_eq!(
            good.verify(&r, BODY, at(TS + 301)).unwrap_err(),
            VerifyError::StaleTimestamp
        );
        assert_eq!(
            good.verify(&r, BODY, at(TS - 301)).unwrap_err(),
            VerifyError::StaleTimestamp
        );
        assert_eq!(
            good.verify(&parts("POST", "/", &[(SIGNATURE, SIG)]), BODY, now)
                .unwrap_err(),
            VerifyError::StaleTimestamp
        );
        assert_eq!(
            good.verify(&req(SIG, "1600112502.0"), BODY, now)
                .unwrap_err(),
            VerifyError::StaleTimestamp
        );
    }

    #[test]
    fn config_errors_name_the_key() {
        for (key, msg) in [
            ("%%%", "is not base64"),
            ("AAAA", "is not a DER-encoded P-256"),
            (P384_KEY, "is not a DER-encoded P-256"),
        ] {
            let raw = RawVerify {
                scheme: Some("sendgrid".into()),
                public_key: Some(key.into()),
                ..RawVerify::default()
            };
            let mut p = Problems::default();
            assert!(build(&raw, "route[0].verify", &mut p).is_none());
            assert!(
                p.errors[0].starts_with(&format!("route[0].verify.public_key: {msg}")),
                "{:?}",
                p.errors
            );
        }
        let raw = RawVerify {
            scheme: Some("sendgrid".into()),
            secrets: Some(vec!["x".into()]),
            ..RawVerify::default()
        };
        let mut p = Problems::default();
        assert!(build(&raw, "route[0].verify", &mut p).is_none());
        assert_eq!(
            p.errors,
            [
                "route[0].verify.secrets: not used by scheme \"sendgrid\"",
                "route[0].verify.public_key: is required (SendGrid's verification key)"
            ]
        );
    }
}
