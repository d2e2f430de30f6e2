//! `scheme = "twilio"`: `X-Twilio-Signature: base64(HMAC-SHA1(auth_token, url + params))`, where
//! `url` is the public URL Twilio called (`server.public_url` + path + query) and `params` are
//! the form-encoded POST parameters sorted by name, each name followed by each of its distinct
//! values in sorted order (twilio-python 9.13.0 `RequestValidator`). JSON bodies carry
//! `bodySHA256=<hex sha256(body)>` in the query instead: the URL alone is signed and the body hash
//! must match. Any other non-empty body (not a form POST, no `bodySHA256`) is refused: the
//! signature would cover the URL alone, so the body would be unauthenticated. As the SDK does,
//! the URL is tried with and without the default port. When
//! `X-Twilio-Webhooks-Signature-Settings` says `algorithm=HMAC_SHA256` (SharedKey signing) the
//! MAC is HMAC-SHA256 and the secret is the SharedKey secret. No timestamp; several secrets
//! cover primary/secondary Auth Tokens. Event id: `I-Twilio-Idempotency-Token`.

use std::time::SystemTime;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use http::request::Parts;
use sha2::{Digest, Sha256};

use super::preset::{self, find_secret};
use super::{crypto, only_keys, secrets, Algorithm, BuildCtx, Verified, VerifyError};
use crate::config::raw::RawVerify;
use crate::config::{Problems, Secret};

const SCHEME: &str = "twilio";

#[derive(Debug)]
pub struct TwilioVerifier {
    secrets: Vec<Secret>,
    public_url: String,
}

pub fn build(
    raw: &RawVerify,
    ctx: &BuildCtx,
    at: &str,
    p: &mut Problems,
) -> Option<TwilioVerifier> {
    only_keys(raw, &["secrets"], SCHEME, at, p);
    let public_url = preset::public_url(ctx, SCHEME, at, p);
    let secrets = secrets(raw, at, p);
    (!secrets.is_empty() && !public_url.is_empty()).then_some(TwilioVerifier {
        secrets,
        public_url,
    })
}

/// The algorithm named by `X-Twilio-Webhooks-Signature-Settings`; absent means legacy SHA-1.
fn algorithm(req: &Parts) -> Option<Algorithm> {
    let settings = super::header(req, "x-twilio-webhooks-signature-settings").unwrap_or("");
    let named = settings.split(',').find_map(|part| {
        let (k, v) = part.split_once('=')?;
        (k.trim() == "algorithm" && !v.trim().is_empty()).then(|| v.trim().to_ascii_uppercase())
    });
    match named.as_deref() {
        None | Some("HMAC_SHA1") => Some(Algorithm::Sha1),
        Some("HMAC_SHA256") => Some(Algorithm::Sha256),
        Some(_) => None,
    }
}

