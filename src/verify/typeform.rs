//! `scheme = "typeform"`: `Typeform-Signature: sha256=<base64(HMAC-SHA256(secret, body))>`.
//! Base64, not hex. No timestamp is signed, so replays are stopped by dedupe on the body's
//! `event_id` (the default `dedupe.key = "auto"`).

use std::time::SystemTime;

use http::request::Parts;

use super::kit::{json_id, BodyMac};
use super::{only_keys, secrets, Algorithm, Encoding, Verified, VerifyError};
use crate::config::raw::RawVerify;
use crate::config::Problems;

const SCHEME: &str = "typeform";

#[derive(Debug)]
pub struct TypeformVerifier {
    mac: BodyMac,
}

pub fn build(raw: &RawVerify, at: &str, p: &mut Problems) -> Option<TypeformVerifier> {
    only_keys(raw, &["secrets"], SCHEME, at, p);
    let secrets = secrets(raw, at, p);
    if secrets.is_empty() {
        return None;
    }
    Some(TypeformVerifier {
        mac: BodyMac {
            header: "typeform-signature",
            prefix: "sha256=",
            algorithm: Algorithm::Sha256,
            encoding: Encoding::Base64,
            secrets,
        },
    })
}

impl super::Verifier for TypeformVerifier {
    fn scheme(&self) -> &'static str {
        SCHEME
    }

    fn verify(&self, req: &Parts, body: &[u8], _now: SystemTime) -> Result<Verified, VerifyError> {
        let i = self.mac.check(req, body)?;
        Ok(Verified {
            scheme: SCHEME,
            event_id: json_id(body, "/event_id"),
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

    // Fixture generated with Python's standard library (no Typeform SDK signs webhooks):
    // base64.b64encode(hmac.new(b"tf_secret", BODY, hashlib.sha256).digest())
    const BODY: &[u8] = br#"{"event_id":"01HXYZTYPEFORM","event_type":"form_response"}"#;
    const SIG: &str = "sha256=4PlbqjdUMb7B1MGXR+6kaFFmtEcmFrz+fWrAnPKm140=";

    fn v() -> TypeformVerifier {
        build(
            &raw("typeform", &["old_secret", "tf_secret"]),
            "v",
            &mut Problems::default(),
        )
        .unwrap()
    }

    #[test]
    fn fixture_verifies_with_rotated_secret() {
        let r = parts("POST", "/", &[("typeform-signature", SIG)]);
        let ok = v().verify(&r, BODY, SystemTime::now()).unwrap();
        assert_eq!(ok.secret_index, Some(1));
        assert_eq!(ok.event_id.as_deref(), Some("01HXYZTYPEFORM"));
        assert_eq!(ok.scheme, "typeform");
    }

    #[test]
    fn negatives() {
        let now = SystemTime::now();
        let r = parts("POST", "/", &[("typeform-signature", SIG)]);
        assert_eq!(
            v().verify(&r, b"{}", now).unwrap_err(),
            VerifyError::InvalidSignature
        );
        let only_old = build(
            &raw("typeform", &["old_secret"]),
            "v",
            &mut Problems::default(),
        )
        .unwrap();
        assert_eq!(
            only_old.verify(&r, BODY, now).unwrap_err(),
            VerifyError::InvalidSignature
        );
        let none = parts("POST", "/", &[]);
        assert_eq!(
            v().verify(&none, BODY, now).unwrap_err(),
            VerifyError::MissingSignature
        );
        // Hex of the right MAC is not Typeform's encoding.
        let hexed = parts("POST", "/", &[("typeform-signature", "sha256=00ff")]);
        assert_eq!(
            v().verify(&hexed, BODY, now).unwrap_err(),
            VerifyError::InvalidSignature
        );
        let unprefixed = parts("POST", "/", &[("typeform-signature", &SIG[7..])]);
        assert_eq!(
            v().verify(&unprefixed, BODY, now).unwrap_err(),
            VerifyError::InvalidSignature
        );
        // Several signatures in one header (a roll): any one matching passes.
        let several = format!("sha256=AAAA,{SIG}");
        let r = parts("POST", "/", &[("typeform-signature", &several)]);
        assert!(v().verify(&r, BODY, now).is_ok());
    }

    #[test]
    fn config_rejects_unused_keys() {
        let mut r = raw("typeform", &["s"]);
        r.tolerance = Some("5m".into());
        let mut p = Problems::default();
        build(&r, "route[0].verify", &mut p);
        assert_eq!(
            p.errors,
            ["route[0].verify.tolerance: not used by scheme \"typeform\""]
        );
    }
}
