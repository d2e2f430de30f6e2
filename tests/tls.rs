//! `[server.tls]`: TLS termination and mTLS with `client_ca` (certificates made with the
//! `openssl` command line for each run).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;
use std::process::Command;

use support::*;

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl installed");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, all P-256.
fn make_pki(dir: &Path) {
    let key = |name: &str| {
        openssl(
            dir,
            &[
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-out",
                name,
            ],
        )
    };
    key("ca.key");
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-new",
            "-key",
            "ca.key",
            "-subj",
            "/CN=hookgate test CA",
            "-days",
            "2",
            "-out",
            "ca.crt",
        ],
    );
    for (name, ext) in [
        (
            "server",
            "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth",
        ),
        ("client", "extendedKeyUsage=clientAuth"),
    ] {
        key(&format!("{name}.key"));
        openssl(
            dir,
            &[
                "req",
                "-new",
                "-key",
                &format!("{name}.key"),
                "-subj",
                &format!("/CN={name}"),
                "-out",
                &format!("{name}.csr"),
            ],
        );
        std::fs::write(dir.join(format!("{name}.ext")), ext).unwrap();
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                &format!("{name}.ext"),
                "-out",
                &format!("{name}.crt"),
            ],
        );
    }
}

/// `[server.tls]` with the server certificate `make_pki` wrote into `dir`.
fn tls_section(dir: &Path) -> String {
    let p = |f: &str| dir.join(f).display().to_string();
    format!(
        "[server.tls]\ncert = {:?}\nkey = {:?}\n",
        p("server.crt"),
        p("server.key")
    )
}

fn route(up: &str) -> String {
    format!("\n[[route]]\nname = \"t\"\npath = \"/t\"\n[route.verify]\nscheme = \"hmac\"\nsecrets = [\"tls-secret\"]\n[route.forward]\nurl = \"{up}\"\n")
}

