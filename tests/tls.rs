//! `[server.tls]`: TLS termination and mTLS with `client_ca`, and TLS to upstreams, Redis, NATS
//! and RabbitMQ trusting a private CA through `SSL_CERT_FILE` (certificates made with the
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

/// A gateway terminating TLS with the certificate `make_pki` wrote into `dir` (config and
/// store in `store_dir`), route `t` forwarding to an upstream of its own: also the https
/// upstream of other gateways, whose events it lists.
async fn tls_gateway(dir: &Path, store_dir: &Path) -> (Upstream, Gateway) {
    let up = Upstream::start().await;
    let gw = Gateway::start(
        store_dir,
        &config(
            &Backend::Embedded,
            store_dir,
            &tls_section(dir),
            &route(&up.url("/in")),
        ),
    );
    (up, gw)
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
    let (up, gw) = tls_gateway(dir.path(), dir.path()).await;
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
    let mtls = format!("{}client_ca = {ca:?}\n", tls_section(dir.path()));
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
    let (_up, private) = tls_gateway(dir.path(), dir.path()).await;
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

/// A renewed certificate is served without a restart and without a SIGHUP (the files are
/// watched): new connections get the new certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_certificate_is_served_without_a_signal() {
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

    // Renewal: a new CA and server certificate written over the same files, and no SIGHUP
    // (cert-manager renewing the Secret a sidecar mounts cannot send one).
    let renewed = tempdir();
    make_pki(renewed.path());
    for f in ["server.crt", "server.key"] {
        std::fs::copy(renewed.path().join(f), dir.path().join(f)).unwrap();
    }
    let new_client = client(renewed.path(), false);
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
    let log = gw.log();
    assert!(
        log.contains("a file the config reads changed: reloading"),
        "{log}"
    );
    assert!(!log.contains("take effect only after a restart"), "{log}");
    assert!(!log.contains("config reload refused"), "{log}");
    assert!(gw.terminate().success());
}

