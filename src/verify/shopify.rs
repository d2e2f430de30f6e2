//! `scheme = "shopify"`: `X-Shopify-Hmac-Sha256: <base64 HMAC-SHA256(client_secret, body)>`
//! (the newer Events delivery drops the `X-` prefix; both are read). No timestamp: replays are
//! caught by dedupe. Event id: `X-Shopify-Event-Id` (same on every delivery of one event, per
//! shopify.dev "Ignore duplicate webhooks"), else `X-Shopify-Webhook-Id`.

use std::time::SystemTime;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use http::request::Parts;

use super::preset::{self, find_secret};
use super::{crypto, only_keys, secrets, Algorithm, Verified, VerifyError};
use crate::config::raw::RawVerify;
use crate::config::{Problems, Secret};

const SCHEME: &str = "shopify";

#[derive(Debug)]
pub struct ShopifyVerifier {
    secrets: Vec<Secret>,
}

pub fn build(raw: &RawVerify, at: &str, p: &mut Problems) -> Option<ShopifyVerifier> {
    only_keys(raw, &["secrets"], SCHEME, at, p);
    let secrets = secrets(raw, at, p);
    (!secrets.is_empty()).then_some(ShopifyVerifier { secrets })
}

/// Shopify's event id (the same for every subscription the event reaches) or, from older
/// senders, its webhook id; not signed.
fn event_id(req: &Parts) -> Option<String> {
    [
        "x-shopify-event-id",
        "x-shopify-webhook-id",
        "shopify-event-id",
        "shopify-webhook-id",
    ]
    .iter()
    .find_map(|h| preset::header_nonempty(req, h))
    .map(str::to_string)
}

impl super::Verifier for ShopifyVerifier {
    fn scheme(&self) -> &'static str {
        SCHEME
    }

    fn claimed_id(&self, req: &Parts, _body: &[u8]) -> Option<String> {
        event_id(req)
    }

    fn verify(&self, req: &Parts, body: &[u8], _now: SystemTime) -> Result<Verified, VerifyError> {
        let h = preset::header_nonempty(req, "x-shopify-hmac-sha256")
            .or_else(|| preset::header_nonempty(req, "shopify-hmac-sha256"))
            .ok_or(VerifyError::MissingSignature)?;
        let sig = STANDARD
            .decode(h)
            .map_err(|_| VerifyError::InvalidSignature)?;
        let i = find_secret(&self.secrets, |s| {
            crypto::ct_eq(&sig, &crypto::mac(Algorithm::Sha256, s, &[body]))
        })
        .ok_or(VerifyError::InvalidSignature)?;
        let id = event_id(req);
        // The topic tells apart events Shopify sends with byte-identical bodies
        // (`orders/create` and `orders/updated`). It is not signed, so it is taken as Shopify's
        // libraries read it (`ORDERS_CREATE`): a capture resent with the topic only re-spelled
        // (`Orders/Create`, `orders.create`) is the same key.
        let topic: String = preset::header_nonempty(req, "x-shopify-topic")
            .or_else(|| preset::header_nonempty(req, "shopify-topic"))
            .unwrap_or("")
            .chars()
            .map(|c| match c {
                '/' | '.' => '_',
                c => c.to_ascii_uppercase(),
            })
            .collect();
        Ok(preset::verified_unsigned_id(
            SCHEME,
            id,
            Some(i),
            &[topic.as_bytes(), body],
        ))
    }

    fn sign(
        &self,
        _method: &http::Method,
        body: &[u8],
        _now: SystemTime,
        _url: &str,
    ) -> Option<Vec<(String, String)>> {
        let m = crypto::mac(Algorithm::Sha256, self.secrets.first()?.expose(), &[body]);
        Some(vec![
            ("X-Shopify-Hmac-Sha256".into(), STANDARD.encode(m)),
            ("X-Shopify-Topic".into(), "orders/create".into()),
            (
                "X-Shopify-Webhook-Id".into(),
                uuid::Uuid::now_v7().to_string(),
            ),
        ])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::preset::testing::*;

    // Shopify publishes no vector. Fixture: base64 HMAC-SHA256 computed with Python 3.11
    // `base64.b64encode(hmac.new(b"hush", b'{"id":820982911946154508}', "sha256").digest())`,
    // the documented algorithm (shopify.dev "Verify webhooks"; @shopify/shopify-api validates
    // it the same way).
    const BODY: &[u8] = br#"{"id":820982911946154508}"#;
    const SIG: &str = "qBvrsZF7RfB1iS6BX6IHqJTp5L911P7intnPeTPsH0I=";

    #[test]
    fn fixture_rotation_and_event_id() {
        let v = verifier("scheme = \"shopify\"\nsecrets = [\"old\", \"hush\"]");
        let r = req(&[
            ("X-Shopify-Hmac-Sha256", SIG),
            ("X-Shopify-Webhook-Id", "b54557e4"),
            ("X-Shopify-Event-Id", "98880550"),
        ]);
        let ok = v.verify(&r, BODY, at(0)).unwrap();
        assert_eq!(
            (ok.scheme, ok.secret_index, ok.event_id.as_deref()),
            ("shopify", Some(1), Some("98880550"))
        );
        let r = req(&[
            ("Shopify-Hmac-Sha256", SIG),
            ("X-Shopify-Webhook-Id", "b54557e4"),
        ]);
        assert_eq!(
            v.verify(&r, BODY, at(0)).unwrap().event_id.as_deref(),
            Some("b54557e4")
        );
    }

    #[test]
    fn negatives() {
        let v = verifier("scheme = \"shopify\"\nsecrets = [\"hush\"]");
        let r = req(&[("X-Shopify-Hmac-Sha256", SIG)]);
        assert_eq!(
            v.verify(&r, br#"{"id":820982911946154509}"#, at(0))
                .unwrap_err(),
            VerifyError::InvalidSignature
        );
        assert_eq!(
            v.verify(&req(&[]), BODY, at(0)).unwrap_err(),
            VerifyError::MissingSignature
        );
        let hex_form = req(&[(
            "X-Shopify-Hmac-Sha256",
            "a81bebb1917b45f075892e815fa207a894e9e4bf75d4fee29ed9cf7933ec1f42",
        )]);
        assert_eq!(
            v.verify(&hex_form, BODY, at(0)).unwrap_err(),
            VerifyError::InvalidSignature
        );
        let two = req(&[("X-Shopify-Hmac-Sha256", &format!("{SIG},{SIG}"))]);
        assert_eq!(
            v.verify(&two, BODY, at(0)).unwrap_err(),
            VerifyError::InvalidSignature
        );
        let wrong = verifier("scheme = \"shopify\"\nsecrets = [\"loud\"]");
        assert_eq!(
            wrong.verify(&r, BODY, at(0)).unwrap_err(),
            VerifyError::InvalidSignature
        );
        let h = v.sign(&http::Method::POST, b"{}", at(0), "").unwrap();
        assert!(v.verify(&signed_req(&h), b"{}", at(0)).is_ok());
    }
}
