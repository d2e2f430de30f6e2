//! Re-signing for the upstream (`[route.forward.sign]`), so a receiver can trust the gateway
//! with a library it already has. Schemes: `standard-webhooks` (`webhook-id`,
//! `webhook-timestamp`, `webhook-signature: v1,<base64 HMAC-SHA256(id.ts.body)>`, secret
//! `whsec_<base64>`), `hmac` (the generic defaults: `X-Timestamp`, `X-Signature: hex
//! HMAC-SHA256("{ts}.{body}")`), and `stripe` and `slack` as those providers sign (each
//! attempt at its own time). The last two are for a receiver that checks the provider's
//! signature itself: the provider's own header is as old as the event, and their libraries
//! refuse one older than 5 minutes, so every retry or replay after that would be refused
//! (with 400: dead).

use base64::Engine;
use http::{HeaderMap, HeaderValue};

use crate::config::Secret;
use crate::verify::{mac, Algorithm};

pub const SCHEMES: &[&str] = &["standard-webhooks", "hmac", "stripe", "slack"];

/// The key `sign` uses for `scheme`, from the configured secret: for `standard-webhooks` the
/// bytes of `whsec_<base64>` (prefix optional, padding optional: the inbound verifier's own
/// decoding, so a receiver configured with the same secret agrees); for `hmac` the secret as
/// given. `None`: the secret does not decode, a config error.
pub fn signing_key(scheme: &str, secret: &Secret) -> Option<Secret> {
    match scheme {
        "standard-webhooks" => secret
            .expose_str()
            .and_then(crate::config::secret::decode_whsec)
            .map(Secret::new),
        _ => Some(secret.clone()),
    }
}