/// A child process in `dir`, killed and reaped on drop, that listens on `port` within 10 s.
fn spawn_listening(mut cmd: Command, dir: &Path, name: &str, port: u16) -> ChildGuard {
    let log_path = dir.join(format!("{name}.log"));
    let log = std::fs::File::create(&log_path).unwrap();
    let mut child = ChildGuard::new(
        cmd.stdout(std::process::Stdio::from(log.try_clone().unwrap()))
            .stderr(std::process::Stdio::from(log))
            .spawn()
            .unwrap_or_else(|e| panic!("{name} must be installed (scripts/deps.sh): {e}")),
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    // (A connection to itself, possible for a port nothing listens on yet, does not count.)
    let listening = || {
        std::net::TcpStream::connect(("127.0.0.1", port))
            .is_ok_and(|s| s.local_addr().ok() != s.peer_addr().ok())
    };
    while !listening() {
        let exited = child.get().try_wait().unwrap();
        assert!(
            exited.is_none() && std::time::Instant::now() < deadline,
            "{name} did not listen on {port} ({exited:?}); log:\n{}",
            std::fs::read_to_string(&log_path).unwrap_or_default()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child
}

/// The Redis store, a Redis Streams sink, NATS (`nats://` upgraded, `tls://` required), an
/// AMQP sink (`amqps://`) and an `https://` upstream, all behind certificates of private CAs:
/// with `SSL_CERT_FILE` naming those CAs every event is recorded and delivered over TLS, and
/// without it `check` names the certificate the store's Redis presented as untrusted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_outgoing_tls_connection_trusts_the_cas_in_ssl_cert_file() {
    let dir = tempdir();
    make_pki(dir.path());
    let p = |f: &str| dir.path().join(f).display().to_string();

    let redis_port = free_port();
    let mut redis = Command::new("redis-server");
    redis
        .args([
            "--port",
            "0",
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .args([
            "--tls-port",
            &redis_port.to_string(),
            "--tls-auth-clients",
            "no",
        ])
        .args([
            "--tls-cert-file",
            &p("server.crt"),
            "--tls-key-file",
            &p("server.key"),
        ])
        .args(["--tls-ca-cert-file", &p("ca.crt"), "--dir", &p("")]);
    let _redis = spawn_listening(redis, dir.path(), "redis-server", redis_port);

    let nats_port = free_port();
    let mut nats = Command::new("nats-server");
    nats.args([
        "-js",
        "-a",
        "127.0.0.1",
        "-p",
        &nats_port.to_string(),
        "-sd",
        &p("js"),
    ])
    .args([
        "--tls",
        "--tlscert",
        &p("server.crt"),
        "--tlskey",
        &p("server.key"),
    ]);
    let mut nats = spawn_listening(nats, dir.path(), "nats-server", nats_port);
    // Connected within 10 s, or the test fails with the server's log (a CI run once saw this
    // connection refused right after the port had answered).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let client = loop {
        match async_nats::ConnectOptions::new()
            .add_root_certificates(dir.path().join("ca.crt"))
            .connect(format!("tls://127.0.0.1:{nats_port}"))
            .await
        {
            Ok(c) => break c,
            Err(e) => assert!(
                std::time::Instant::now() < deadline,
                "cannot connect to nats-server on {nats_port} ({e}; exited: {:?}); log:\n{}",
                nats.get().try_wait(),
                std::fs::read_to_string(dir.path().join("nats-server.log")).unwrap_or_default()
            ),
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    async_nats::jetstream::new(client)
        .create_stream(async_nats::jetstream::stream::Config {
            name: "HOOKS".into(),
            subjects: vec!["hooks.>".into()],
            ..Default::default()
        })
        .await
        .unwrap();

    // The node of scripts/rabbitmq.sh has a TLS listener with a CA of its own.
    let amqps = std::env::var("HOOKGATE_TEST_AMQPS_URL").unwrap_or_else(|_| {
        panic!(
            "HOOKGATE_TEST_AMQPS_URL is not set: run `eval \"$(scripts/rabbitmq.sh start)\"` first"
        )
    });
    let amqp_ca = std::env::var("HOOKGATE_TEST_AMQPS_CA").unwrap();
    let queue = format!("tls-{}", std::process::id());
    {
        let plain = std::env::var("HOOKGATE_TEST_AMQP_URL").unwrap();
        let props = lapin::ConnectionProperties::default()
            .with_executor(tokio_executor_trait::Tokio::current())
            .with_reactor(tokio_reactor_trait::Tokio);
        let c = lapin::Connection::connect(&plain, props).await.unwrap();
        let ch = c.create_channel().await.unwrap();
        let q = lapin::options::QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        ch.queue_declare(&queue, q, Default::default())
            .await
            .unwrap();
    }

    // The https upstream: another hookgate terminating TLS with the private CA's certificate.
    let upstream_dir = tempdir();
    let (_up, private) = tls_gateway(dir.path(), upstream_dir.path()).await;

    let bundle = dir.path().join("cas.pem");
    let mut cas = std::fs::read(dir.path().join("ca.crt")).unwrap();
    cas.extend(std::fs::read(&amqp_ca).unwrap());
    std::fs::write(&bundle, cas).unwrap();

    let sink = |name: &str, forward: &str| {
        format!("\n[[route]]\nname = \"{name}\"\npath = \"/{name}\"\n[route.verify]\nscheme = \"hmac\"\nsecrets = [\"tls-secret\"]\n[route.forward]\nbackoff_initial = \"50ms\"\nbackoff_max = \"200ms\"\n{forward}\n")
    };
    let redis_url = format!("rediss://127.0.0.1:{redis_port}/0");
    let routes = [
        sink(
            "stream",
            &format!("url = \"{redis_url}\"\nstream = \"events\""),
        ),
        sink(
            "nats",
            &format!("url = \"nats://127.0.0.1:{nats_port}\"\nsubject = \"hooks.a\""),
        ),
        sink(
            "natstls",
            &format!("url = \"tls://127.0.0.1:{nats_port}\"\nsubject = \"hooks.b\""),
        ),
        sink(
            "amqp",
            &format!("url = \"{amqps}\"\nexchange = \"\"\nrouting_key = \"{queue}\""),
        ),
        sink(
            "https",
            &format!("url = \"https://127.0.0.1:{}/t\"", private.ingress.port()),
        ),
    ]
    .concat();
    let gw_dir = tempdir();
    let cfg = config(
        &Backend::Redis(redis_url.clone()),
        gw_dir.path(),
        "",
        &routes,
    );
    let cfg_path = gw_dir.path().join("hookgate.toml");
    write_config(&cfg_path, &cfg);

    // Without the CAs: the store's Redis is not trusted, and check says so.
    let out = Command::new(env!("CARGO_BIN_EXE_hookgate"))
        .args(["check", "-c"])
        .arg(&cfg_path)
        .env_remove("SSL_CERT_FILE")
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(
        said.contains("store.url: cannot reach Redis") && said.contains("UnknownIssuer"),
        "check names the untrusted certificate: {said}"
    );

    let gw = Gateway::start_with(&cfg_path, &[("SSL_CERT_FILE", bundle.to_str().unwrap())]);
    let http = reqwest::Client::new();
    for name in ["stream", "nats", "natstls", "amqp", "https"] {
        let id = accepted(signed(
            &http,
            &gw.url(&format!("/{name}")),
            "tls-secret",
            name,
        ))
        .await;
        let what = format!("{name} event {id} delivered over TLS");
        wait_until(std::time::Duration::from_secs(30), &what, async || {
            gw.admin_json(&format!("/admin/events/{id}")).await["state"] == "delivered"
        })
        .await;
    }
    // The https upstream (a hookgate) recorded what it was sent.
    let recorded = private.admin_json("/admin/events?route=t").await;
    assert_eq!(
        recorded["events"].as_array().map(Vec::len),
        Some(1),
        "{recorded}"
    );
}

/// A forward proxy that understands only `CONNECT host:port` and then relays bytes; returns its
/// address and the targets it was asked for.
async fn connect_proxy() -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::Mutex<Vec<String>>>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let log = log.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if client.read(&mut byte).await.unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(byte[0]);
                }
                let head = String::from_utf8_lossy(&head).to_string();
                let Some(target) = head
                    .strip_prefix("CONNECT ")
                    .and_then(|r| r.split(' ').next())
                else {
                    let _ = client.write_all(b"HTTP/1.1 405 CONNECT only\r\n\r\n").await;
                    return;
                };
                log.lock().unwrap().push(target.to_string());
                let Ok(mut upstream) = tokio::net::TcpStream::connect(target).await else {
                    let _ = client.write_all(b"HTTP/1.1 502 Bad Gateway\r\n\r\n").await;
                    return;
                };
                let _ = client
                    .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    .await;
                let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
            });
        }
    });
    (addr, seen)
}

