//! `scheme = "standard-webhooks"` and `scheme = "svix"` (Standard Webhooks v1.0.0):
//! `webhook-id`, `webhook-timestamp` (unix s), `webhook-signature: v1,<b64> [v1a,<b64> …]`, all
//! over `"{id}.{timestamp}.{body}"`. `v1` is HMAC-SHA256 keyed with the base64-decoded part of
//! a `whsec_` secret (prefix optional, missing `=` padding tolerated like the reference python
//! library); `v1a` is Ed25519 with `public_key = "whpk_<b64>"`. The header is a space-separated
//! list (rotation); unknown versions are skipped. Tolerance 5 min in both directions, as in the
//! reference libraries. `svix` also accepts the `svix-id`/`svix-timestamp`/`svix-signature`
//! family. Event id: the message id.

use std::time::{Duration, SystemTime};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use http::request::Parts;

use super::preset::{self, check_fresh, parse_ts};
use super::{crypto, only_keys, Algorithm, Verified, VerifyError};
use crate::config::raw::RawVerify;
use crate::config::secret::LENIENT_BASE64 as LENIENT;
use crate::config::{Problems, Secret};

#[derive(Debug)]
pub struct StandardWebhooksVerifier {
    scheme: &'static str,
    /// HMAC keys, already decoded from `whsec_…`.
    keys: Vec<Secret>,
    public_key: Option<ed25519_dalek::VerifyingKey>,
    tolerance: Duration,
}

impl StandardWebhooksVerifier {
    /// A v1 (HMAC) verifier over ready keys, for schemes that reuse the format (GitLab's
    /// signing token). `Verified.secret_index` is the index into `keys`.
    pub(crate) fn with_keys(scheme: &'static str, keys: Vec<Secret>, tolerance: Duration) -> Self {
        StandardWebhooksVerifier {
            scheme,
            keys,
            public_key: None,
            tolerance,
        }
    }
}

/// The HMAC key of a `whsec_<base64>` secret (prefix optional); the same decoding as
/// `[route.forward.sign]`'s.
pub(crate) use crate::config::secret::decode_whsec as decode_secret;

pub fn build(
    raw: &RawVerify,
    scheme: &'static str,
    at: &str,
    p: &mut Problems,
) -> Option<StandardWebhooksVerifier> {
    only_keys(raw, &["secrets", "public_key", "tolerance"], scheme, at, p);
    let tolerance = preset::tolerance(raw, Duration::from_secs(300), at, p);
    let mut keys = Vec::new();
    for (i, spec) in raw.secrets.iter().flatten().enumerate() {
        let key_at = format!("{at}.secrets[{i}]");
        let Some(secret) = crate::config::resolve_secret_at(spec, &key_at, p) else {
            continue;
        };
        match secret.expose_str().and_then(decode_secret) {
            Some(k) => keys.push(Secret::new(k)),
            None => p.error(
                key_at,
                "is not a Standard Webhooks secret (expected whsec_<base64>)",
            ),
        }
    }
    let public_key = preset::public_key_text(raw, at, p).and_then(|t| {
        let b64 = t.strip_prefix("whpk_");
        if b64.is_none() {
            p.error(
                format!("{at}.public_key"),
                "must start with whpk_ (whpk_<base64 of 32 bytes>)",
            );
        }
        preset::ed25519_key(
            b64.and_then(|b| LENIENT.decode(b).ok()),
            "whpk_<base64 of 32 bytes>",
            at,
            p,
        )
    });
    if raw.secrets.as_deref().unwrap_or_default().is_empty() && raw.public_key.is_none() {
        p.error(
            format!("{at}.secrets"),
            "at least one secret (or public_key) is required",
        );
    }
    if keys.is_empty() && public_key.is_none() {
        return None;
    }
    Some(StandardWebhooksVerifier {
        scheme,
        keys,
        public_key,
        tolerance,
    })
}

