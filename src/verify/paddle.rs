//! `scheme = "paddle"` (Paddle Billing): `Paddle-Signature: ts=<unix s>;h1=<hex>[;h1=<hex>…]`,
//! each `h1` a hex HMAC-SHA256 over `"{ts}:{body}"` keyed with the notification destination's
//! secret string (`pdl_ntfset_…`, used verbatim). Several `h1` and several configured secrets
//! cover rotation. Tolerance 5 s, paddle-python-sdk's `maximum_variance` (Paddle's docs give the
//! same); checked in both directions. Keys other than `ts`/`h1` are skipped (the SDK refuses them;
//! skipping keeps a future `h2` from rejecting every webhook, and security rests on `h1` alone).
//! Event id: the body's `event_id`, read after verification.

use std::time::{Duration, SystemTime};

use http::request::Parts;

use super::preset::{self, check_fresh, find_secret, parse_ts};
use super::{crypto, only_keys, secrets, Algorithm, Verified, VerifyError};
use crate::config::raw::RawVerify;
use crate::config::{Problems, Secret};

const SCHEME: &str = "paddle";

#[derive(Debug)]
pub struct PaddleVerifier {
    secrets: Vec<Secret>,
    tolerance: Duration,
}

pub fn build(raw: &RawVerify, at: &str, p: &mut Problems) -> Option<PaddleVerifier> {
    only_keys(raw, &["secrets", "tolerance"], SCHEME, at, p);
    let tolerance = preset::tolerance(raw, Duration::from_secs(5), at, p);
    let secrets = secrets(raw, at, p);
    (!secrets.is_empty()).then_some(PaddleVerifier { secrets, tolerance })
}

fn expected(secret: &[u8], ts: &str, body: &[u8]) -> Vec<u8> {
    crypto::mac(Algorithm::Sha256, secret, &[ts.as_bytes(), b":", body])
}

impl super::Verifier for PaddleVerifier {
    fn scheme(&self) -> &'static str {
        SCHEME
    }

    fn claimed_id(&self, _req: &Parts, body: &[u8]) -> Option<String> {
        preset::claimed_json_field(body, "event_id")
    }

    fn signed_at(&self, req: &Parts, _body: &[u8]) -> Option<i64> {
        preset::signed_at(
            preset::header_nonempty(req, "paddle-signature")
                .and_then(|h| preset::timestamp_and_hex_signatures(h, ';', "ts", "h1").0),
        )
    }

    fn verify(&self, req: &Parts, body: &[u8], now: SystemTime) -> Result<Verified, VerifyError> {
        let h = preset::header_nonempty(req, "paddle-signature")
            .ok_or(VerifyError::MissingSignature)?;
        let (ts, sigs) = preset::timestamp_and_hex_signatures(h, ';', "ts", "h1");
        let ts = ts.ok_or(VerifyError::StaleTimestamp)?;
        check_fresh(parse_ts(ts)?, Duration::from_secs(1), now, self.tolerance)?;
        let i = find_secret(&self.secrets, |s| {
            let m = expected(s, ts, body);
            sigs.iter().any(|c| crypto::ct_eq(c, &m))
        })
        .ok_or(VerifyError::InvalidSignature)?;
        Ok(preset::verified(
            SCHEME,
            preset::json_field(body, "event_id"),
            Some(i),
        ))
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
        Some(vec![(
            "Paddle-Signature".into(),
            format!("ts={ts};h1={}", hex::encode(m)),
        )])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::preset::testing::*;
    use crate::verify::Verifier;

    // PROVIDERS §3 #8: paddle-python-sdk tests/Unit/Notification/test_Verifier.py
    // `test_validate_paddle_signature_header_integrity` (header with a dummy h1 first).
    const SECRET: &str = "pdl_ntf_01hbpjmytsa32fhr36nqgc3kgb_WvRO0eL4Bj9rgYYIBZY6wZhG4EHy9jzh";
    const HEADER: &str = "ts=1696195954;h1=dummy;h1=d96299976a6eb066f484d7fde011ac56fc32b38fc9940bc419d6e537fdc6ef02";
    const BODY: &[u8] = b"hello-world";

    fn v() -> std::sync::Arc<dyn Verifier> {
        verifier(&format!(
            "scheme = \"paddle\"\nsecrets = [\"pdl_ntfset_old\", \"{SECRET}\"]"
        ))
    }

    #[test]
    fn published_vector_with_several_h1_and_rotation() {
        let ok = v()
            .verify(
                &req(&[("Paddle-Signature", HEADER)]),
                BODY,
                at(1_696_195_954),
            )
            .unwrap();
        assert_eq!(
            (ok.scheme, ok.secret_index, ok.event_id),
            ("paddle", Some(1), None)
        );
    }

    #[test]
    fn negatives() {
        let v = v();
        let now = at(1_696_195_954);
        let r = req(&[("Paddle-Signature", HEADER)]);
        assert_eq!(
            v.verify(&r, b"hello-worle", now).unwrap_err(),
            VerifyError::InvalidSignature
        );
        assert_eq!(
            v.verify(&req(&[]), BODY, now).unwrap_err(),
            VerifyError::MissingSignature
        );
        assert_eq!(
            v.verify(&r, BODY, at(1_696_195_960)).unwrap_err(),
            VerifyError::StaleTimestamp
        );
        assert_eq!(
            v.verify(&r, BODY, at(1_696_195_948)).unwrap_err(),
            VerifyError::StaleTimestamp
        );
        assert!(v.verify(&r, BODY, at(1_696_195_959)).is_ok());
        let no_ts = req(&[(
            "Paddle-Signature",
            "h1=d96299976a6eb066f484d7fde011ac56fc32b38fc9940bc419d6e537fdc6ef02",
        )]);
        assert_eq!(
            v.verify(&no_ts, BODY, now).unwrap_err(),
            VerifyError::StaleTimestamp
        );
        // The SDK test's two other secrets must fail.
        for other in [
            "pdl_ntf_01hbpjmytsa32fhr36nqgc3kgb_WvRO0eL4Bj9rgYYIBZY6wZhG4EHy9jzX",
            "pdl_ntfset_01hs0t3tw21j988db1pam5xg8m_GrOWLNef+vmtjJYq4mSnHNzvc8uWoJ1I",
        ] {
            let wrong = verifier(&format!("scheme = \"paddle\"\nsecrets = [\"{other}\"]"));
            assert_eq!(
                wrong.verify(&r, BODY, now).unwrap_err(),
                VerifyError::InvalidSignature
            );
        }
    }

    #[test]
    fn sign_round_trips_and_reads_event_id() {
        let v = v();
        let body =
            br#"{"event_id":"evt_01hv8wptq8987qeep44cyrewp9","event_type":"transaction.billed"}"#;
        let h = v
            .sign(&http::Method::POST, body, at(1_700_000_000), "")
            .unwrap();
        let ok = v.verify(&signed_req(&h), body, at(1_700_000_000)).unwrap();
        assert_eq!(
            ok.event_id.as_deref(),
            Some("evt_01hv8wptq8987qeep44cyrewp9")
        );
    }
}
