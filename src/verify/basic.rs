//! `scheme = "basic"`: HTTP Basic authentication, `secrets = ["user:password", …]`. The
//! `Authorization: Basic <base64(user:password)>` credentials must equal one of them (constant
//! time, lengths hidden). No timestamp, no event id.

use std::time::SystemTime;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use http::request::Parts;

use super::preset::{self, find_secret};
use super::{only_keys, secrets, Verified, VerifyError};
use crate::config::raw::RawVerify;
use crate::config::{Problems, Secret};

const SCHEME: &str = "basic";

#[derive(Debug)]
pub struct BasicVerifier {
    secrets: Vec<Secret>,
}

pub fn build(raw: &RawVerify, at: &str, p: &mut Problems) -> Option<BasicVerifier> {
    only_keys(raw, &["secrets"], SCHEME, at, p);
    let secrets = secrets(raw, at, p);
    for (i, s) in secrets.iter().enumerate() {
        if !s.expose().contains(&b':') {
            p.error(
                format!("{at}.secrets[{i}]"),
                "must have the form \"user:password\"",
            );
        }
    }
    (!secrets.is_empty()).then_some(BasicVerifier { secrets })
}

/// The credentials of an `Authorization` header with the given scheme (case-insensitive).
pub(crate) fn credentials<'a>(req: &'a Parts, scheme: &str) -> Option<&'a str> {
    let h = super::header(req, "authorization")?;
    let (s, rest) = h.split_once(' ')?;
    s.eq_ignore_ascii_case(scheme).then(|| rest.trim())
}

impl super::Verifier for BasicVerifier {
    fn scheme(&self) -> &'static str {
        SCHEME
    }

    fn verify(&self, req: &Parts, _body: &[u8], _now: SystemTime) -> Result<Verified, VerifyError> {
        let given = credentials(req, "basic")
            .filter(|c| !c.is_empty())
            .ok_or(VerifyError::MissingSignature)?;
        let given = STANDARD
            .decode(given)
            .map_err(|_| VerifyError::InvalidSignature)?;
        let i = find_secret(&self.secrets, |s| preset::token_eq(&given, s))
            .ok_or(VerifyError::InvalidSignature)?;
        Ok(preset::verified(SCHEME, None, Some(i)))
    }

    fn sign(
        &self,
        _method: &http::Method,
        _body: &[u8],
        _now: SystemTime,
        _url: &str,
    ) -> Option<Vec<(String, String)>> {
        let creds = STANDARD.encode(self.secrets.first()?.expose());
        Some(vec![("Authorization".into(), format!("Basic {creds}"))])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::preset::testing::*;

    #[test]
    fn rfc7617_example_and_rotation() {
        // RFC 7617 §2: "Aladdin:open sesame" → "QWxhZGRpbjpvcGVuIHNlc2FtZQ==".
        let v = verifier("scheme = \"basic\"\nsecrets = [\"old:pw\", \"Aladdin:open sesame\"]");
        let ok = v
            .verify(
                &req(&[("Authorization", "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==")]),
                b"",
                at(0),
            )
            .unwrap();
        assert_eq!(
            (ok.scheme, ok.secret_index, ok.event_id),
            ("basic", Some(1), None)
        );
        assert!(v
            .verify(
                &req(&[("Authorization", "basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==")]),
                b"",
                at(0)
            )
            .is_ok());
    }

    #[test]
    fn negatives() {
        let v = verifier("scheme = \"basic\"\nsecrets = [\"Aladdin:open sesame\"]");
        assert_eq!(
            v.verify(&req(&[]), b"", at(0)).unwrap_err(),
            VerifyError::MissingSignature
        );
        assert_eq!(
            v.verify(
                &req(&[("Authorization", "Bearer QWxhZGRpbjpvcGVuIHNlc2FtZQ==")]),
                b"",
                at(0)
            )
            .unwrap_err(),
            VerifyError::MissingSignature
        );
        for bad in [
            "QWxhZGRpbjpvcGVuIHNlc2FtZR==",
            "QWxhZGRpbg==",
            "!!",
            "QWxhZGRpbjpvcGVuIHNlc2FtZQ==,QWxhZGRpbjpvcGVuIHNlc2FtZQ==",
        ] {
            let r = req(&[("Authorization", &format!("Basic {bad}"))]);
            assert_eq!(
                v.verify(&r, b"", at(0)).unwrap_err(),
                VerifyError::InvalidSignature,
                "{bad}"
            );
        }
        let h = v.sign(&http::Method::POST, b"", at(0), "").unwrap();
        assert!(v.verify(&signed_req(&h), b"", at(0)).is_ok());
        let e = try_build("scheme = \"basic\"\nsecrets = [\"nocolon\"]", None).unwrap_err();
        assert_eq!(
            e,
            "route[0].verify.secrets[0]: must have the form \"user:password\""
        );
    }
}