impl StandardWebhooksVerifier {
    /// The header family the request uses: `svix-*` (svix only) or `webhook-*`.
    /// The request's `{family}-{name}` header, non-empty.
    fn header<'a>(&self, req: &'a Parts, name: &str) -> Option<&'a str> {
        preset::header_nonempty(req, &format!("{}-{name}", self.family(req)))
    }

    fn family(&self, req: &Parts) -> &'static str {
        if self.scheme == "svix" && req.headers.contains_key("svix-signature") {
            "svix"
        } else {
            "webhook"
        }
    }
}

impl super::Verifier for StandardWebhooksVerifier {
    fn scheme(&self) -> &'static str {
        self.scheme
    }

    fn claimed_id(&self, req: &Parts, _body: &[u8]) -> Option<String> {
        self.header(req, "id").map(str::to_string)
    }

    fn signed_at(&self, req: &Parts, _body: &[u8]) -> Option<i64> {
        preset::signed_at(self.header(req, "timestamp"))
    }

    fn retries_resigned(&self) -> bool {
        true
    }

    fn verify(&self, req: &Parts, body: &[u8], now: SystemTime) -> Result<Verified, VerifyError> {
        let h = |name: &str| self.header(req, name);
        let sig_header = h("signature").ok_or(VerifyError::MissingSignature)?;
        let ts = h("timestamp").ok_or(VerifyError::StaleTimestamp)?;
        check_fresh(parse_ts(ts)?, Duration::from_secs(1), now, self.tolerance)?;
        let id = h("id").ok_or(VerifyError::MissingSignature)?;
        let chunks: [&[u8]; 5] = [id.as_bytes(), b".", ts.as_bytes(), b".", body];
        let mut v1 = Vec::new();
        let mut v1a = Vec::new();
        for entry in sig_header.split(' ').filter(|e| !e.is_empty()) {
            match entry.split_once(',') {
                Some(("v1", s)) => v1.extend(STANDARD.decode(s).ok()),
                Some(("v1a", s)) => v1a.extend(STANDARD.decode(s).ok()),
                _ => {}
            }
        }
        let hit = if v1.is_empty() {
            None
        } else {
            preset::find_secret(&self.keys, |k| {
                let m = crypto::mac(Algorithm::Sha256, k, &chunks);
                v1.iter().any(|c| crypto::ct_eq(c, &m))
            })
            .map(Some)
        };
        let hit = hit.or_else(|| {
            let key = self.public_key.as_ref()?;
            v1a.iter()
                .any(|s| preset::ed25519_ok(key, s, &chunks))
                .then_some(None)
        });
        match hit {
            Some(index) => Ok(preset::verified(self.scheme, Some(id.to_string()), index)),
            None => Err(VerifyError::InvalidSignature),
        }
    }

    fn sign(
        &self,
        _method: &http::Method,
        body: &[u8],
        now: SystemTime,
        _url: &str,
    ) -> Option<Vec<(String, String)>> {
        let key = self.keys.first()?;
        let id = format!("msg_{}", uuid::Uuid::now_v7().simple());
        let ts = preset::unix_secs(now).to_string();
        let m = crypto::mac(
            Algorithm::Sha256,
            key.expose(),
            &[id.as_bytes(), b".", ts.as_bytes(), b".", body],
        );
        let f = if self.scheme == "svix" {
            "svix"
        } else {
            "webhook"
        };
        Some(vec![
            (format!("{f}-id"), id),
            (format!("{f}-timestamp"), ts),
            (
                format!("{f}-signature"),
                format!("v1,{}", STANDARD.encode(m)),
            ),
        ])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::preset::testing::*;
    use crate::verify::Verifier;
    use ed25519_dalek::Signer;

    const V1_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const V1_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const V1_BODY: &[u8] = br#"{"test": 2432232314}"#;
    const V1_SIG: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    fn v(scheme: &str, secrets: &str) -> std::sync::Arc<dyn Verifier> {
        verifier(&format!("scheme = \"{scheme}\"\nsecrets = [{secrets}]"))
    }

    fn wh(id: &str, ts: &str, sig: &str) -> Parts {
        req(&[
            ("webhook-id", id),
            ("webhook-timestamp", ts),
            ("webhook-signature", sig),
        ])
    }

    #[test]
    fn published_vectors() {
        // PROVIDERS §3 #1: standard-webhooks python tests / svix-webhooks python tests.
        let ok = v("standard-webhooks", &format!("\"{V1_SECRET}\""))
            .verify(&wh(V1_ID, "1614265330", V1_SIG), V1_BODY, at(1_614_265_330))
            .unwrap();
        assert_eq!(
            (ok.scheme, ok.event_id.as_deref(), ok.secret_index),
            ("standard-webhooks", Some(V1_ID), Some(0))
        );
        // §3 #2: standard-webhooks rust library `test_sign`, as the second (rotated) secret.
        let r = wh(
            "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk",
            "1649367553",
            "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=",
        );
        let ok = v(
            "standard-webhooks",
            &format!("\"{V1_SECRET}\", \"whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD\""),
        )
        .verify(
            &r,
            br#"{"email":"test@example.com","username":"test_user"}"#,
            at(1_649_367_553),
        )
        .unwrap();
        assert_eq!(ok.secret_index, Some(1));
    }

    #[test]
    fn unpadded_and_unprefixed_secrets_decode_like_padded() {
        // §3 #2b (python `test_signature_verification_with_unpadded_secret`).
        for (unpadded, padded) in [
            (
                "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaS",
                "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaS=",
            ),
            (
                "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSwBr",
                "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSwBr==",
            ),
        ] {
            let want = decode_secret(padded).unwrap();
            assert_eq!(decode_secret(unpadded).unwrap(), want);
            assert_eq!(decode_secret(&format!("whsec_{unpadded}")).unwrap(), want);
            let v = v("standard-webhooks", &format!("\"whsec_{unpadded}\""));
            let m = crypto::mac(Algorithm::Sha256, &want, &[b"id.1614265330.", V1_BODY]);
            let sig = format!("v1,{}", STANDARD.encode(m));
            assert!(v
                .verify(&wh("id", "1614265330", &sig), V1_BODY, at(1_614_265_330))
                .is_ok());
        }
        assert!(decode_secret("whsec_!!!").is_none());
        assert_eq!(
            try_build("scheme = \"svix\"\nsecrets = [\"whsec_not base64\"]", None).unwrap_err(),
            "route[0].verify.secrets[0]: is not a Standard Webhooks secret (expected whsec_<base64>)"
        );
    }

    #[test]
    fn negatives() {
        let v = v("standard-webhooks", &format!("\"{V1_SECRET}\""));
        let now = at(1_614_265_330);
        let good = wh(V1_ID, "1614265330", V1_SIG);
        assert_eq!(
            v.verify(&good, br#"{"test": 2432232315}"#, now)
                .unwrap_err(),
            VerifyError::InvalidSignature
        );
        // §3 #2a: last character changed.
        let bad = wh(
            V1_ID,
            "1614265330",
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OA=",
        );
        assert_eq!(
            v.verify(&bad, V1_BODY, now).unwrap_err(),
            VerifyError::InvalidSignature
        );
        assert_eq!(
            v.verify(
                &req(&[("webhook-id", V1_ID), ("webhook-timestamp", "1614265330")]),
                V1_BODY,
                now
            )
            .unwrap_err(),
            VerifyError::MissingSignature
        );
        assert_eq!(
            v.verify(
                &req(&[("webhook-id", V1_ID), ("webhook-signature", V1_SIG)]),
                V1_BODY,
                now
            )
            .unwrap_err(),
            VerifyError::StaleTimestamp
        );
        assert_eq!(
            v.verify(&good, V1_BODY, at(1_614_265_631)).unwrap_err(),
            VerifyError::StaleTimestamp
        );
        assert_eq!(
            v.verify(&good, V1_BODY, at(1_614_265_029)).unwrap_err(),
            VerifyError::StaleTimestamp
        );
        assert_eq!(
            v.verify(&wh("msg_other", "1614265330", V1_SIG), V1_BODY, now)
                .unwrap_err(),
            VerifyError::InvalidSignature
        );
        let wrong = verifier("scheme = \"standard-webhooks\"\nsecrets = [\"whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD\"]");
        assert_eq!(
            wrong.verify(&good, V1_BODY, now).unwrap_err(),
            VerifyError::InvalidSignature
        );
        // svix-* headers are not read by the standard-webhooks scheme.
        let svix = req(&[
            ("svix-id", V1_ID),
            ("svix-timestamp", "1614265330"),
            ("svix-signature", V1_SIG),
        ]);
        assert_eq!(
            v.verify(&svix, V1_BODY, now).unwrap_err(),
            VerifyError::MissingSignature
        );
    }

    #[test]
    fn several_signatures_skip_unknown_versions() {
        // §3 #2a `test_multi_sig_payload_is_valid`: v2 entries and wrong v1 entries are skipped.
        let v = v("standard-webhooks", &format!("\"{V1_SECRET}\""));
        let sig =
            format!("v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc= v2,abc {V1_SIG} v1a,AAAA");
        assert!(v
            .verify(&wh(V1_ID, "1614265330", &sig), V1_BODY, at(1_614_265_330))
            .is_ok());
    }

    #[test]
    fn svix_accepts_both_header_families() {
        let v = v("svix", &format!("\"{V1_SECRET}\""));
        let now = at(1_614_265_330);
        let svix = req(&[
            ("svix-id", V1_ID),
            ("svix-timestamp", "1614265330"),
            ("svix-signature", V1_SIG),
        ]);
        let ok = v.verify(&svix, V1_BODY, now).unwrap();
        assert_eq!((ok.scheme, ok.event_id.as_deref()), ("svix", Some(V1_ID)));
        assert!(v
            .verify(&wh(V1_ID, "1614265330", V1_SIG), V1_BODY, now)
            .is_ok());
        let h = v.sign(&http::Method::POST, b"hi", now, "").unwrap();
        assert_eq!(h[0].0, "svix-id");
        assert_eq!(
            v.verify(&signed_req(&h), b"hi", now).unwrap().secret_index,
            Some(0)
        );
    }

    #[test]
    fn v1a_ed25519() {
        let sk = ed25519_dalek::SigningKey::from_bytes(&[7u8; 32]);
        let pk = format!("whpk_{}", STANDARD.encode(sk.verifying_key().as_bytes()));
        let v = verifier(&format!(
            "scheme = \"standard-webhooks\"\npublic_key = \"{pk}\""
        ));
        let sig = sk.sign(b"msg_1.1614265330.hello");
        let header = format!("v1,AAAA v1a,{}", STANDARD.encode(sig.to_bytes()));
        let ok = v
            .verify(
                &wh("msg_1", "1614265330", &header),
                b"hello",
                at(1_614_265_330),
            )
            .unwrap();
        assert_eq!(
            (ok.event_id.as_deref(), ok.secret_index),
            (Some("msg_1"), None)
        );
        assert_eq!(
            v.verify(
                &wh("msg_1", "1614265330", &header),
                b"hellO",
                at(1_614_265_330)
            )
            .unwrap_err(),
            VerifyError::InvalidSignature
        );
        // A v1a signature is not accepted as v1, and public-key routes cannot sign.
        let as_v1 = format!("v1,{}", STANDARD.encode(sig.to_bytes()));
        assert!(v
            .verify(
                &wh("msg_1", "1614265330", &as_v1),
                b"hello",
                at(1_614_265_330)
            )
            .is_err());
        assert!(v.sign(&http::Method::POST, b"x", at(0), "").is_none());
        let e = try_build(
            "scheme = \"standard-webhooks\"\npublic_key = \"whpk_AAAA\"",
            None,
        )
        .unwrap_err();
        assert!(
            e.starts_with("route[0].verify.public_key: is not a valid Ed25519 public key"),
            "{e}"
        );
        let e = try_build("scheme = \"standard-webhooks\"", None).unwrap_err();
        assert!(
            e.contains("route[0].verify.secrets: at least one secret (or public_key) is required"),
            "{e}"
        );
    }
}