/// Adds the scheme's signature headers for `body`, signed at `now_secs` with `key` (what
/// `signing_key` returned at config load).
pub fn sign(
    scheme: &str,
    key: &Secret,
    event_id: &str,
    now_secs: i64,
    body: &[u8],
    headers: &mut HeaderMap,
) {
    let ts = now_secs.to_string();
    let pairs: Vec<(&'static str, String)> = match scheme {
        "standard-webhooks" => {
            let m = mac(
                Algorithm::Sha256,
                key.expose(),
                &[event_id.as_bytes(), b".", ts.as_bytes(), b".", body],
            );
            vec![
                ("webhook-id", event_id.to_string()),
                ("webhook-timestamp", ts),
                (
                    "webhook-signature",
                    format!("v1,{}", base64::engine::general_purpose::STANDARD.encode(m)),
                ),
            ]
        }
        // `Stripe-Signature: t=…,v1=hex(HMAC-SHA256(secret, "{t}.{body}"))`, the `whsec_…`
        // string itself as the key.
        "stripe" => {
            let m = mac(
                Algorithm::Sha256,
                key.expose(),
                &[ts.as_bytes(), b".", body],
            );
            vec![("stripe-signature", format!("t={ts},v1={}", hex::encode(m)))]
        }
        // `X-Slack-Signature: v0=hex(HMAC-SHA256(signing secret, "v0:{ts}:{body}"))`.
        "slack" => {
            let m = mac(
                Algorithm::Sha256,
                key.expose(),
                &[b"v0:", ts.as_bytes(), b":", body],
            );
            vec![
                ("x-slack-request-timestamp", ts),
                ("x-slack-signature", format!("v0={}", hex::encode(m))),
            ]
        }
        _ => {
            let m = mac(
                Algorithm::Sha256,
                key.expose(),
                &[ts.as_bytes(), b".", body],
            );
            vec![("x-timestamp", ts), ("x-signature", hex::encode(m))]
        }
    };
    for (k, v) in pairs {
        if let Ok(v) = HeaderValue::from_str(&v) {
            headers.insert(k, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_webhooks_published_vector() {
        // The Standard Webhooks spec's example: secret, id, timestamp, payload → signature.
        let secret = Secret::new("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
        let key = signing_key("standard-webhooks", &secret).unwrap();
        let mut h = HeaderMap::new();
        sign(
            "standard-webhooks",
            &key,
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
            &mut h,
        );
        assert_eq!(
            h["webhook-signature"],
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
        assert_eq!(h["webhook-timestamp"], "1614265330");
    }

    #[test]
    fn standard_webhooks_keys_decode_like_the_verifier_prefix_and_padding_optional() {
        // PROVIDERS vector 2b: unpadded forms, with and without `whsec_`, decode like the
        // padded one; the re-signer and the inbound verifier share the decoding.
        for (padded, unpadded) in [
            (
                "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaS=",
                "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaS",
            ),
            (
                "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSwBr==",
                "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSwBr",
            ),
        ] {
            let want =
                signing_key("standard-webhooks", &Secret::new(format!("whsec_{padded}"))).unwrap();
            for form in [
                unpadded.to_string(),
                padded.to_string(),
                format!("whsec_{unpadded}"),
            ] {
                assert_eq!(
                    signing_key("standard-webhooks", &Secret::new(form.clone())).as_ref(),
                    Some(&want),
                    "{form}"
                );
            }
        }
        assert_eq!(
            signing_key("standard-webhooks", &Secret::new("whsec_!!!")),
            None
        );
        assert_eq!(
            signing_key("hmac", &Secret::new("whsec_!!!")),
            Some(Secret::new("whsec_!!!"))
        );
    }

    /// Stripe's and Slack's own headers, as hookgate's verifiers of those providers (each
    /// checked against the provider's published vector and SDK) take them.
    #[test]
    fn stripe_and_slack_signatures_are_what_their_verifiers_accept() {
        let (cfg, _) = crate::config::parse(
            r#"
[[route]]
name = "stripe"
path = "/stripe"
[route.verify]
scheme = "stripe"
secrets = ["whsec_test"]
[route.forward]
url = "http://127.0.0.1:9/"
sign = { scheme = "stripe", secret = "whsec_test" }

[[route]]
name = "slack"
path = "/slack"
[route.verify]
scheme = "slack"
secrets = ["8f742231b10e8888abcd99yyyzzz85a5"]
[route.forward]
url = "http://127.0.0.1:9/"
sign = { scheme = "slack", secret = "8f742231b10e8888abcd99yyyzzz85a5" }
"#,
        )
        .unwrap();
        for route in &cfg.routes {
            let s = route.forward.sign.as_ref().unwrap();
            let body = br#"{"id":"evt_1","type":"x"}"#;
            let mut h = HeaderMap::new();
            // A stale header of the provider's, as forwarded from the original request, is
            // replaced, not kept beside the fresh one.
            h.insert("stripe-signature", HeaderValue::from_static("t=1,v1=00"));
            h.insert("x-slack-signature", HeaderValue::from_static("v0=00"));
            let (now, parts) = signed_now(&s.scheme, &s.secret, body, h);
            assert!(
                route.verifier.verify(&parts, body, now).is_ok(),
                "{}: {:?}",
                route.name,
                parts.headers
            );
            assert!(route.verifier.verify(&parts, b"{}", now).is_err());
        }
    }

    /// A request whose `headers` were signed for `body` by `scheme` now, and that instant.
    fn signed_now(
        scheme: &str,
        key: &Secret,
        body: &[u8],
        mut headers: HeaderMap,
    ) -> (std::time::SystemTime, http::request::Parts) {
        let now = std::time::SystemTime::now();
        let secs = now
            .duration_since(std::time::SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        sign(scheme, key, "msg_1", secs, body, &mut headers);
        let mut req = http::Request::post("/").body(()).unwrap();
        *req.headers_mut() = headers;
        (now, req.into_parts().0)
    }

    #[test]
    fn what_the_re_signer_signs_the_verifier_accepts_for_any_form_of_the_same_secret() {
        // The inbound verifier is configured with the padded, prefixed secret; the re-signer
        // with the same key unprefixed and unpadded (as the reference libraries allow).
        let (cfg, _) = crate::config::parse(
            r#"
[[route]]
name = "a"
path = "/a"
[route.verify]
scheme = "standard-webhooks"
secrets = ["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaS="]
[route.forward]
url = "http://127.0.0.1:9/"
sign = { scheme = "standard-webhooks", secret = "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaS" }
"#,
        )
        .unwrap();
        let route = &cfg.routes[0];
        let key = &route.forward.sign.as_ref().unwrap().secret;
        let (now, parts) = signed_now("standard-webhooks", key, b"{}", HeaderMap::new());
        assert!(route.verifier.verify(&parts, b"{}", now).is_ok());
    }
}
