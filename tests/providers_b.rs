//! End to end, the real binary: for each preset of issue 3 (part b) — typeform, razorpay,
//! twitch, meta, intercom, calendly, hubspot, sendgrid, msgraph, okta — a correctly signed
//! request is accepted (202), a tampered one refused (401), and each handshake gets the
//! provider's documented reply (a forged handshake is refused).
//!
//! Signatures come from the providers' official SDKs where they can sign (SendGrid via
//! `cryptography` + the `sendgrid` verifier, HubSpot via `hubspot-api-client`; Razorpay's SDK
//! cross-checks), run through `tests/sdk/sign_b.py` with `.venv/bin/python` (set up by
//! `scripts/sdk-setup.sh`); otherwise they are computed here with `hmac`/`sha2` directly,
//! independent of hookgate's own code. Self-contained: its own small harness below.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};

// ---- harness -------------------------------------------------------------------------------

struct Gateway {
    child: Child,
    ingress: SocketAddr,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `hookgate serve` on loopback with `routes`, a temp store, and `server_extra`.
fn start(server_extra: &str, routes: &str) -> Gateway {
    let dir = tempfile::Builder::new()
        .prefix("hookgate-providers-b-")
        .tempdir()
        .unwrap();
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n{server_extra}\n\n[store]\npath = {:?}\n\n{routes}",
        dir.path().join("data")
    );
    let config_path = dir.path().join("hookgate.toml");
    std::fs::write(&config_path, config).unwrap();
    let log = dir.path().join("gateway.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_hookgate"))
        .arg("serve")
        .arg("-c")
        .arg(&config_path)
        .stdout(Stdio::piped())
        .stderr(Stdio::from(std::fs::File::create(&log).unwrap()))
        .spawn()
        .expect("spawn hookgate");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.starts_with("hookgate listening") {
                let _ = tx.send(line);
            }
        }
    });
    // Disconnected (it exited) fails at once, a timeout after 30 s; either way the child is
    // killed and reaped before the panic, as it is on every path once `Gateway` owns it.
    let ingress = rx
        .recv_timeout(Duration::from_secs(30))
        .map_err(|e| e.to_string())
        .and_then(|line| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix("ingress="))
                .and_then(|a| a.parse().ok())
                .ok_or_else(|| format!("no ingress address in {line:?}"))
        });
    let ingress = match ingress {
        Ok(a) => a,
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "hookgate did not start ({e}); log:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
    };
    Gateway {
        child,
        ingress,
        log,
        _dir: dir,
    }
}

/// One route at `/<scheme>` verified by that preset, forwarding to a closed port (deliveries
/// are not under test here).
fn route(scheme: &str, verify: &str) -> String {
    format!(
        "[[route]]\nname = \"{scheme}\"\npath = \"/{scheme}\"\n[route.verify]\nscheme = \"{scheme}\"\n{verify}\n[route.forward]\nurl = \"http://127.0.0.1:9/\"\n"
    )
}

struct Reply {
    status: u16,
    content_type: String,
    body: String,
}

