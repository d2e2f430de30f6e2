//! What the fuzz targets share: one route per verification scheme (every preset, the generic
//! `hmac` in two shapes, and `none`), the request headers those schemes read, and a fixed
//! "now" so timestamps the fuzzer writes can fall inside a tolerance.
#![allow(dead_code)]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// 2023-11-14T22:13:20Z: fixed, so an input means the same on every run.
pub fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_700_000_000)
}

pub const PUBLIC_URL: &str = "https://hooks.example.com";

const DISCORD_PK: &str = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a";
const SENDGRID_PK: &str = "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE83T4O/n84iotIvIW4mdBgQ/7dAfSmpqIM8kF9mN1flpVKS3GRqe62gw+2fNNRaINXvVpiglSI8eNEc6wEA3F+g==";
const WHSEC: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// (route name = path segment, `[route.verify]` body, `[route.dedupe]` body).
pub fn routes() -> Vec<(String, String, &'static str)> {
    let v = |name: &str, verify: &str, dedupe: &'static str| {
        (name.to_string(), verify.to_string(), dedupe)
    };
    vec![
        v(
            "hmac",
            r#"scheme = "hmac"
secrets = ["h-old", "h"]"#,
            r#"key = "header:Idempotency-Key""#,
        ),
        v(
            "hmac-full",
            r#"scheme = "hmac"
secrets = ["h"]
signature_header = "X-Sig"
timestamp_header = "X-Timestamp"
id_header = "X-Id"
signed_payload = "{method} {url} {id}.{timestamp}.{body}"
algorithm = "sha512"
encoding = "base64"
signature_prefix = "v1="
tolerance = "5m""#,
            r#"key = "json:/data/id"
required = false"#,
        ),
        v(
            "stripe",
            r#"scheme = "stripe"
secrets = ["whsec_old", "whsec_x"]"#,
            r#"key = "auto""#,
        ),
        v(
            "stdwh",
            &format!(
                r#"scheme = "standard-webhooks"
secrets = ["{WHSEC}"]"#
            ),
            r#"key = "auto""#,
        ),
        v(
            "svix",
            &format!(
                r#"scheme = "svix"
secrets = ["{WHSEC}"]"#
            ),
            r#"key = "auto""#,
        ),
        v(
            "slack",
            r#"scheme = "slack"
secrets = ["slack-secret"]"#,
            r#"key = "body-sha256""#,
        ),
        v(
            "twilio",
            r#"scheme = "twilio"
secrets = ["twilio-token"]"#,
            r#"key = "auto""#,
        ),
        v(
            "paddle",
            r#"scheme = "paddle"
secrets = ["pdl_ntfset_x"]"#,
            r#"key = "auto""#,
        ),
        v(
            "discord",
            &format!(
                r#"scheme = "discord"
public_key = "{DISCORD_PK}""#
            ),
            r#"key = "auto""#,
        ),
        v(
            "github",
            r#"scheme = "github"
secrets = ["gh"]"#,
            r#"key = "auto""#,
        ),
        v(
            "zoom",
            r#"scheme = "zoom"
secrets = ["zoom"]"#,
            r#"key = "auto""#,
        ),
        v(
            "square",
            r#"scheme = "square"
secrets = ["square"]"#,
            r#"key = "auto""#,
        ),
        v(
            "shopify",
            r#"scheme = "shopify"
secrets = ["shp"]"#,
            r#"key = "auto""#,
        ),
        v(
            "linear",
            r#"scheme = "linear"
secrets = ["lin"]"#,
            r#"key = "auto""#,
        ),
        v(
            "gitlab",
            r#"scheme = "gitlab"
secrets = ["gl"]"#,
            r#"key = "auto""#,
        ),
        v(
            "basic",
            r#"scheme = "basic"
secrets = ["user:pa ss"]"#,
            r#"key = "json:/id""#,
        ),
        v(
            "bearer",
            r#"scheme = "bearer"
secrets = ["tok"]"#,
            r#"key = "auto""#,
        ),
        v(
            "typeform",
            r#"scheme = "typeform"
secrets = ["tf"]"#,
            r#"key = "auto""#,
        ),
        v(
            "razorpay",
            r#"scheme = "razorpay"
secrets = ["rzp"]"#,
            r#"key = "auto""#,
        ),
        v(
            "twitch",
            r#"scheme = "twitch"
secrets = ["twitch-secret-0123456789"]"#,
            r#"key = "auto""#,
        ),
        v(
            "meta",
            r#"scheme = "meta"
secrets = ["meta"]
verify_token = "meta-verify-token""#,
            r#"key = "auto""#,
        ),
        v(
            "intercom",
            r#"scheme = "intercom"
secrets = ["ic"]"#,
            r#"key = "auto""#,
        ),
        v(
            "calendly",
            r#"scheme = "calendly"
secrets = ["cal"]"#,
            r#"key = "auto""#,
        ),
        v(
            "hubspot",
            r#"scheme = "hubspot"
secrets = ["hs"]"#,
            r#"key = "auto""#,
        ),
        v(
            "sendgrid",
            &format!(
                r#"scheme = "sendgrid"
public_key = "{SENDGRID_PK}""#
            ),
            r#"key = "auto""#,
        ),
        v(
            "msgraph",
            r#"scheme = "msgraph"
secrets = ["graph-state"]"#,
            r#"key = "auto""#,
        ),
        v(
            "okta",
            r#"scheme = "okta"
secrets = ["okta"]"#,
            r#"key = "auto""#,
        ),
        v(
            "none",
            r#"scheme = "none""#,
            r#"key = "header:X-Key"
required = true"#,
        ),
    ]
}