/// `url` with the scheme's default port removed and added (the two forms Twilio may sign).
fn port_variants(url: &str) -> [String; 2] {
    let Some((scheme, rest)) = url.split_once("://") else {
        return [url.to_string(), url.to_string()];
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (netloc, tail) = rest.split_at(end);
    let host = &netloc[netloc.rfind('@').map_or(0, |i| i + 1)..];
    let has_port = if host.starts_with('[') {
        host.contains("]:")
    } else {
        host.contains(':')
    };
    if has_port {
        let without = netloc.rsplit_once(':').map_or(netloc, |(h, _)| h);
        [format!("{scheme}://{without}{tail}"), url.to_string()]
    } else {
        let port = if scheme == "https" { 443 } else { 80 };
        [url.to_string(), format!("{scheme}://{netloc}:{port}{tail}")]
    }
}

/// `Σ name + value` over the form parameters, names sorted, each name's distinct values sorted.
fn params_string(body: &[u8]) -> String {
    let mut pairs: Vec<(String, String)> = form_urlencoded::parse(body).into_owned().collect();
    pairs.sort();
    pairs.dedup();
    pairs.into_iter().map(|(k, v)| k + &v).collect()
}

fn is_form(req: &Parts) -> bool {
    super::header(req, "content-type")
        .and_then(|c| c.split(';').next())
        .is_some_and(|c| {
            c.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        })
}

/// Twilio's idempotency token, the same on its retries; not signed.
fn idempotency_token(req: &Parts) -> Option<String> {
    preset::header_nonempty(req, "i-twilio-idempotency-token").map(str::to_string)
}

impl super::Verifier for TwilioVerifier {
    fn scheme(&self) -> &'static str {
        SCHEME
    }

    fn claimed_id(&self, req: &Parts, _body: &[u8]) -> Option<String> {
        idempotency_token(req)
    }

    fn verify(&self, req: &Parts, body: &[u8], _now: SystemTime) -> Result<Verified, VerifyError> {
        let h = preset::header_nonempty(req, "x-twilio-signature")
            .ok_or(VerifyError::MissingSignature)?;
        let sig = STANDARD
            .decode(h)
            .map_err(|_| VerifyError::InvalidSignature)?;
        let alg = algorithm(req).ok_or(VerifyError::InvalidSignature)?;
        let url = preset::request_url(&self.public_url, req);
        let body_hash = form_urlencoded::parse(req.uri.query().unwrap_or("").as_bytes())
            .find(|(k, _)| k == "bodySHA256")
            .map(|(_, v)| v.into_owned());
        let params = match &body_hash {
            Some(want) => {
                let got = hex::encode(Sha256::digest(body));
                if !crypto::ct_eq(got.as_bytes(), want.as_bytes()) {
                    return Err(VerifyError::InvalidSignature);
                }
                String::new()
            }
            None if is_form(req) && req.method == http::Method::POST => params_string(body),
            // Only the URL would be signed: a body that nothing covers could be anything.
            None if !body.is_empty() => return Err(VerifyError::InvalidSignature),
            None => String::new(),
        };
        let urls = port_variants(&url);
        let i = find_secret(&self.secrets, |s| {
            urls.iter().any(|u| {
                crypto::ct_eq(
                    &sig,
                    &crypto::mac(alg, s, &[u.as_bytes(), params.as_bytes()]),
                )
            })
        })
        .ok_or(VerifyError::InvalidSignature)?;
        let id = idempotency_token(req);
        // What the signature covers: the URL (a GET's parameters, a JSON body's SHA-256), and
        // a form's parameters as Twilio joins them (sorted: a form re-ordered or re-encoded
        // gives the same).
        Ok(preset::verified_unsigned_id(
            SCHEME,
            id,
            Some(i),
            &[url.as_bytes(), params.as_bytes()],
        ))
    }

    /// Signs `body` as Twilio's usual form POST to `url`.
    fn sign(
        &self,
        _method: &http::Method,
        body: &[u8],
        _now: SystemTime,
        url: &str,
    ) -> Option<Vec<(String, String)>> {
        let params = params_string(body);
        let m = crypto::mac(
            Algorithm::Sha1,
            self.secrets.first()?.expose(),
            &[url.as_bytes(), params.as_bytes()],
        );
        Some(vec![
            (
                "Content-Type".into(),
                "application/x-www-form-urlencoded".into(),
            ),
            ("X-Twilio-Signature".into(), STANDARD.encode(m)),
        ])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::preset::testing::*;
    use crate::verify::Verifier;

    const FORM: &str = "application/x-www-form-urlencoded";
    // PROVIDERS §3 #6 (twilio-python tests/unit/test_request_validator.py, token 12345).
    const PARAMS: &[u8] = b"CallSid=CA1234567890ABCDE&Caller=%2B14158675309&Digits=1234&From=%2B14158675309&To=%2B18005551212";

    fn v(public_url: &str) -> std::sync::Arc<dyn Verifier> {
        try_build(
            "scheme = \"twilio\"\nsecrets = [\"primary\", \"12345\"]",
            Some(public_url),
        )
        .unwrap()
    }

    fn form(sig: &str) -> Parts {
        req_to(
            "POST",
            "/myapp.php?foo=1&bar=2",
            &[("X-Twilio-Signature", sig), ("Content-Type", FORM)],
        )
    }

    #[test]
    fn published_vectors() {
        let ok = v("https://mycompany.com")
            .verify(&form("RSOYDt4T1cUTdK1PDd93/VVr8B8="), PARAMS, at(0))
            .unwrap();
        assert_eq!((ok.scheme, ok.secret_index), ("twilio", Some(1)));
        // #6a: Twilio may sign with the default port; a public_url with the port works too.
        assert!(v("https://mycompany.com")
            .verify(&form("kvajT1Ptam85bY51eRf/AJRuM3w="), PARAMS, at(0))
            .is_ok());
        assert!(v("https://mycompany.com:443")
            .verify(&form("RSOYDt4T1cUTdK1PDd93/VVr8B8="), PARAMS, at(0))
            .is_ok());
        assert!(v("http://mycompany.com:1234")
            .verify(&form("Zmvh+3yNM1Phv2jhDCwEM3q5ebU="), PARAMS, at(0))
            .is_ok());
        assert!(v("http://mycompany.com")
            .verify(&form("0ZXoZLH/DfblKGATFgpif+LLRf4="), PARAMS, at(0))
            .is_ok());
        // #6b: multi-valued parameters, names then values sorted.
        let multi = b"Sid=CA123&SidAccount=AC123&Digits=5678&Digits=1234";
        assert!(v("https://mycompany.com")
            .verify(&form("IK+Dwps556ElfBT0I3Rgjkr1wJU="), multi, at(0))
            .is_ok());
        // #6c: JSON body with bodySHA256 in the query.
        let json = br#"{"property": "value", "boolean": true}"#;
        let r = req_to(
            "POST",
            "/myapp.php?foo=1&bar=2&bodySHA256=0a1ff7634d9ab3b95db5c9a2dfe9416e41502b283a80c7cf19632632f96e6620",
            &[("X-Twilio-Signature", "a9nBmqA0ju/hNViExpshrM61xv4="), ("Content-Type", "application/json")],
        );
        assert!(v("https://mycompany.com").verify(&r, json, at(0)).is_ok());
        assert_eq!(
            v("https://mycompany.com")
                .verify(&r, b"{}", at(0))
                .unwrap_err(),
            VerifyError::InvalidSignature
        );
    }

    #[test]
    fn negatives() {
        let v = v("https://mycompany.com");
        let good = form("RSOYDt4T1cUTdK1PDd93/VVr8B8=");
        let tampered = b"CallSid=CA1234567890ABCDE&Caller=%2B14158675309&Digits=1235&From=%2B14158675309&To=%2B18005551212";
        assert_eq!(
            v.verify(&good, tampered, at(0)).unwrap_err(),
            VerifyError::InvalidSignature
        );
        let missing = req_to("POST", "/myapp.php?foo=1&bar=2", &[("Content-Type", FORM)]);
        assert_eq!(
            v.verify(&missing, PARAMS, at(0)).unwrap_err(),
            VerifyError::MissingSignature
        );
        let other_query = req_to(
            "POST",
            "/myapp.php?foo=1&bar=3",
            &[
                ("X-Twilio-Signature", "RSOYDt4T1cUTdK1PDd93/VVr8B8="),
                ("Content-Type", FORM),
            ],
        );
        assert_eq!(
            v.verify(&other_query, PARAMS, at(0)).unwrap_err(),
            VerifyError::InvalidSignature
        );
        let two = form("RSOYDt4T1cUTdK1PDd93/VVr8B8=,RSOYDt4T1cUTdK1PDd93/VVr8B8=");
        assert_eq!(
            v.verify(&two, PARAMS, at(0)).unwrap_err(),
            VerifyError::InvalidSignature
        );
        let wrong = try_build(
            "scheme = \"twilio\"\nsecrets = [\"54321\"]",
            Some("https://mycompany.com"),
        )
        .unwrap();
        assert_eq!(
            wrong.verify(&good, PARAMS, at(0)).unwrap_err(),
            VerifyError::InvalidSignature
        );
        let unknown_alg = req_to(
            "POST",
            "/myapp.php?foo=1&bar=2",
            &[
                ("X-Twilio-Signature", "RSOYDt4T1cUTdK1PDd93/VVr8B8="),
                ("Content-Type", FORM),
                (
                    "X-Twilio-Webhooks-Signature-Settings",
                    "key=k,algorithm=HMAC_MD5",
                ),
            ],
        );
        assert_eq!(
            v.verify(&unknown_alg, PARAMS, at(0)).unwrap_err(),
            VerifyError::InvalidSignature
        );
    }

    /// A URL-only signature (a GET, or an empty POST) does not vouch for a body it does not
    /// cover: a JSON body without `bodySHA256`, or a form body on a non-POST, is refused.
    #[test]
    fn a_body_the_signature_does_not_cover_is_refused() {
        let v = v("https://mycompany.com");
        let url = "https://mycompany.com/myapp.php?foo=1&bar=2";
        let url_only = STANDARD.encode(crypto::mac(Algorithm::Sha1, b"12345", &[url.as_bytes()]));
        for (method, ct) in [("POST", ""), ("GET", ""), ("POST", "application/json")] {
            let mut h = vec![("X-Twilio-Signature", url_only.as_str())];
            if !ct.is_empty() {
                h.push(("Content-Type", ct));
            }
            let r = req_to(method, "/myapp.php?foo=1&bar=2", &h);
            assert!(
                v.verify(&r, b"", at(0)).is_ok(),
                "{method} {ct:?} empty body"
            );
            assert_eq!(
                v.verify(&r, br#"{"forged":true}"#, at(0)).unwrap_err(),
                VerifyError::InvalidSignature,
                "{method} {ct:?} with a body"
            );
        }
        let put_form = req_to(
            "PUT",
            "/myapp.php?foo=1&bar=2",
            &[("X-Twilio-Signature", &url_only), ("Content-Type", FORM)],
        );
        assert_eq!(
            v.verify(&put_form, PARAMS, at(0)).unwrap_err(),
            VerifyError::InvalidSignature
        );
    }

    #[test]
    fn shared_key_sha256() {
        let v = v("https://mycompany.com");
        let url = "https://mycompany.com/myapp.php?foo=1&bar=2";
        let m = crypto::mac(
            Algorithm::Sha256,
            b"12345",
            &[url.as_bytes(), params_string(PARAMS).as_bytes()],
        );
        let sig = STANDARD.encode(m);
        let settings = (
            "X-Twilio-Webhooks-Signature-Settings",
            "key=webhooks_sharedkey_1,algorithm=HMAC_SHA256",
        );
        let r = req_to(
            "POST",
            "/myapp.php?foo=1&bar=2",
            &[
                ("X-Twilio-Signature", &sig),
                ("Content-Type", FORM),
                settings,
            ],
        );
        assert!(v.verify(&r, PARAMS, at(0)).is_ok());
        // The same SHA-256 MAC without the settings header is checked as SHA-1 and fails.
        assert!(v.verify(&form(&sig), PARAMS, at(0)).is_err());
    }

    #[test]
    fn sign_and_config() {
        let v = v("https://hooks.example.com");
        let h = v
            .sign(
                &http::Method::POST,
                b"A=1&B=2",
                at(0),
                "https://hooks.example.com/hook",
            )
            .unwrap();
        assert!(v.verify(&signed_req(&h), b"A=1&B=2", at(0)).is_ok());
        let e = try_build("scheme = \"twilio\"\nsecrets = [\"x\"]", None).unwrap_err();
        assert!(
            e.starts_with("server.public_url: is required by route[0].verify.scheme = \"twilio\""),
            "{e}"
        );
        assert_eq!(
            port_variants("https://a.b/x"),
            ["https://a.b/x".to_string(), "https://a.b:443/x".to_string()]
        );
        assert_eq!(
            port_variants("http://a.b:8080?q"),
            ["http://a.b?q".to_string(), "http://a.b:8080?q".to_string()]
        );
    }
}
