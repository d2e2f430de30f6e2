//! `scheme = "calendly"`: `Calendly-Webhook-Signature: t=<unix s>,v1=<hex(HMAC-SHA256(
//! signing_key, t + "." + body))>`. Calendly's own sample refuses events more than 3 minutes
//! old; hookgate applies 3 minutes in both directions (`tolerance` overrides). Several `v1`
//! entries are accepted (any match passes). Calendly documents no event id: dedupe falls
//! back to the body's SHA-256.

use std::time::{Duration, SystemTime};

use http::request::Parts;

use super::kit::{fresh_secs, match_secret, tolerance};
use super::{header, only_keys, secrets, Algorithm, Verified, VerifyError};
use crate::config::raw::RawVerify;
use crate::config::{Problems, Secret};

const SCHEME: &str = "calendly";

#[derive(Debug)]
pub struct CalendlyVerifier {
    secrets: Vec<Secret>,
    tolerance: Duration,
}

pub fn build(raw: &RawVerify, at: &str, p: &mut Problems) -> Option<CalendlyVerifier> {
    only_keys(raw, &["secrets", "tolerance"], SCHEME, at, p);
    let secrets = secrets(raw, at, p);
    let tolerance = tolerance(raw, Duration::from_secs(180), at, p);
    if secrets.is_empty() {
        return None;
    }
    Some(CalendlyVerifier { secrets, tolerance })
}

impl super::Verifier for CalendlyVerifier {
    fn scheme(&self) -> &'static str {
        SCHEME
    }

    fn signed_at(&self, req: &Parts, _body: &[u8]) -> Option<i64> {
        let value = header(req, "calendly-webhook-signature")?;
        super::preset::signed_at(
            super::preset::timestamp_and_hex_signatures(value, ',', "t", "v1").0,
        )
    }

    fn verify(&self, req: &Parts, body: &[u8], now: SystemTime) -> Result<Verified, VerifyError> {
        let value = header(req, "calendly-webhook-signature")
            .filter(|s| !s.is_empty())
            .ok_or(VerifyError::MissingSignature)?;
        let (t, candidates) = super::preset::timestamp_and_hex_signatures(value, ',', "t", "v1");
        fresh_secs(t, now, self.tolerance)?;
        let t = t.unwrap_or_default();
        let chunks: [&[u8]; 3] = [t.as_bytes(), b".", body];
        let i = match_secret(Algorithm::Sha256, &self.secrets, &chunks, &candidates)
            .ok_or(VerifyError::InvalidSignature)?;
        Ok(Verified {
            scheme: SCHEME,
            event_id: None,
            secret_index: Some(i),
            replay_key: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::kit::testutil::{at, parts, raw};
    use crate::verify::Verifier;

    // Fixture generated with Python's standard library (Calendly publishes no vector or SDK
    // verifier): hmac.new(b"cal_signing_key", b"1606153879." + BODY, hashlib.sha256).hexdigest()
    const BODY: &[u8] = br#"{"created_at":"2020-11-23T17:51:19.000000Z","created_by":"https://api.calendly.com/users/AAAAAAAAAAAAAAAA","event":"invitee.created","payload":{"uri":"https://api.calendly.com/scheduled_events/GBGBDCAADAEDCRZ2/invitees/AAAAAAAAAAAAAAAA"}}"#;
    const T: u64 = 1_606_153_879;
    const V1: &str = "e343478fdbb8373eb87fa40b12820557fc895bcf5971b74875e38aa5cc6249f5";

    fn v(secrets: &[&str]) -> CalendlyVerifier {
        build(&raw("calendly", secrets), "v", &mut Problems::default()).unwrap()
    }

    fn req(value: &str) -> Parts {
        parts("POST", "/", &[("calendly-webhook-signature", value)])
    }

    #[test]
    fn fixture_and_rotation() {
        let r = req(&format!("t={T},v1={V1}"));
        let ok = v(&["next", "cal_signing_key"])
            .verify(&r, BODY, at(T + 10))
            .unwrap();
        assert_eq!(ok.secret_index, Some(1));
        assert_eq!(ok.event_id, None);
    }

    #[test]
    fn negatives() {
        let good = v(&["cal_signing_key"]);
        let now = at(T);
        let r = req(&format!("t={T},v1={V1}"));
        assert_eq!(
            good.verify(&r, b"{}", now).unwrap_err(),
            VerifyError::InvalidSignature
        );
        assert_eq!(
            v(&["wrong"]).verify(&r, BODY, now).unwrap_err(),
            VerifyError::InvalidSignature
        );
        assert_eq!(
            good.verify(&parts("POST", "/", &[]), BODY, now)
                .unwrap_err(),
            VerifyError::MissingSignature
        );
        // 3 minutes, both directions.
        assert!(good.verify(&r, BODY, at(T + 180)).is_ok());
        assert_eq!(
            good.verify(&r, BODY, at(T + 181)).unwrap_err(),
            VerifyError::StaleTimestamp
        );
        assert_eq!(
            good.verify(&r, BODY, at(T - 181)).unwrap_err(),
            VerifyError::StaleTimestamp
        );
        assert_eq!(
            good.verify(&req(&format!("v1={V1}")), BODY, now)
                .unwrap_err(),
            VerifyError::StaleTimestamp
        );
        assert_eq!(
            good.verify(&req(&format!("t=16e8,v1={V1}")), BODY, now)
                .unwrap_err(),
            VerifyError::StaleTimestamp
        );
        // The timestamp is signed: moving it breaks the signature.
        let moved = req(&format!("t={},v1={V1}", T + 1));
        assert_eq!(
            good.verify(&moved, BODY, now).unwrap_err(),
            VerifyError::InvalidSignature
        );
        assert_eq!(
            good.verify(&req(&format!("t={T}")), BODY, now).unwrap_err(),
            VerifyError::InvalidSignature
        );
        // Several v1 entries, in any order, with spaces.
        let several = req(&format!("t={T}, v1={}, v1={V1}", "0".repeat(64)));
        assert!(good.verify(&several, BODY, now).is_ok());
    }
}