impl Gateway {
    async fn send(
        &self,
        method: &str,
        path_and_query: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Reply {
        let client = reqwest::Client::new();
        let mut req = client.request(
            method.parse().unwrap(),
            format!("http://{}{}", self.ingress, path_and_query),
        );
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = req.body(body.to_vec()).send().await.unwrap();
        let status = resp.status().as_u16();
        let content_type = resp
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        Reply {
            status,
            content_type,
            body: resp.text().await.unwrap(),
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// 202 accepted; returns the gateway's event id.
    fn accepted(&self, r: &Reply) -> String {
        assert_eq!(r.status, 202, "{}\nlog:\n{}", r.body, self.log());
        let v: Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(v["status"], "accepted");
        v["event_id"].as_str().unwrap().to_string()
    }

    fn rejected(&self, r: &Reply, code: &str) {
        assert_eq!(r.status, 401, "{}\nlog:\n{}", r.body, self.log());
        assert_eq!(r.body, format!("{{\"error\":\"{code}\"}}"));
    }
}

// ---- signing, independent of hookgate ------------------------------------------------------

fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    let mut m = Hmac::<sha2::Sha256>::new_from_slice(key).unwrap();
    for p in parts {
        m.update(p);
    }
    m.finalize().into_bytes().to_vec()
}

fn hmac_sha1(key: &[u8], body: &[u8]) -> Vec<u8> {
    let mut m = Hmac::<sha1::Sha1>::new_from_slice(key).unwrap();
    m.update(body);
    m.finalize().into_bytes().to_vec()
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Runs `tests/sdk/sign_b.py COMMAND` (the providers' official SDKs) with `.venv/bin/python`.
fn sdk(command: &str, input: Value) -> Value {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let python = root.join(".venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run scripts/sdk-setup.sh (it creates .venv with the provider SDKs of \
         tests/sdk/requirements*.txt) before cargo test",
        python.display()
    );
    let mut child = Command::new(&python)
        .arg(root.join("tests/sdk/sign_b.py"))
        .arg(command)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "sign_b.py {command} failed (are tests/sdk/requirements-b.txt installed? run \
         scripts/sdk-setup.sh):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

// ---- presets -------------------------------------------------------------------------------

#[tokio::test]
async fn typeform() {
    let gw = start(
        "",
        &route("typeform", r#"secrets = ["tf-old", "tf-secret"]"#),
    );
    let body = br#"{"event_id":"01J0TYPEFORMEVT","event_type":"form_response"}"#;
    let sig = format!("sha256={}", b64(&hmac_sha256(b"tf-secret", &[body])));
    let h = [("Typeform-Signature", sig.as_str())];
    let id = gw.accepted(&gw.send("POST", "/typeform", &h, body).await);
    // Redelivered: the body's event_id makes it a duplicate of the first.
    let again = gw.send("POST", "/typeform", &h, body).await;
    assert_eq!(again.status, 200, "{}", again.body);
    assert_eq!(
        again.body,
        format!("{{\"status\":\"duplicate\",\"event_id\":\"{id}\"}}")
    );
    let tampered = br#"{"event_id":"01J0TYPEFORMEVT","event_type":"form_responsE"}"#;
    gw.rejected(
        &gw.send("POST", "/typeform", &h, tampered).await,
        "invalid_signature",
    );
    gw.rejected(
        &gw.send("POST", "/typeform", &[], body).await,
        "missing_signature",
    );
}

#[tokio::test]
async fn razorpay() {
    let gw = start(
        "",
        &route("razorpay", r#"secrets = ["rzp-webhook-secret"]"#),
    );
    let body = br#"{"entity":"event","event":"payment.captured","payload":{"payment":{"entity":{"id":"pay_29QQoUBi66xm2f","amount":5000}}},"created_at":1700000000}"#;
    let sig = hex::encode(hmac_sha256(b"rzp-webhook-secret", &[body]));
    // The official SDK (verify-only) agrees with the signature computed here.
    let check = sdk(
        "razorpay",
        json!({"secret": "rzp-webhook-secret", "body": b64(body), "signature": sig}),
    );
    assert_eq!(check["valid"], true);
    let h = [
        ("X-Razorpay-Signature", sig.as_str()),
        ("x-razorpay-event-id", "HjM5vGkT3wZzAB"),
    ];
    gw.accepted(&gw.send("POST", "/razorpay", &h, body).await);
    let mut tampered = body.to_vec();
    *tampered.last_mut().unwrap() = b' ';
    gw.rejected(
        &gw.send("POST", "/razorpay", &h, &tampered).await,
        "invalid_signature",
    );
}

#[tokio::test]
async fn twitch() {
    let gw = start(
        "",
        &route("twitch", r#"secrets = ["twitch-secret-0123456789"]"#),
    );
    let sign = |id: &str, ts: &str, body: &[u8]| {
        format!(
            "sha256={}",
            hex::encode(hmac_sha256(
                b"twitch-secret-0123456789",
                &[id.as_bytes(), ts.as_bytes(), body]
            ))
        )
    };
    let ts = humantime::format_rfc3339_nanos(SystemTime::now()).to_string();
    let body = br#"{"subscription":{"id":"f1c2a387-161a-49f9-a165-0f21d7a4e1c4","type":"channel.follow","version":"2"},"event":{"user_id":"1337"}}"#;
    let id = "e76c6bd4-55c9-4987-8304-da1588d8988b";
    let sig = sign(id, &ts, body);
    let h = [
        ("Twitch-Eventsub-Message-Id", id),
        ("Twitch-Eventsub-Message-Timestamp", ts.as_str()),
        ("Twitch-Eventsub-Message-Signature", sig.as_str()),
        ("Twitch-Eventsub-Message-Type", "notification"),
    ];
    gw.accepted(&gw.send("POST", "/twitch", &h, body).await);
    gw.rejected(
        &gw.send("POST", "/twitch", &h, &body[1..]).await,
        "invalid_signature",
    );
    let old =
        humantime::format_rfc3339_nanos(SystemTime::now() - Duration::from_secs(700)).to_string();
    let old_sig = sign(id, &old, body);
    let stale = [
        ("Twitch-Eventsub-Message-Id", id),
        ("Twitch-Eventsub-Message-Timestamp", old.as_str()),
        ("Twitch-Eventsub-Message-Signature", old_sig.as_str()),
    ];
    gw.rejected(
        &gw.send("POST", "/twitch", &stale, body).await,
        "stale_timestamp",
    );

    // webhook_callback_verification: verified, then answered with the raw challenge.
    let vbody = br#"{"challenge":"pogchamp-kappa-360noscope-vohiyo","subscription":{"id":"f1c2a387-161a-49f9-a165-0f21d7a4e1c4","status":"webhook_callback_verification_pending","type":"channel.follow","version":"2"}}"#;
    let vid = "a0c4b1f4-0000-4000-8000-000000000001";
    let vsig = sign(vid, &ts, vbody);
    let mut vh = vec![
        ("Twitch-Eventsub-Message-Id", vid),
        ("Twitch-Eventsub-Message-Timestamp", ts.as_str()),
        ("Twitch-Eventsub-Message-Signature", vsig.as_str()),
        (
            "Twitch-Eventsub-Message-Type",
            "webhook_callback_verification",
        ),
    ];
    let r = gw.send("POST", "/twitch", &vh, vbody).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.content_type, "text/plain");
    assert_eq!(r.body, "pogchamp-kappa-360noscope-vohiyo");
    // A forged verification (signature of another message) is refused, never echoed.
    vh[2] = ("Twitch-Eventsub-Message-Signature", sig.as_str());
    gw.rejected(
        &gw.send("POST", "/twitch", &vh, vbody).await,
        "invalid_signature",
    );
}

#[tokio::test]
async fn meta() {
    let gw = start(
        "",
        &route(
            "meta",
            "secrets = [\"meta-app-secret\"]\nverify_token = \"meta-verify-token\"",
        ),
    );
    let body = br#"{"object":"page","entry":[{"id":"102290129340398","time":1700000000,"messaging":[{"message":{"text":"caf\u00e9"}}]}]}"#;
    let sig = format!(
        "sha256={}",
        hex::encode(hmac_sha256(b"meta-app-secret", &[body]))
    );
    let h = [("X-Hub-Signature-256", sig.as_str())];
    gw.accepted(&gw.send("POST", "/meta", &h, body).await);
    let reencoded = String::from_utf8(body.to_vec())
        .unwrap()
        .replace("\\u00e9", "é");
    gw.rejected(
        &gw.send("POST", "/meta", &h, reencoded.as_bytes()).await,
        "invalid_signature",
    );

    // GET is allowed by default on a meta route, for the verification request.
    let r = gw
        .send(
            "GET",
            "/meta?hub.mode=subscribe&hub.challenge=1158201444&hub.verify_token=meta-verify-token",
            &[],
            b"",
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        r.content_type.starts_with("text/plain"),
        "{}",
        r.content_type
    );
    assert_eq!(r.body, "1158201444");
    let r = gw
        .send(
            "GET",
            "/meta?hub.mode=subscribe&hub.challenge=1158201444&hub.verify_token=guess",
            &[],
            b"",
        )
        .await;
    gw.rejected(&r, "invalid_signature");
    assert!(!r.body.contains("1158201444"));
}

#[tokio::test]
async fn intercom() {
    let gw = start("", &route("intercom", r#"secrets = ["ic-client-secret"]"#));
    let body = br#"{"type":"notification_event","topic":"ping","id":"notif_ccd8a4d2","data":{"item":{"type":"ping","message":"hi"}}}"#;
    let sig = format!("sha1={}", hex::encode(hmac_sha1(b"ic-client-secret", body)));
    let h = [("X-Hub-Signature", sig.as_str())];
    gw.accepted(&gw.send("POST", "/intercom", &h, body).await);
    gw.rejected(
        &gw.send("POST", "/intercom", &h, b"{}").await,
        "invalid_signature",
    );
}

#[tokio::test]
async fn calendly() {
    let gw = start("", &route("calendly", r#"secrets = ["cal-signing-key"]"#));
    let body = br#"{"event":"invitee.created","created_at":"2026-11-23T10:00:00.000000Z","payload":{"uri":"https://api.calendly.com/scheduled_events/AAAA/invitees/BBBB"}}"#;
    let t = now_secs().to_string();
    let v1 = hex::encode(hmac_sha256(b"cal-signing-key", &[t.as_bytes(), b".", body]));
    let value = format!("t={t},v1={v1}");
    let h = [("Calendly-Webhook-Signature", value.as_str())];
    gw.accepted(&gw.send("POST", "/calendly", &h, body).await);
    gw.rejected(
        &gw.send("POST", "/calendly", &h, &body[..body.len() - 1])
            .await,
        "invalid_signature",
    );
    let old = (now_secs() - 600).to_string();
    let old_v1 = hex::encode(hmac_sha256(
        b"cal-signing-key",
        &[old.as_bytes(), b".", body],
    ));
    let value = format!("t={old},v1={old_v1}");
    gw.rejected(
        &gw.send(
            "POST",
            "/calendly",
            &[("Calendly-Webhook-Signature", value.as_str())],
            body,
        )
        .await,
        "stale_timestamp",
    );
}

#[tokio::test]
async fn hubspot() {
    let gw = start(
        "public_url = \"https://hooks.example.com\"",
        &route("hubspot", r#"secrets = ["hs-client-secret"]"#),
    );
    let body = br#"[{"eventId":100,"subscriptionId":12345,"portalId":62515,"occurredAt":1700000000000,"subscriptionType":"contact.creation","attemptNumber":0,"objectId":123,"changeSource":"CRM"}]"#;
    let ts = (SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis())
    .to_string();
    // HubSpot signs the URL it called with `:` and `@` decoded; the request carries them escaped.
    let signed = sdk(
        "hubspot",
        json!({
            "secret": "hs-client-secret",
            "method": "POST",
            "uri": "https://hooks.example.com/hubspot?portal=62515&t=a:b@c",
            "body": b64(body),
            "timestamp": ts,
        }),
    );
    let sig = signed["signature"].as_str().unwrap();
    let h = [
        ("X-HubSpot-Signature-v3", sig),
        ("X-HubSpot-Request-Timestamp", ts.as_str()),
    ];
    let path = "/hubspot?portal=62515&t=a%3Ab%40c";
    let id = gw.accepted(&gw.send("POST", path, &h, body).await);
    // HubSpot's retry of the same batch: attemptNumber grows, the event does not.
    let retry = String::from_utf8(body.to_vec())
        .unwrap()
        .replace("\"attemptNumber\":0", "\"attemptNumber\":1");
    let retry_sig = sdk(
        "hubspot",
        json!({
            "secret": "hs-client-secret",
            "method": "POST",
            "uri": "https://hooks.example.com/hubspot?portal=62515&t=a:b@c",
            "body": b64(retry.as_bytes()),
            "timestamp": ts,
        }),
    );
    let rh = [
        (
            "X-HubSpot-Signature-v3",
            retry_sig["signature"].as_str().unwrap(),
        ),
        ("X-HubSpot-Request-Timestamp", ts.as_str()),
    ];
    let r = gw.send("POST", path, &rh, retry.as_bytes()).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.body,
        format!("{{\"status\":\"duplicate\",\"event_id\":\"{id}\"}}")
    );
    gw.rejected(
        &gw.send("POST", path, &h, &body[..body.len() - 1]).await,
        "invalid_signature",
    );
    gw.rejected(
        &gw.send("POST", "/hubspot?portal=62516&t=a%3Ab%40c", &h, body)
            .await,
        "invalid_signature",
    );
}

#[tokio::test]
async fn sendgrid() {
    let body = b"[{\"email\":\"hello@world.com\",\"event\":\"delivered\",\"sg_event_id\":\"ZGVsaXZlcmVkLTAtMjA4\",\"sg_message_id\":\"LRzXl_NHStOGhQ4kofSm_A.0\",\"timestamp\":1700000000}]\r\n";
    let tampered = b"[{\"email\":\"hello@world.com\",\"event\":\"delivered\",\"sg_event_id\":\"ZGVsaXZlcmVkLTAtMjA4\",\"sg_message_id\":\"LRzXl_NHStOGhQ4kofSm_A.0\",\"timestamp\":1700000001}]\r\n";
    let ts = now_secs().to_string();
    // A fresh P-256 key (cryptography), each signature checked by the sendgrid SDK.
    let signed = sdk("sendgrid", json!({"timestamp": ts, "bodies": [b64(body)]}));
    let key = signed["public_key"].as_str().unwrap();
    let sig = signed["signatures"][0].as_str().unwrap();
    let gw = start("", &route("sendgrid", &format!("public_key = {key:?}")));
    let h = [
        ("X-Twilio-Email-Event-Webhook-Signature", sig),
        ("X-Twilio-Email-Event-Webhook-Timestamp", ts.as_str()),
    ];
    gw.accepted(&gw.send("POST", "/sendgrid", &h, body).await);
    gw.rejected(
        &gw.send("POST", "/sendgrid", &h, tampered).await,
        "invalid_signature",
    );
    // The trailing \r\n is part of what SendGrid signed.
    gw.rejected(
        &gw.send("POST", "/sendgrid", &h, &body[..body.len() - 2])
            .await,
        "invalid_signature",
    );
}

#[tokio::test]
async fn msgraph() {
    let gw = start("", &route("msgraph", r#"secrets = ["graph-client-state"]"#));
    let notification = |state: &str| {
        json!({"value": [{
            "subscriptionId": "7f105c7d-2dc5-4530-97cd-4e7ae6534c07",
            "changeType": "created",
            "resource": "Users/4b4f8a62/Messages/AAMkAGUwNjQ4ZjIx",
            "clientState": state,
            "tenantId": "84bd8158-6d4d-4958-8b9f-9d6445542f95"
        }]})
        .to_string()
    };
    gw.accepted(
        &gw.send(
            "POST",
            "/msgraph",
            &[("content-type", "application/json")],
            notification("graph-client-state").as_bytes(),
        )
        .await,
    );
    gw.rejected(
        &gw.send("POST", "/msgraph", &[], notification("guess").as_bytes())
            .await,
        "invalid_signature",
    );
    // Subscription validation: the decoded token, as text/plain, 200.
    let r = gw
        .send(
            "POST",
            "/msgraph?validationToken=Validation%3A%20Testing%20client%20application%20reachability",
            &[("content-type", "text/plain; charset=utf-8")],
            b"",
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        r.content_type.starts_with("text/plain"),
        "{}",
        r.content_type
    );
    assert_eq!(
        r.body,
        "Validation: Testing client application reachability"
    );
    // Nothing to echo: refused, not recorded.
    let r = gw.send("POST", "/msgraph?validationToken=", &[], b"").await;
    assert_eq!(r.status, 400, "{}", r.body);
}

#[tokio::test]
async fn okta() {
    let gw = start("", &route("okta", r#"secrets = ["okta-shared-secret"]"#));
    let body = br#"{"eventType":"com.okta.event_hook","eventTypeVersion":"1.0","eventId":"b5a188b9-5ece-4636-b041-482ffda96311","data":{"events":[{"uuid":"4af3e4a5","eventType":"user.session.start"}]}}"#;
    gw.accepted(
        &gw.send(
            "POST",
            "/okta",
            &[("Authorization", "okta-shared-secret")],
            body,
        )
        .await,
    );
    gw.rejected(
        &gw.send(
            "POST",
            "/okta",
            &[("Authorization", "okta-shared-secreT")],
            body,
        )
        .await,
        "invalid_signature",
    );
    gw.rejected(
        &gw.send("POST", "/okta", &[], body).await,
        "missing_signature",
    );
    // The one-time verification GET (allowed by default on an okta route).
    let challenge = "Me_rShK8JHsTnbyYrWXCEoMGbM_zsZ6k0hLPZ_Pg";
    let r = gw
        .send(
            "GET",
            "/okta",
            &[
                ("X-Okta-Verification-Challenge", challenge),
                ("Authorization", "okta-shared-secret"),
            ],
            b"",
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.content_type, "application/json");
    let v: Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(v, json!({ "verification": challenge }));
    let r = gw
        .send(
            "GET",
            "/okta",
            &[
                ("X-Okta-Verification-Challenge", challenge),
                ("Authorization", "guess"),
            ],
            b"",
        )
        .await;
    gw.rejected(&r, "invalid_signature");
}
