//! `scheme = "okta"` (Okta event hooks).
//!
//! Okta signs nothing: every request carries the static header configured on the hook
//! (`Authorization` unless `signature_header` names another) with the configured value, which
//! is compared to each of `secrets` in constant time (digests, so not even its length leaks). No timestamp. The event id is the body's
//! `eventId`.
//!
//! Handshake: Okta's one-time verification `GET` with `X-Okta-Verification-Challenge: <v>` is
//! answered `200 application/json {"verification":"<v>"}` — after the same header check, since
//! Okta sends the configured header on the verification request too (Okta support article
//! "Unable to verify event hook"). Nothing is recorded.

use std::time::SystemTime;

use bytes::Bytes;
use http::request::Parts;
use http::{HeaderName, Method, StatusCode};

use super::kit::match_token;
use super::{header, only_keys, secrets, Handshake, Verified, VerifyError};
use crate::config::raw::RawVerify;
use crate::config::{Problems, Secret};

pub(crate) const SCHEME: &str = "okta";
const CHALLENGE: &str = "x-okta-verification-challenge";

#[derive(Debug)]
pub struct OktaVerifier {
    header: HeaderName,
    secrets: Vec<Secret>,
}

pub fn build(raw: &RawVerify, at: &str, p: &mut Problems) -> Option<OktaVerifier> {
    only_keys(raw, &["secrets", "signature_header"], SCHEME, at, p);
    let secrets = secrets(raw, at, p);
    let name = raw.signature_header.as_deref().unwrap_or("Authorization");
    let header = match HeaderName::from_bytes(name.as_bytes()) {
        Ok(h) => h,
        Err(_) => {
            p.error(
                format!("{at}.signature_header"),
                format!("invalid header name {name:?}"),
            );
            return None;
        }
    };
    if secrets.is_empty() {
        return None;
    }
    Some(OktaVerifier { header, secrets })
}

impl OktaVerifier {
    fn check(&self, req: &Parts) -> Result<usize, VerifyError> {
        let sent = header(req, self.header.as_str())
            .filter(|s| !s.is_empty())
            .ok_or(VerifyError::MissingSignature)?;
        match_token(&self.secrets, sent.as_bytes()).ok_or(VerifyError::InvalidSignature)
    }
}