fn client(dir: &Path, with_identity: bool) -> reqwest::Client {
    let ca = reqwest::Certificate::from_pem(&std::fs::read(dir.join("ca.crt")).unwrap()).unwrap();
    // Bounded, so a connection the server dropped mid-handshake fails the request instead of
    // hanging the test (seen once under a loaded CI run: a TLS 1.3 client without a
    // certificate never completed its request).
    let mut b = reqwest::Client::builder()
        .use_rustls_tls()
        .timeout(std::time::Duration::from_secs(10))
        .add_root_certificate(ca);
    if with_identity {
        let mut pem = std::fs::read(dir.join("client.crt")).unwrap();
        pem.extend(std::fs::read(dir.join("client.key")).unwrap());
        b = b.identity(reqwest::Identity::from_pem(&pem).unwrap());
    }
    b.build().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_and_mtls_termination() {
    let dir = tempdir();
    make_pki(dir.path());
    let up = Upstream::start().await;
    let tls = tls_section(dir.path());
    let gw = Gateway::start(
        dir.path(),
        &config(&Backend::Embedded, dir.path(), &tls, &route(&up.url("/in"))),
    );
    let url = format!("https://127.0.0.1:{}/t", gw.ingress.port());
    let r = signed(&client(dir.path(), false), &url, "tls-secret", "over tls")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    assert!(
        reqwest::get(gw.url("/t")).await.is_err(),
        "plain HTTP is not served on a TLS listener"
    );
    up.wait_delivered(1, std::time::Duration::from_secs(10))
        .await;
    drop(gw);

    // mTLS: a client certificate from client_ca is required.
    let dir2 = tempdir();
    let ca = dir.path().join("ca.crt").display().to_string();
    let mtls = format!("{tls}client_ca = {ca:?}\n");
    let gw = Gateway::start(
        dir2.path(),
        &config(
            &Backend::Embedded,
            dir2.path(),
            &mtls,
            &route(&up.url("/in")),
        ),
    );
    let url = format!("https://127.0.0.1:{}/t", gw.ingress.port());
    assert!(
        signed(&client(dir.path(), false), &url, "tls-secret", "no cert")
            .send()
            .await
            .is_err(),
        "no client certificate, no request"
    );
    let r = signed(&client(dir.path(), true), &url, "tls-secret", "with cert")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
}

/// An `https://` upstream is reached over TLS with its certificate checked against the public
/// roots: one signed by a private CA (here: another hookgate's TLS ingress) is never trusted,
/// and the attempt says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_upstream_with_an_untrusted_certificate_is_not_delivered_to() {
    let dir = tempdir();
    make_pki(dir.path());
    let up = Upstream::start().await;
    let tls = tls_section(dir.path());
    let private = Gateway::start(
        dir.path(),
        &config(&Backend::Embedded, dir.path(), &tls, &route(&up.url("/in"))),
    );
    let dir2 = tempdir();
    let target = format!("https://127.0.0.1:{}/t", private.ingress.port());
    let gw = Gateway::start(
        dir2.path(),
        &config(&Backend::Embedded, dir2.path(), "", &route(&target)),
    );
    let id = accepted(signed(
        &reqwest::Client::new(),
        &gw.url("/t"),
        "tls-secret",
        "to tls",
    ))
    .await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let detail = loop {
        let ev = gw.admin_json(&format!("/admin/events/{id}")).await;
        if let Some(a) = ev["attempt_log"].as_array().and_then(|a| a.first()) {
            break a["detail"].as_str().unwrap_or_default().to_string();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no attempt within 30 s: {ev:#}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert!(detail.contains("request failed"), "{detail}");
    assert!(
        detail.to_ascii_lowercase().contains("certificate"),
        "the attempt names the certificate problem: {detail}"
    );
    // The private gateway records an event before it answers 202: had the attempt gone
    // through, it would be listed there now.
    let recorded = private.admin_json("/admin/events?route=t").await;
    assert_eq!(
        recorded["events"].as_array().map(Vec::len),
        Some(0),
        "nothing went through the untrusted upstream: {recorded}"
    );
}

#[test]
fn check_reports_unreadable_or_mismatched_tls_files() {
    let dir = tempdir();
    make_pki(dir.path());
    let p = |f: &str| dir.path().join(f).display().to_string();
    let write = |tls: &str| {
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            config(
                &Backend::Embedded,
                dir.path(),
                tls,
                &route("http://127.0.0.1:1/"),
            ),
        )
        .unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_hookgate"))
            .args(["check", "-c", path.to_str().unwrap()])
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (code, out) = write(&format!(
        "[server.tls]\ncert = {:?}\nkey = \"/nonexistent.key\"\n",
        p("server.crt")
    ));
    assert_eq!(code, Some(1));
    assert!(
        out.starts_with("server.tls.key: cannot read a PEM private key from /nonexistent.key"),
        "{out}"
    );
    let (code, out) = write(&format!(
        "[server.tls]\ncert = {:?}\nkey = {:?}\n",
        p("server.crt"),
        p("client.key")
    ));
    assert_eq!(code, Some(1));
    assert!(
        out.starts_with("server.tls.key: does not match server.tls.cert"),
        "{out}"
    );
}

/// A renewed certificate is served after a reload (SIGHUP), without a restart: new
/// connections get the new certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_serves_the_renewed_certificate() {
    let dir = tempdir();
    make_pki(dir.path());
    let up = Upstream::start().await;
    let mut gw = Gateway::start(
        dir.path(),
        &config(
            &Backend::Embedded,
            dir.path(),
            &tls_section(dir.path()),
            &route(&up.url("/in")),
        ),
    );
    let url = format!("https://127.0.0.1:{}/t", gw.ingress.port());
    let old_client = client(dir.path(), false);
    let r = signed(&old_client, &url, "tls-secret", "before")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);

    // Renewal: a new CA and server certificate written over the same files.
    let renewed = tempdir();
    make_pki(renewed.path());
    for f in ["server.crt", "server.key"] {
        std::fs::copy(renewed.path().join(f), dir.path().join(f)).unwrap();
    }
    let new_client = client(renewed.path(), false);
    signal(gw.pid(), "HUP");
    wait_until(
        std::time::Duration::from_secs(10),
        "the renewed certificate served",
        || {
            let req = signed(&new_client, &url, "tls-secret", "after").send();
            async move { req.await.is_ok_and(|r| r.status() == 202) }
        },
    )
    .await;
    assert!(
        signed(&client(dir.path(), false), &url, "tls-secret", "old CA")
            .send()
            .await
            .is_err(),
        "a client trusting only the old CA no longer connects"
    );
    assert!(!gw.log().contains("take effect only after a restart"));
    assert!(gw.terminate().success());
}
