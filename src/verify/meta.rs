//! `scheme = "meta"` (Facebook, Instagram, WhatsApp Cloud API).
//!
//! Events: `X-Hub-Signature-256: sha256=<hex(HMAC-SHA256(app_secret, body))>` over the raw
//! bytes as sent (Meta signs its escaped-unicode serialisation; never re-encode). The legacy
//! SHA-1 `X-Hub-Signature` is not accepted. No timestamp, no event id in a fixed place:
//! dedupe falls back to the body's SHA-256, which a redelivery shares.
//!
//! Handshake: `GET ?hub.mode=subscribe&hub.verify_token=…&hub.challenge=…` is answered
//! `200 text/plain <challenge>` when `hub.verify_token` equals `verify_token` (constant time),
//! else rejected; nothing is recorded.

use std::time::SystemTime;

use bytes::Bytes;
use http::request::Parts;
use http::{Method, StatusCode};

use super::kit::{query_param, token_eq, BodyMac};
use super::{only_keys, secrets, Algorithm, Encoding, Handshake, Verified, VerifyError};
use crate::config::raw::RawVerify;
use crate::config::{Problems, Secret};

const SCHEME: &str = "meta";

#[derive(Debug)]
pub struct MetaVerifier {
    mac: BodyMac,
    verify_token: Option<Secret>,
}

pub fn build(raw: &RawVerify, at: &str, p: &mut Problems) -> Option<MetaVerifier> {
    only_keys(raw, &["secrets", "verify_token"], SCHEME, at, p);
    let secrets = secrets(raw, at, p);
    let verify_token = raw
        .verify_token
        .as_deref()
        .and_then(|t| crate::config::resolve_secret_at(t, &format!("{at}.verify_token"), p));
    if secrets.is_empty() || (raw.verify_token.is_some() && verify_token.is_none()) {
        return None;
    }
    Some(MetaVerifier {
        mac: BodyMac {
            header: "x-hub-signature-256",
            prefix: "sha256=",
            algorithm: Algorithm::Sha256,
            encoding: Encoding::Hex,
            secrets,
        },
        verify_token,
    })
}

impl MetaVerifier {
    fn answer(&self, req: &Parts) -> Result<Handshake, VerifyError> {
        if query_param(req, "hub.mode").as_deref() != Some("subscribe") {
            return Err(VerifyError::InvalidSignature);
        }
        let sent = query_param(req, "hub.verify_token").ok_or(VerifyError::MissingSignature)?;
        // No `verify_token` configured: no subscription can be confirmed through this route.
        let expected = self
            .verify_token
            .as_ref()
            .ok_or(VerifyError::InvalidSignature)?;
        if !token_eq(sent.as_bytes(), expected.expose()) {
            return Err(VerifyError::InvalidSignature);
        }
        match query_param(req, "hub.challenge").filter(|c| !c.is_empty()) {
            Some(challenge) => Ok(Handshake {
                status: StatusCode::OK,
                content_type: "text/plain; charset=utf-8",
                body: Bytes::from(challenge),
            }),
            None => Ok(Handshake {
                status: StatusCode::BAD_REQUEST,
                content_type: "application/json",
                body: Bytes::from_static(br#"{"error":"missing_challenge"}"#),
            }),
        }
    }
}

impl super::Verifier for MetaVerifier {
    fn scheme(&self) -> &'static str {
        SCHEME
    }