/// A whole config with every route of [`routes`], forwarding to `forward_url`.
pub fn config_text(store_path: &str, forward_url: &str) -> String {
    let mut text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\npublic_url = \"{PUBLIC_URL}\"\nmax_body = \"64KiB\"\n\n[store]\nbackend = \"embedded\"\npath = {store_path:?}\n\n"
    );
    for (name, verify, dedupe) in routes() {
        text.push_str(&format!(
            "[[route]]\nname = \"{name}\"\npath = \"/{name}\"\n[route.verify]\n{verify}\n[route.dedupe]\n{dedupe}\n[route.forward]\nurl = \"{forward_url}\"\nmax_attempts = 1\n\n"
        ));
    }
    text
}

/// Every request header a scheme, the dedupe step or the ingress reads; the fuzzer picks names
/// from here (or writes its own).
pub const HEADERS: &[&str] = &[
    "authorization",
    "content-type",
    "idempotency-key",
    "user-agent",
    "x-forwarded-for",
    "calendly-webhook-signature",
    "linear-delivery",
    "linear-signature",
    "paddle-signature",
    "stripe-signature",
    "svix-id",
    "svix-signature",
    "svix-timestamp",
    "twitch-eventsub-message-id",
    "twitch-eventsub-message-signature",
    "twitch-eventsub-message-timestamp",
    "twitch-eventsub-message-type",
    "typeform-signature",
    "webhook-id",
    "webhook-signature",
    "webhook-timestamp",
    "x-github-delivery",
    "x-github-event",
    "x-gitlab-event",
    "x-gitlab-event-uuid",
    "x-gitlab-token",
    "x-hub-signature",
    "x-hub-signature-256",
    "x-hubspot-request-timestamp",
    "x-hubspot-signature",
    "x-hubspot-signature-v3",
    "x-hubspot-signature-version",
    "x-key",
    "x-okta-token",
    "x-okta-verification-challenge",
    "x-razorpay-event-id",
    "x-razorpay-signature",
    "x-shopify-event-id",
    "x-shopify-hmac-sha256",
    "x-shopify-topic",
    "x-shopify-webhook-id",
    "x-sig",
    "x-signature",
    "x-signature-ed25519",
    "x-signature-timestamp",
    "x-slack-request-timestamp",
    "x-slack-signature",
    "x-square-hmacsha256-signature",
    "x-timestamp",
    "x-id",
    "x-twilio-email-event-webhook-signature",
    "x-twilio-email-event-webhook-timestamp",
    "x-twilio-signature",
    "x-twilio-webhooks-signature-settings",
    "x-zm-request-timestamp",
    "x-zm-signature",
    "transfer-encoding",
    "content-length",
    "host",
    "connection",
    "expect",
];

pub const METHODS: &[&str] = &["POST", "GET", "PUT", "HEAD", "DELETE", "OPTIONS", "PATCH"];
