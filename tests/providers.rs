//! End to end with the providers' official SDKs: the real `hookgate` binary is started on
//! 127.0.0.1:0, the SDK (tests/sdk/sign.py, tests/sdk/sign.mjs) signs a body as the provider
//! would, and the gateway must accept it (202), refuse it with the body tampered (401), and answer
//! handshakes exactly as the provider documents. `hookgate sign` output is checked the same way.
//! Needs `scripts/sdk-setup.sh` (installs .venv/ and tests/sdk/node_modules/); without them
//! these tests fail, they never pass silently. Self-contained: its own small helpers.

// Test code: a failed step should panic with its message. The child is killed and reaped by
// `Gateway`'s Drop once it is ready, and on the paths below that fail before.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::zombie_processes)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const PUBLIC_URL: &str = "https://hooks.example.com";
/// RFC 8032 §7.1 TEST 1 seed and its public key (Discord e2e).
const DISCORD_SEED: &str = "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60";
const DISCORD_PK: &str = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a";
const WHSEC: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Fails (never skips) when the SDKs are not installed.
fn require_sdks() {
    let py = root().join(".venv/bin/python");
    let node = root().join("tests/sdk/node_modules/@octokit/webhooks-methods");
    assert!(
        py.exists() && node.exists(),
        "provider SDKs are not installed: run scripts/sdk-setup.sh (needs {} and {})",
        py.display(),
        node.display()
    );
}

fn routes() -> String {
    let r = |name: &str, verify: &str| {
        format!(
            "[[route]]\nname = \"{name}\"\npath = \"/{name}\"\nverify = {{ {verify} }}\nforward = {{ url = \"http://127.0.0.1:9/\", max_attempts = 1 }}\n\n"
        )
    };
    [
        r(
            "stripe",
            "scheme = \"stripe\", secrets = [\"whsec_old\", \"whsec_e2e\"]",
        ),
        r(
            "stdwh",
            &format!("scheme = \"standard-webhooks\", secrets = [\"{WHSEC}\"]"),
        ),
        r(
            "svix",
            &format!("scheme = \"svix\", secrets = [\"{WHSEC}\"]"),
        ),
        r(
            "slack",
            "scheme = \"slack\", secrets = [\"slack-signing-secret\"]",
        ),
        r(
            "twilio",
            "scheme = \"twilio\", secrets = [\"twilio-auth-token\"]",
        ),
        r(
            "paddle",
            "scheme = \"paddle\", secrets = [\"pdl_ntfset_e2e\"], tolerance = \"5m\"",
        ),
        r(
            "discord",
            &format!("scheme = \"discord\", public_key = \"{DISCORD_PK}\""),
        ),
        r("github", "scheme = \"github\", secrets = [\"gh-secret\"]"),
        r("zoom", "scheme = \"zoom\", secrets = [\"zoom-secret\"]"),
        r("square", "scheme = \"square\", secrets = [\"square-key\"]"),
        r(
            "shopify",
            "scheme = \"shopify\", secrets = [\"shp-secret\"]",
        ),
        r("linear", "scheme = \"linear\", secrets = [\"lin-secret\"]"),
        r("gitlab", "scheme = \"gitlab\", secrets = [\"gl-token\"]"),
        r("basic", "scheme = \"basic\", secrets = [\"user:pa ss\"]"),
        r("bearer", "scheme = \"bearer\", secrets = [\"tok\"]"),
        r("hmac", "scheme = \"hmac\", secrets = [\"h\"]"),
    ]
    .concat()
}

struct Gateway {
    child: Child,
    ingress: String,
    config: PathBuf,
    dir: tempfile::TempDir,
}