impl super::Verifier for OktaVerifier {
    fn scheme(&self) -> &'static str {
        SCHEME
    }

    fn credential_header(&self) -> Option<&str> {
        Some(self.header.as_str())
    }

    fn verify(&self, req: &Parts, body: &[u8], _now: SystemTime) -> Result<Verified, VerifyError> {
        let i = self.check(req)?;
        Ok(Verified {
            scheme: SCHEME,
            event_id: super::kit::json_id(body, "/eventId"),
            secret_index: Some(i),
            replay_key: None,
        })
    }

    fn handshake(
        &self,
        req: &Parts,
        _body: &[u8],
        _now: SystemTime,
    ) -> Option<Result<Handshake, VerifyError>> {
        if req.method != Method::GET {
            return None;
        }
        let challenge = header(req, CHALLENGE)?;
        Some(self.check(req).map(|_| Handshake {
            status: StatusCode::OK,
            content_type: "application/json",
            body: Bytes::from(serde_json::json!({ "verification": challenge }).to_string()),
        }))
    }

    fn extra_methods(&self) -> &'static [Method] {
        &[Method::GET]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::kit::testutil::{parts, raw};
    use crate::verify::Verifier;

    // Shaped like Okta's documented event hook delivery (Okta signs nothing to reproduce).
    const BODY: &[u8] = br#"{"eventType":"com.okta.event_hook","eventTypeVersion":"1.0","cloudEventsVersion":"0.1","source":"https://example.okta.com/api/v1/eventHooks/whoql0HfiLGPWc8Jx0g3","eventId":"b5a188b9-5ece-4636-b041-482ffda96311","data":{"events":[{"uuid":"4af3e4a5-bb2f-11ea-8a1c-b3c0dd3d7b82","eventType":"user.session.start"}]},"eventTime":"2020-07-01T00:21:39.000Z","contentType":"application/json"}"#;

    fn v() -> OktaVerifier {
        build(
            &raw("okta", &["old-shared-secret", "my-shared-secret"]),
            "v",
            &mut Problems::default(),
        )
        .unwrap()
    }

    #[test]
    fn static_header_and_rotation() {
        let now = SystemTime::now();
        let r = parts("POST", "/okta", &[("authorization", "my-shared-secret")]);
        let ok = v().verify(&r, BODY, now).unwrap();
        assert_eq!(ok.secret_index, Some(1));
        assert_eq!(
            ok.event_id.as_deref(),
            Some("b5a188b9-5ece-4636-b041-482ffda96311")
        );
        assert!(v().handshake(&r, BODY, now).is_none());
        let r = parts("POST", "/okta", &[("authorization", "old-shared-secret")]);
        assert_eq!(
            v().verify(&r, b"not json", now).unwrap().secret_index,
            Some(0)
        );
    }

    #[test]
    fn negatives() {
        let now = SystemTime::now();
        let e = |h: &[(&str, &str)]| {
            v().verify(&parts("POST", "/okta", h), BODY, now)
                .unwrap_err()
        };
        assert_eq!(e(&[]), VerifyError::MissingSignature);
        assert_eq!(e(&[("authorization", "")]), VerifyError::MissingSignature);
        assert_eq!(
            e(&[("authorization", "my-shared-secreT")]),
            VerifyError::InvalidSignature
        );
        assert_eq!(
            e(&[("authorization", "Bearer my-shared-secret")]),
            VerifyError::InvalidSignature
        );
        assert_eq!(
            e(&[("authorization", "my-shared-secret-and-more")]),
            VerifyError::InvalidSignature
        );
        assert_eq!(
            e(&[("x-okta-token", "my-shared-secret")]),
            VerifyError::MissingSignature
        );
    }

    #[test]
    fn custom_header_name() {
        let mut r = raw("okta", &["s3cret"]);
        r.signature_header = Some("X-Okta-Token".into());
        let v = build(&r, "v", &mut Problems::default()).unwrap();
        let ok = parts("POST", "/okta", &[("x-okta-token", "s3cret")]);
        assert!(v.verify(&ok, BODY, SystemTime::now()).is_ok());
        let wrong_place = parts("POST", "/okta", &[("authorization", "s3cret")]);
        assert_eq!(
            v.verify(&wrong_place, BODY, SystemTime::now()).unwrap_err(),
            VerifyError::MissingSignature
        );
        let mut bad = raw("okta", &["s"]);
        bad.signature_header = Some("bad header".into());
        let mut p = Problems::default();
        assert!(build(&bad, "route[3].verify", &mut p).is_none());
        assert_eq!(
            p.errors,
            ["route[3].verify.signature_header: invalid header name \"bad header\""]
        );
    }

    #[test]
    fn verification_handshake() {
        let now = SystemTime::now();
        let challenge = "Me_rShK8JHsTnbyYrWXCEoMGbM_zsZ6k0hLPZ_Pg";
        let r = parts(
            "GET",
            "/okta",
            &[
                (CHALLENGE, challenge),
                ("authorization", "my-shared-secret"),
            ],
        );
        let hs = v().handshake(&r, b"", now).unwrap().unwrap();
        assert_eq!(hs.status, StatusCode::OK);
        assert_eq!(hs.content_type, "application/json");
        assert_eq!(
            &hs.body[..],
            br#"{"verification":"Me_rShK8JHsTnbyYrWXCEoMGbM_zsZ6k0hLPZ_Pg"}"#
        );
        // A quote in the challenge cannot break out of the JSON string.
        let r = parts(
            "GET",
            "/okta",
            &[(CHALLENGE, "a\"b"), ("authorization", "my-shared-secret")],
        );
        assert_eq!(
            &v().handshake(&r, b"", now).unwrap().unwrap().body[..],
            br#"{"verification":"a\"b"}"#
        );
        let forged = parts(
            "GET",
            "/okta",
            &[(CHALLENGE, challenge), ("authorization", "guess")],
        );
        assert_eq!(
            v().handshake(&forged, b"", now).unwrap().unwrap_err(),
            VerifyError::InvalidSignature
        );
        let bare = parts("GET", "/okta", &[(CHALLENGE, challenge)]);
        assert_eq!(
            v().handshake(&bare, b"", now).unwrap().unwrap_err(),
            VerifyError::MissingSignature
        );
        assert!(v()
            .handshake(&parts("GET", "/okta", &[]), b"", now)
            .is_none());
        assert_eq!(v().extra_methods(), &[Method::GET]);
    }

    #[test]
    fn debug_never_shows_secrets() {
        let shown = format!("{:?}", v());
        assert!(!shown.contains("shared-secret"), "{shown}");
    }
}