    fn verify(&self, req: &Parts, body: &[u8], _now: SystemTime) -> Result<Verified, VerifyError> {
        let i = self.mac.check(req, body)?;
        Ok(Verified {
            scheme: SCHEME,
            event_id: None,
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
        if req.method != Method::GET || query_param(req, "hub.mode").is_none() {
            return None;
        }
        Some(self.answer(req))
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

    // Fixture generated with Python's standard library (Meta publishes no vector or SDK
    // verifier): hmac.new(b"meta_app_secret", BODY, hashlib.sha256).hexdigest(). The body keeps
    // Meta's escaped unicode (`caf\u00e9`) as sent.
    const BODY: &[u8] = br#"{"object":"whatsapp_business_account","entry":[{"id":"102290129340398","changes":[{"field":"messages","value":{"messages":[{"id":"wamid.HBgLMTY1MDM4Nzk0MzkVAgASGBQzQTRBNjU5OUFFRTAzODEwMTQ0RgA=","text":{"body":"caf\u00e9"}}]}}]}]}"#;
    const SIG: &str = "sha256=bc7823ba57bb19d206aade4cc44fbb9c25e6bbdd408f30e07712ec6fdc1f8e9d";

    fn v(secrets: &[&str]) -> MetaVerifier {
        let mut r = raw("meta", secrets);
        r.verify_token = Some("tok-123".into());
        build(&r, "v", &mut Problems::default()).unwrap()
    }

    #[test]
    fn fixture_and_rotation() {
        let r = parts("POST", "/", &[("x-hub-signature-256", SIG)]);
        let ok = v(&["new", "meta_app_secret"])
            .verify(&r, BODY, SystemTime::now())
            .unwrap();
        assert_eq!(ok.secret_index, Some(1));
        assert_eq!(ok.scheme, "meta");
        assert!(v(&["meta_app_secret"])
            .handshake(&r, BODY, SystemTime::now())
            .is_none());
    }

    #[test]
    fn negatives() {
        let now = SystemTime::now();
        let good = v(&["meta_app_secret"]);
        let r = parts("POST", "/", &[("x-hub-signature-256", SIG)]);
        // Re-encoding the escaped unicode (what a JSON re-serialiser does) breaks it.
        let decoded = String::from_utf8(BODY.to_vec())
            .unwrap()
            .replace("\\u00e9", "é");
        assert_eq!(
            good.verify(&r, decoded.as_bytes(), now).unwrap_err(),
            VerifyError::InvalidSignature
        );
        assert_eq!(
            v(&["nope"]).verify(&r, BODY, now).unwrap_err(),
            VerifyError::InvalidSignature
        );
        assert_eq!(
            good.verify(&parts("POST", "/", &[]), BODY, now)
                .unwrap_err(),
            VerifyError::MissingSignature
        );
        let sha1 = parts("POST", "/", &[("x-hub-signature", "sha1=00")]);
        assert_eq!(
            good.verify(&sha1, BODY, now).unwrap_err(),
            VerifyError::MissingSignature
        );
        let several = format!("sha256={},{SIG}", "ab".repeat(32));
        assert!(good
            .verify(
                &parts("POST", "/", &[("x-hub-signature-256", &several)]),
                BODY,
                now
            )
            .is_ok());
    }

    #[test]
    fn handshake_echoes_challenge_only_with_the_token() {
        let now = SystemTime::now();
        let good = v(&["meta_app_secret"]);
        let ok = parts(
            "GET",
            "/wh?hub.mode=subscribe&hub.challenge=1158201444&hub.verify_token=tok-123",
            &[],
        );
        let hs = good.handshake(&ok, b"", now).unwrap().unwrap();
        assert_eq!(hs.status, StatusCode::OK);
        assert_eq!(hs.content_type, "text/plain; charset=utf-8");
        assert_eq!(&hs.body[..], b"1158201444");
        let encoded = parts(
            "GET",
            "/wh?hub.mode=subscribe&hub.challenge=a%20b&hub.verify_token=tok%2D123",
            &[],
        );
        assert_eq!(
            &good.handshake(&encoded, b"", now).unwrap().unwrap().body[..],
            b"a b"
        );
        for (uri, err) in [
            (
                "/wh?hub.mode=subscribe&hub.challenge=1&hub.verify_token=tok-124",
                VerifyError::InvalidSignature,
            ),
            (
                "/wh?hub.mode=subscribe&hub.challenge=1&hub.verify_token=",
                VerifyError::InvalidSignature,
            ),
            (
                "/wh?hub.mode=subscribe&hub.challenge=1",
                VerifyError::MissingSignature,
            ),
            (
                "/wh?hub.mode=unsubscribe&hub.challenge=1&hub.verify_token=tok-123",
                VerifyError::InvalidSignature,
            ),
        ] {
            assert_eq!(
                good.handshake(&parts("GET", uri, &[]), b"", now)
                    .unwrap()
                    .unwrap_err(),
                err,
                "{uri}"
            );
        }
        let no_challenge = parts(
            "GET",
            "/wh?hub.mode=subscribe&hub.verify_token=tok-123",
            &[],
        );
        assert_eq!(
            good.handshake(&no_challenge, b"", now)
                .unwrap()
                .unwrap()
                .status,
            StatusCode::BAD_REQUEST
        );
        // Without a configured verify_token no handshake succeeds.
        let no_token = build(
            &raw("meta", &["meta_app_secret"]),
            "v",
            &mut Problems::default(),
        )
        .unwrap();
        assert_eq!(
            no_token.handshake(&ok, b"", now).unwrap().unwrap_err(),
            VerifyError::InvalidSignature
        );
        // A GET that is not a handshake must carry a signature like any event.
        assert!(good
            .handshake(&parts("GET", "/wh", &[]), b"", now)
            .is_none());
        assert_eq!(good.extra_methods(), &[Method::GET]);
        let shown = format!("{good:?}");
        assert!(
            !shown.contains("tok-123") && !shown.contains("meta_app_secret"),
            "{shown}"
        );
    }

    #[test]
    fn config_errors() {
        let mut r = raw("meta", &["s"]);
        r.verify_token = Some("env:HOOKGATE_TEST_META_UNSET".into());
        r.signature_header = Some("X-Sig".into());
        let mut p = Problems::default();
        assert!(build(&r, "route[2].verify", &mut p).is_none());
        let all = p.errors.join("\n");
        assert!(all.contains("route[2].verify.verify_token: environment variable HOOKGATE_TEST_META_UNSET is not set"), "{all}");
        assert!(
            all.contains("route[2].verify.signature_header: not used by scheme \"meta\""),
            "{all}"
        );
    }
}