/// With `HTTPS_PROXY` set, deliveries go through the proxy (`CONNECT`) and the upstream's
/// certificate is checked against the same CAs as without one, `SSL_CERT_FILE` included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_upstream_behind_a_proxy_trusts_the_ca_in_ssl_cert_file() {
    let dir = tempdir();
    make_pki(dir.path());
    let (_up, private) = tls_gateway(dir.path(), dir.path()).await;
    let (proxy, seen) = connect_proxy().await;
    let dir2 = tempdir();
    let target = format!("127.0.0.1:{}", private.ingress.port());
    let cfg_path = dir2.path().join("hookgate.toml");
    write_config(
        &cfg_path,
        &config(
            &Backend::Embedded,
            dir2.path(),
            "",
            &route(&format!("https://{target}/t")),
        ),
    );
    let ca = dir.path().join("ca.crt");
    let gw = Gateway::start_with(
        &cfg_path,
        &[
            ("HTTPS_PROXY", &format!("http://{proxy}")),
            ("NO_PROXY", ""),
            ("SSL_CERT_FILE", ca.to_str().unwrap()),
        ],
    );
    let id = accepted(signed(
        &reqwest::Client::new(),
        &gw.url("/t"),
        "tls-secret",
        "via proxy",
    ))
    .await;
    wait_until(
        std::time::Duration::from_secs(30),
        "delivered through the proxy",
        async || gw.admin_json(&format!("/admin/events/{id}")).await["state"] == "delivered",
    )
    .await;
    assert_eq!(*seen.lock().unwrap(), vec![target]);
    let recorded = private.admin_json("/admin/events?route=t").await;
    assert_eq!(
        recorded["events"].as_array().map(Vec::len),
        Some(1),
        "{recorded}"
    );
}