impl Gateway {
    fn start() -> Gateway {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("hookgate.toml");
        let text = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\npublic_url = \"{PUBLIC_URL}\"\n\n[store]\nbackend = \"embedded\"\npath = \"{}\"\n\n{}",
            dir.path().join("data").display(),
            routes()
        );
        std::fs::write(&config, text).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_hookgate"))
            .args(["serve", "-c"])
            .arg(&config)
            .env("HOOKGATE_LOG", "warn")
            .stdout(Stdio::piped())
            // A file, not a pipe: an unread pipe would fill up and stall the gateway.
            .stderr(std::fs::File::create(dir.path().join("stderr.log")).unwrap())
            .spawn()
            .unwrap();
        // Lines are read on a thread, so a gateway that neither gets ready nor exits fails
        // the test after a while instead of blocking it.
        let (tx, lines) = mpsc::channel();
        if let Some(out) = child.stdout.take() {
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) => {
                    if let Some(rest) = line.trim().strip_prefix("hookgate listening ingress=") {
                        let ingress = rest.split_whitespace().next().unwrap_or_default();
                        return Gateway {
                            child,
                            ingress: ingress.to_string(),
                            config,
                            dir,
                        };
                    }
                }
                // Disconnected: stdout closed, the process exited. Timeout: not ready in 30 s.
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    let err =
                        std::fs::read_to_string(dir.path().join("stderr.log")).unwrap_or_default();
                    panic!("hookgate was not ready ({e}): {err}");
                }
            }
        }
    }

    async fn post(&self, path: &str, headers: &[(String, String)], body: &[u8]) -> (u16, String) {
        let mut req = reqwest::Client::new()
            .post(format!("http://{}{path}", self.ingress))
            .body(body.to_vec());
        for (k, v) in headers {
            req = req.header(k, v);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.text().await.unwrap())
    }

    /// The first line of the gateway's log that has every one of `needles`, waited for up to
    /// 10 s (a line is written before its answer, but the file is read from another process).
    fn log_line(&self, needles: &[&str]) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let log =
                std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default();
            if let Some(l) = log.lines().find(|l| needles.iter().all(|n| l.contains(n))) {
                return l.to_string();
            }
            assert!(Instant::now() < deadline, "no line with {needles:?}: {log}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn body_file(&self, body: &[u8]) -> PathBuf {
        let p = self
            .dir
            .path()
            .join(format!("body-{}", uuid::Uuid::now_v7()));
        std::fs::write(&p, body).unwrap();
        p
    }

    /// Headers from the official SDK signer (`python` → sign.py, `node` → sign.mjs).
    fn sdk_sign(
        &self,
        tool: &str,
        provider: &str,
        secret: &str,
        body: &[u8],
        extra: &[&str],
    ) -> (Vec<(String, String)>, serde_json::Value) {
        require_sdks();
        let file = self.body_file(body);
        let mut cmd = if tool == "node" {
            let mut c = Command::new("node");
            c.arg(root().join("tests/sdk/sign.mjs"));
            c
        } else {
            let mut c = Command::new(root().join(".venv/bin/python"));
            c.arg(root().join("tests/sdk/sign.py"));
            c
        };
        let out = cmd
            .arg(provider)
            .args(["--secret", secret, "--body-file"])
            .arg(&file)
            .args(extra)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "SDK signer failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let headers = doc["headers"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
            .collect();
        (headers, doc)
    }

    /// Headers printed by `hookgate sign` (the lines before the blank line), and the output.
    fn hookgate_sign(&self, route: &str, body: &[u8]) -> (Vec<(String, String)>, String) {
        let file = self.body_file(body);
        let out = Command::new(env!("CARGO_BIN_EXE_hookgate"))
            .args(["sign", "-c"])
            .arg(&self.config)
            .args(["--route", route, "--body"])
            .arg(&file)
            .output()
            .unwrap();
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(
            out.status.success(),
            "hookgate sign failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let headers = text
            .lines()
            .take_while(|l| !l.is_empty())
            .map(|l| {
                let (k, v) = l.split_once(": ").unwrap();
                (k.to_string(), v.to_string())
            })
            .collect();
        (headers, text)
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tampered(body: &[u8]) -> Vec<u8> {
    let mut b = body.to_vec();
    let last = b.len() - 2;
    b[last] ^= 0x01;
    b
}

/// Accepted as signed (202); refused with the body tampered (401 invalid_signature).
async fn accepted_and_tamper_refused(
    gw: &Gateway,
    path: &str,
    headers: &[(String, String)],
    body: &[u8],
) {
    let (status, text) = gw.post(path, headers, body).await;
    assert_eq!(status, 202, "{path}: {text}");
    assert!(text.contains("\"status\":\"accepted\""), "{path}: {text}");
    let (status, text) = gw.post(path, headers, &tampered(body)).await;
    assert_eq!(
        (status, text.as_str()),
        (401, "{\"error\":\"invalid_signature\"}"),
        "{path} tampered"
    );
}

#[tokio::test]
async fn sdk_signed_requests_are_accepted_and_tampered_ones_refused() {
    require_sdks();
    let gw = Gateway::start();
    let json = br#"{"id":"evt_e2e_1","event_id":"e2e-1","type":"test","n":1}"#;
    let cases: &[(&str, &str, &str, &str, &[&str])] = &[
        ("python", "stripe", "/stripe", "whsec_e2e", &[]),
        (
            "python",
            "standard-webhooks",
            "/stdwh",
            WHSEC,
            &["--id", "msg_e2e_stdwh"],
        ),
        ("python", "svix", "/svix", WHSEC, &["--id", "msg_e2e_svix"]),
        (
            "python",
            "standard-webhooks",
            "/svix",
            WHSEC,
            &["--id", "msg_e2e_svix_webhook_family"],
        ),
        ("python", "slack", "/slack", "slack-signing-secret", &[]),
        ("python", "paddle", "/paddle", "pdl_ntfset_e2e", &[]),
        ("python", "discord", "/discord", DISCORD_SEED, &[]),
        ("node", "github", "/github", "gh-secret", &[]),
    ];
    for (tool, provider, path, secret, extra) in cases {
        let (headers, _) = gw.sdk_sign(tool, provider, secret, json, extra);
        accepted_and_tamper_refused(&gw, path, &headers, json).await;
    }
    // Twilio: a form POST to the public URL, signed by twilio-python's RequestValidator.
    let form =
        b"AccountSid=AC123&Body=Hello+there&From=%2B14158675309&MessageSid=SM1&To=%2B18005551212";
    let url = format!("{PUBLIC_URL}/twilio?x=1");
    let (headers, _) = gw.sdk_sign(
        "python",
        "twilio",
        "twilio-auth-token",
        form,
        &["--url", &url],
    );
    accepted_and_tamper_refused(&gw, "/twilio?x=1", &headers, form).await;
    let (status, _) = gw.post("/twilio?x=2", &headers, form).await;
    assert_eq!(status, 401, "the signed URL includes the query");
    // Missing signature and a stale SDK signature (timestamp 10 min ago).
    let (status, text) = gw.post("/stripe", &[], json).await;
    assert_eq!(
        (status, text.as_str()),
        (401, "{\"error\":\"missing_signature\"}")
    );
    let old = (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        - 600)
        .to_string();
    let (headers, _) = gw.sdk_sign(
        "python",
        "stripe",
        "whsec_e2e",
        json,
        &["--timestamp", &old],
    );
    let (status, text) = gw.post("/stripe", &headers, json).await;
    assert_eq!(
        (status, text.as_str()),
        (401, "{\"error\":\"stale_timestamp\"}")
    );
}

/// The event id of an accepted (202) or duplicate (200) answer.
fn answered_id(status: u16, text: &str, want: u16) -> String {
    assert_eq!(status, want, "{text}");
    let v: serde_json::Value = serde_json::from_str(text).unwrap();
    v["event_id"].as_str().unwrap().to_string()
}

/// Where the provider's event id comes from a header its signature does not cover (GitHub's
/// `X-GitHub-Delivery`, Twilio's `I-Twilio-Idempotency-Token`), a captured request sent again
/// under a fresh id is a duplicate of the original, not a new event: a key over what the
/// signature covers is recorded beside the id. The provider's own retry (same id) is one too,
/// and a different event under a fresh id is new.
#[tokio::test]
async fn a_request_replayed_under_a_fresh_unsigned_id_is_a_duplicate() {
    require_sdks();
    let gw = Gateway::start();
    let body = br#"{"action":"opened","number":1}"#;
    let (signed, _) = gw.sdk_sign("node", "github", "gh-secret", body, &[]);
    let with_id = |headers: &[(String, String)], name: &str, id: &str| {
        let mut h: Vec<_> = headers
            .iter()
            .filter(|(k, _)| !k.eq_ignore_ascii_case(name))
            .cloned()
            .collect();
        h.push((name.to_string(), id.to_string()));
        h
    };
    let delivery = |id: &str| with_id(&signed, "X-GitHub-Delivery", id);
    let (status, text) = gw.post("/github", &delivery("d-1"), body).await;
    let original = answered_id(status, &text, 202);
    for id in ["d-1", "d-2", "d-3"] {
        let (status, text) = gw.post("/github", &delivery(id), body).await;
        assert_eq!(answered_id(status, &text, 200), original, "delivery {id}");
    }
    // And with the id header left out.
    let no_id: Vec<_> = signed
        .iter()
        .filter(|(k, _)| !k.eq_ignore_ascii_case("X-GitHub-Delivery"))
        .cloned()
        .collect();
    let (status, text) = gw.post("/github", &no_id, body).await;
    assert_eq!(answered_id(status, &text, 200), original, "without an id");
    // The copies under another id are said to be possible replays (GitHub's own redelivery,
    // d-1, is not).
    let log = || std::fs::read_to_string(gw.dir.path().join("stderr.log")).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(10);
    let said = |l: &String| {
        l.lines()
            .filter(|l| l.contains("possibly a captured request sent again"))
            .count()
    };
    while said(&log()) < 3 {
        assert!(Instant::now() < deadline, "{}", log());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        log()
            .lines()
            .all(|l| !l.contains("possibly a captured") || !l.contains(" key=\"id:d-1\"")),
        "{}",
        log()
    );
    let other = br#"{"action":"opened","number":2}"#;
    let (signed_other, _) = gw.sdk_sign("node", "github", "gh-secret", other, &[]);
    let (status, text) = gw
        .post(
            "/github",
            &with_id(&signed_other, "X-GitHub-Delivery", "d-4"),
            other,
        )
        .await;
    assert_ne!(answered_id(status, &text, 202), original, "another event");

    // Shopify sends orders/create and orders/updated with byte-identical bodies and ids of
    // their own: two events, not a replay. The same topic under a fresh id is one.
    let order = br#"{"id":820982911946154508,"email":"jon@example.com"}"#;
    let (signed, _) = gw.hookgate_sign("shopify", order);
    let shopify = |topic: &str, id: &str| {
        with_id(
            &with_id(&signed, "X-Shopify-Topic", topic),
            "X-Shopify-Event-Id",
            id,
        )
    };
    let (status, text) = gw
        .post("/shopify", &shopify("orders/create", "e-1"), order)
        .await;
    let created = answered_id(status, &text, 202);
    let (status, text) = gw
        .post("/shopify", &shopify("orders/updated", "e-2"), order)
        .await;
    assert_ne!(answered_id(status, &text, 202), created, "another topic");
    // Also with the unsigned topic re-spelled as Shopify's libraries would still read it.
    for (topic, id) in [("orders/create", "e-3"), ("Orders.Create", "e-4")] {
        let (status, text) = gw.post("/shopify", &shopify(topic, id), order).await;
        assert_eq!(
            answered_id(status, &text, 200),
            created,
            "a replay as {topic}"
        );
    }

    // Twilio: the same parameters re-ordered (Twilio sorts them before signing) under a fresh
    // idempotency token.
    let form = b"AccountSid=AC1&Body=hello&From=%2B15551234&MessageSid=SM9";
    let url = format!("{PUBLIC_URL}/twilio");
    let (signed, _) = gw.sdk_sign(
        "python",
        "twilio",
        "twilio-auth-token",
        form,
        &["--url", &url],
    );
    let token = |id: &str| with_id(&signed, "I-Twilio-Idempotency-Token", id);
    let (status, text) = gw.post("/twilio", &token("t-1"), form).await;
    let original = answered_id(status, &text, 202);
    let reordered = b"MessageSid=SM9&From=%2B15551234&Body=hello&AccountSid=AC1";
    let (status, text) = gw.post("/twilio", &token("t-2"), reordered).await;
    assert_eq!(answered_id(status, &text, 200), original);
}

/// Twilio signs the URL, plus the form parameters of a form POST; a JSON body is covered by
/// `bodySHA256` in the signed query. A body covered by neither is refused: otherwise one
/// URL-only signature (an empty POST's) would carry any body an attacker liked.
#[tokio::test]
async fn twilio_refuses_a_body_its_signature_does_not_cover() {
    require_sdks();
    let gw = Gateway::start();
    let secret = "twilio-auth-token";
    // JSON as Twilio sends it, signed and checked by twilio-python: accepted; tampered: refused.
    let json = br#"{"event_type":"com.twilio.messaging.message.delivered","sid":"SM1"}"#;
    let (headers, doc) = gw.sdk_sign(
        "python",
        "twilio-json",
        secret,
        json,
        &["--url", &format!("{PUBLIC_URL}/twilio?x=json")],
    );
    let path = doc["url"]
        .as_str()
        .unwrap()
        .strip_prefix(PUBLIC_URL)
        .unwrap()
        .to_string();
    assert!(path.contains("bodySHA256="), "{path}");
    accepted_and_tamper_refused(&gw, &path, &headers, json).await;

    // A URL-only signature: what twilio-python computes for a POST without parameters.
    let url = format!("{PUBLIC_URL}/twilio?x=empty");
    let (headers, _) = gw.sdk_sign("python", "twilio", secret, b"", &["--url", &url]);
    let (status, text) = gw.post("/twilio?x=empty", &headers, b"").await;
    assert_eq!(
        status, 202,
        "an empty POST is all the URL signature covers: {text}"
    );
    let forged = br#"{"event_type":"forged","amount":1000000}"#;
    let as_json: Vec<(String, String)> = headers
        .iter()
        .filter(|(k, _)| !k.eq_ignore_ascii_case("content-type"))
        .cloned()
        .chain([("Content-Type".to_string(), "application/json".to_string())])
        .collect();
    let untyped: Vec<(String, String)> = headers
        .iter()
        .filter(|(k, _)| !k.eq_ignore_ascii_case("content-type"))
        .cloned()
        .collect();
    for h in [&as_json, &untyped] {
        let (status, text) = gw.post("/twilio?x=empty", h, forged).await;
        assert_eq!(
            (status, text.as_str()),
            (401, "{\"error\":\"invalid_signature\"}"),
            "a body the URL-only signature does not cover, headers {h:?}"
        );
    }
}

#[tokio::test]
async fn handshakes_are_answered_as_documented() {
    require_sdks();
    let gw = Gateway::start();
    // Slack url_verification, signed by slack_sdk: the reply is the challenge itself.
    let body = br#"{"token":"Jhj5dZrVaK7ZwHHjRyZWjbDl","challenge":"3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P","type":"url_verification"}"#;
    let (headers, _) = gw.sdk_sign("python", "slack", "slack-signing-secret", body, &[]);
    assert_eq!(
        gw.post("/slack", &headers, body).await,
        (
            200,
            "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P".to_string()
        )
    );
    assert_eq!(gw.post("/slack", &headers, &tampered(body)).await.0, 401);
    // Discord PING, signed with PyNaCl: PONG.
    let ping = br#"{"id":"1","type":1,"version":1}"#;
    let (headers, doc) = gw.sdk_sign("python", "discord", DISCORD_SEED, ping, &[]);
    assert_eq!(doc["public_key"], DISCORD_PK);
    assert_eq!(
        gw.post("/discord", &headers, ping).await,
        (200, "{\"type\":1}".to_string())
    );
    let forged = vec![
        ("X-Signature-Ed25519".to_string(), "00".repeat(64)),
        (headers[1].0.clone(), headers[1].1.clone()),
    ];
    assert_eq!(gw.post("/discord", &forged, ping).await.0, 401);
    // Zoom endpoint.url_validation (no official signer; signed by `hookgate sign`).
    let body = br#"{"payload":{"plainToken":"qgg8vlvZRS6UYooatFL8Aw"},"event_ts":1654503849680,"event":"endpoint.url_validation"}"#;
    let (headers, _) = gw.hookgate_sign("zoom", body);
    let (status, text) = gw.post("/zoom", &headers, body).await;
    assert_eq!(status, 200, "{text}");
    // encryptedToken = hex(HMAC-SHA256("zoom-secret", plainToken)), computed with Python hmac.
    let want = r#"{"encryptedToken":"b17f0320a1322a509340a1a835b3d9edbc491f0b0790ed2d20d0604d39dfe922","plainToken":"qgg8vlvZRS6UYooatFL8Aw"}"#;
    let got: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        got,
        serde_json::from_str::<serde_json::Value>(want).unwrap()
    );
}

#[tokio::test]
async fn hookgate_sign_output_is_accepted() {
    let gw = Gateway::start();
    let body = br#"{"id":"evt_sign","event_id":"sign-1","webhookTimestamp":0}"#;
    for route in [
        "stripe", "stdwh", "svix", "slack", "paddle", "github", "zoom", "square", "shopify", "hmac",
    ] {
        let (headers, text) = gw.hookgate_sign(route, body);
        assert!(
            text.contains("curl -sS -X POST 'http://127.0.0.1:"),
            "{text}"
        );
        accepted_and_tamper_refused(&gw, &format!("/{route}"), &headers, body).await;
    }
    // Static-token schemes do not sign the body: accepted with the token, refused without it.
    for route in ["gitlab", "basic", "bearer"] {
        let (headers, text) = gw.hookgate_sign(route, body);
        let path = format!("/{route}");
        assert_eq!(gw.post(&path, &headers, body).await.0, 202, "{text}");
        let (status, text) = gw.post(&path, &[], body).await;
        assert_eq!(
            (status, text.as_str()),
            (401, "{\"error\":\"missing_signature\"}"),
            "{route}"
        );
    }
    // Twilio signs form parameters; Linear needs a current webhookTimestamp, as the default body has.
    let form = b"A=1&B=two+words";
    let (headers, _) = gw.hookgate_sign("twilio", form);
    accepted_and_tamper_refused(&gw, "/twilio", &headers, form).await;
    let out = Command::new(env!("CARGO_BIN_EXE_hookgate"))
        .args(["sign", "-c"])
        .arg(&gw.config)
        .args(["--route", "linear"])
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let headers: Vec<(String, String)> = text
        .lines()
        .take_while(|l| !l.is_empty())
        .filter_map(|l| {
            l.split_once(": ")
                .map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect();
    let curl = text.lines().last().unwrap();
    let body = curl
        .rsplit_once("--data-binary '")
        .unwrap()
        .1
        .trim_end_matches('\'');
    assert_eq!(
        gw.post("/linear", &headers, body.as_bytes()).await.0,
        202,
        "{text}"
    );
    // Public-key schemes cannot be signed: a clear message, exit 1.
    let out = Command::new(env!("CARGO_BIN_EXE_hookgate"))
        .args(["sign", "-c"])
        .arg(&gw.config)
        .args(["--route", "discord"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("signing needs the provider's private key")
    );
}

#[test]
fn check_names_missing_public_url() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("hookgate.toml");
    std::fs::write(
        &cfg,
        "[[route]]\nname = \"t\"\npath = \"/t\"\nverify = { scheme = \"twilio\", secrets = [\"x\"] }\nforward = { url = \"http://127.0.0.1:9/\" }\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_hookgate"))
        .args(["check", "-c"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("server.public_url: is required by route[0].verify.scheme = \"twilio\""),
        "{text}"
    );
}

/// Stripe signs every retry afresh (a new `t=`): a copy carrying the original's very signature
/// is no retry but a replayed capture, and is logged as a warning (still answered as a duplicate).
#[tokio::test]
async fn an_identical_copy_of_a_stripe_event_warns_as_a_possible_replay() {
    let gw = Gateway::start();
    let body = br#"{"id":"evt_replayed","type":"payment_intent.succeeded"}"#;
    let (headers, _) = gw.hookgate_sign("stripe", body);
    assert_eq!(gw.post("/stripe", &headers, body).await.0, 202);
    assert_eq!(gw.post("/stripe", &headers, body).await.0, 200);
    let log = || std::fs::read_to_string(gw.dir.path().join("stderr.log")).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !log().contains("possible replay") {
        assert!(Instant::now() < deadline, "no warning: {}", log());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(log().contains("WARN"), "{}", log());
}

/// A refused request's log line names the event id it claims, as the dedupe key it would have
/// had (`key="id:…"`, as on an accepted request's line), so "did evt_… ever come?" finds it;
/// and a refused timestamp says how far it is from this host's clock (`skew_s`, seconds
/// behind; negative: ahead), which tells a capture or a late retry from a wrong clock.
#[tokio::test]
async fn a_refused_request_is_logged_with_the_id_it_claims_and_its_skew() {
    require_sdks();
    let gw = Gateway::start();
    let started = Instant::now();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let stripe = |id: &str, at: u64| {
        let body = format!(r#"{{"id":"{id}","object":"event"}}"#);
        let at = at.to_string();
        let (headers, _) = gw.sdk_sign(
            "python",
            "stripe",
            "whsec_e2e",
            body.as_bytes(),
            &["--timestamp", &at],
        );
        (headers, body)
    };
    let (old, old_body) = stripe("evt_late", now - 600);
    assert_eq!(gw.post("/stripe", &old, old_body.as_bytes()).await.0, 401);
    let (ahead, ahead_body) = stripe("evt_ahead", now + 900);
    assert_eq!(
        gw.post("/stripe", &ahead, ahead_body.as_bytes()).await.0,
        401
    );
    let (fresh, fresh_body) = stripe("evt_forged", now);
    // Changed on its way, still JSON (a body that is not JSON claims no id).
    let forged = fresh_body.replace("\"event\"", "\"events\"");
    assert_eq!(gw.post("/stripe", &fresh, forged.as_bytes()).await.0, 401);
    let body = br#"{"action":"opened"}"#;
    let (mut github, _) = gw.sdk_sign("node", "github", "gh-secret", body, &[]);
    github.retain(|(k, _)| !k.eq_ignore_ascii_case("X-GitHub-Delivery"));
    github.push(("X-GitHub-Delivery".into(), "d-refused".into()));
    assert_eq!(gw.post("/github", &github, &tampered(body)).await.0, 401);

    let line = |key: &str| gw.log_line(&[&format!(" key=\"id:{key}\"")]);
    let late = line("evt_late");
    assert!(late.contains("outcome=\"stale_timestamp\""), "{late}");
    let skew = |l: &str| -> i64 {
        let v = l.split(" skew_s=").nth(1).unwrap_or_else(|| panic!("{l}"));
        v.split(' ').next().unwrap().parse().unwrap()
    };
    // The gateway's clock read later than `now`, by at most the time the signing and sending
    // took (the SDK runs as a process of its own), and a second of rounding.
    let slack = started.elapsed().as_secs() as i64 + 1;
    assert!((600..=600 + slack).contains(&skew(&late)), "{late}");
    assert!(late.contains("behind this host's clock"), "{late}");
    let ahead = line("evt_ahead");
    assert!((-900..=-900 + slack).contains(&skew(&ahead)), "{ahead}");
    assert!(ahead.contains("ahead of this host's clock"), "{ahead}");
    for (key, l) in [
        ("evt_forged", line("evt_forged")),
        ("d-refused", line("d-refused")),
    ] {
        assert!(l.contains("outcome=\"invalid_signature\""), "{key}: {l}");
        assert!(!l.contains("skew_s="), "{key}: {l}");
    }
}
