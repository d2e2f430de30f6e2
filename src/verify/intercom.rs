//! `scheme = "intercom"`: `X-Hub-Signature: sha1=<hex(HMAC-SHA1(client_secret, body))>`, the
//! app's client secret as key. No timestamp; the event id is the body's `id` (`notif_…`).
//! Intercom's `ping` topic is an ordinary signed notification (no handshake).

use std::time::SystemTime;

use http::request::Parts;

use super::kit::{json_id, BodyMac};
use super::{only_keys, secrets, Algorithm, Encoding, Verified, VerifyError};
use crate::config::raw::RawVerify;
use crate::config::Problems;

const SCHEME: &str = "intercom";

#[derive(Debug)]
pub struct IntercomVerifier {
    mac: BodyMac,
}

pub fn build(raw: &RawVerify, at: &str, p: &mut Problems) -> Option<IntercomVerifier> {
    only_keys(raw, &["secrets"], SCHEME, at, p);
    let secrets = secrets(raw, at, p);
    if secrets.is_empty() {
        return None;
    }
    Some(IntercomVerifier {
        mac: BodyMac {
            header: "x-hub-signature",
            prefix: "sha1=",
            algorithm: Algorithm::Sha1,
            encoding: Encoding::Hex,
            secrets,
        },
    })
}

impl super::Verifier for IntercomVerifier {
    fn scheme(&self) -> &'static str {
        SCHEME
    }

    fn verify(&self, req: &Parts, body: &[u8], _now: SystemTime) -> Result<Verified, VerifyError> {
        let i = self.mac.check(req, body)?;
        Ok(Verified {
            scheme: SCHEME,
            event_id: json_id(body, "/id"),
            secret_index: Some(i),
            replay_key: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::kit::testutil::{parts, raw};
    use crate::verify::Verifier;

    // Fixture generated with Python's standard library (Intercom publishes no vector and no
    // SDK verifier): hmac.new(b"ic_client_secret", BODY, hashlib.sha1).hexdigest()
    const BODY: &[u8] = br#"{"type":"notification_event","topic":"ping","id":"notif_ccd8a4d2-c8b6-4a4b-9e5d-4d1d8b5c2f1a","data":{"item":{"type":"ping","message":"hello"}}}"#;
    const SIG: &str = "sha1=4e4fd068055dbf5fc556909d38e3c38f187483f4";

    fn v(secrets: &[&str]) -> IntercomVerifier {
        build(&raw("intercom", secrets), "v", &mut Problems::default()).unwrap()
    }

    #[test]
    fn fixture_and_rotation() {
        let r = parts("POST", "/", &[("x-hub-signature", SIG)]);
        let ok = v(&["old", "ic_client_secret"])
            .verify(&r, BODY, SystemTime::now())
            .unwrap();
        assert_eq!(ok.secret_index, Some(1));
        assert_eq!(
            ok.event_id.as_deref(),
            Some("notif_ccd8a4d2-c8b6-4a4b-9e5d-4d1d8b5c2f1a")
        );
    }

    #[test]
    fn negatives() {
        let now = SystemTime::now();
        let good = v(&["ic_client_secret"]);
        let r = parts("POST", "/", &[("x-hub-signature", SIG)]);
        assert_eq!(
            good.verify(&r, &BODY[1..], now).unwrap_err(),
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
        // A GitHub-style sha256= header is not what Intercom sends.
        let sha256 = parts(
            "POST",
            "/",
            &[("x-hub-signature", &SIG.replace("sha1=", "sha256="))],
        );
        assert_eq!(
            good.verify(&sha256, BODY, now).unwrap_err(),
            VerifyError::InvalidSignature
        );
        let several = format!("sha1={} {SIG}", "0".repeat(40));
        assert!(good
            .verify(
                &parts("POST", "/", &[("x-hub-signature", &several)]),
                BODY,
                now
            )
            .is_ok());
    }
}
