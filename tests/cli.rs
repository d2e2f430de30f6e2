//! The command line (SPEC §2): `check` exit codes and messages, `serve` refusing bad configs.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

fn hookgate(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_hookgate"))
        .args(args)
        .env_remove("HOOKGATE_CONFIG")
        .env_remove("HOOKGATE_ADMIN_TOKEN")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[test]
fn check_accepts_the_example_config_with_a_warning_for_its_literal_secret() {
    let (code, out, err) = hookgate(&["check", "-c", "config/hookgate.toml"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("ok"));
    assert!(
        err.contains("warning: route[0].verify.secrets[0]: secret is a literal"),
        "{err}"
    );
}

#[test]
fn check_prints_one_line_per_problem_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bad.toml");
    std::fs::write(
        &p,
        "[[route]]\nname = \"orders\"\npath = \"/o\"\n[route.verify]\nscheme = \"hmac\"\nsecrets = [\"env:ORDERS_SECRET_UNSET_FOR_TEST\"]\n[route.forward]\nurl = \"http://x\"\ntimeout = \"10 parsecs\"\n",
    )
    .unwrap();
    let (code, out, _) = hookgate(&["check", "-c", p.to_str().unwrap()]);
    assert_eq!(code, 1);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines,
        vec![
            "route[0].verify.secrets[0]: environment variable ORDERS_SECRET_UNSET_FOR_TEST is not set",
            "route[0].forward.timeout: invalid duration \"10 parsecs\": unknown time unit \"parsecs\", supported units: ns, us/µs, ms, sec, min, hours, days, weeks, months, years (and few variations)",
        ]
    );
}

#[test]
fn check_warns_when_store_min_free_space_would_refuse_every_event() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("reserve.toml");
    let data = dir.path().join("data-not-created-yet");
    std::fs::write(
        &p,
        format!("[store]\npath = {data:?}\nmin_free_space = \"1000000GiB\"\n[[route]]\nname = \"o\"\npath = \"/o\"\n[route.verify]\nscheme = \"none\"\n[route.forward]\nurl = \"http://127.0.0.1:9/x\"\n"),
    )
    .unwrap();
    let (code, out, err) = hookgate(&["check", "-c", p.to_str().unwrap()]);
    assert_eq!(code, 0, "a warning, not an error: {out}{err}");
    assert!(
        err.contains("warning: store.min_free_space: 1024000000 MiB is at least the size of the filesystem under"),
        "{err}"
    );
    assert!(!data.exists(), "check creates nothing");
}

#[test]
fn check_reports_a_missing_file_and_serve_refuses_a_bad_config() {
    let (code, out, _) = hookgate(&["check", "-c", "/nonexistent/hookgate.toml"]);
    assert_eq!(code, 1);
    assert!(
        out.contains("/nonexistent/hookgate.toml: cannot read config"),
        "{out}"
    );
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bad.toml");
    std::fs::write(&p, "[server]\nlisten = \"nowhere\"\n").unwrap();
    let (code, _, err) = hookgate(&["serve", "-c", p.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(
        err.contains("refusing to start") && err.contains("server.listen: invalid address"),
        "{err}"
    );
}

/// A `store.path` that cannot hold the store is a problem for `check` (it said "ok") and the
/// same words from `serve` (it said "cannot create …: File exists").
#[test]
fn check_and_serve_name_a_store_path_that_is_not_a_directory() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, "").unwrap();
    let dangling = dir.path().join("a-link");
    std::os::unix::fs::symlink(dir.path().join("nothing-here"), &dangling).unwrap();
    let route = "[[route]]\nname = \"o\"\npath = \"/o\"\n[route.verify]\nscheme = \"none\"\n[route.forward]\nurl = \"http://127.0.0.1:9/x\"\n";
    for (name, path, named) in [
        ("file.toml", file.clone(), &file),
        ("under.toml", file.join("data"), &file),
        ("link.toml", dangling.clone(), &dangling),
    ] {
        let p = write_config(
            &dir,
            name,
            &format!("[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n[store]\npath = {path:?}\n{route}"),
        );
        let want = format!("store.path: {} is not a directory", named.display());
        let (code, out, err) = hookgate(&["check", "-c", &p]);
        assert_eq!(code, 1, "{out}{err}");
        assert!(out.contains(&want), "{out}");
        let (code, _, err) = hookgate(&["serve", "-c", &p]);
        assert_eq!(code, 1);
        assert!(err.contains(&want), "{err}");
    }
}

fn write_config(dir: &tempfile::TempDir, name: &str, text: &str) -> String {
    let p = dir.path().join(name);
    std::fs::write(&p, text).unwrap();
    p.to_str().unwrap().to_string()
}

#[test]
fn a_mistyped_secret_is_named_by_its_key_and_never_printed() {
    let dir = tempfile::tempdir().unwrap();
    for (text, expected) in [
        (
            "[[route]]\nname = \"o\"\npath = \"/o\"\n[route.verify]\nscheme = \"hmac\"\nsecrets = \"hunter2\"\n[route.forward]\nurl = \"http://127.0.0.1:9/\"\n",
            "route[0].verify.secrets: invalid type: string (value not shown), expected a sequence",
        ),
        (
            "[[route]]\nname = \"o\"\npath = \"/o\"\n[route.verify]\nscheme = \"hmac\"\nsecrets = [\"ok\", 4242hunter2]\n",
            "config: invalid array: expected `]` (line 6)\n",
        ),
        (
            "[[route]]\nname = \"o\"\npath = \"/o\"\n[route.verify]\nscheme = \"hmac\"\nsecrets = [\"ok\", 4242]\n[route.forward]\nurl = \"http://127.0.0.1:9/\"\n",
            "route[0].verify.secrets[1]: invalid type: integer (value not shown), expected a string",
        ),
        (
            "[server]\nadmin_token = 4242\n",
            "server.admin_token: invalid type: integer (value not shown), expected a string",
        ),
        (
            "[[route]]\nname = \"o\"\npath = \"/o\"\n[route.verify]\nscheme = \"meta\"\nsecrets = [\"a\"]\nverify_token = 4242\n",
            "route[0].verify.verify_token: invalid type: integer (value not shown), expected a string",
        ),
        (
            "[[route]]\nname = \"o\"\npath = \"/o\"\n[route.verify]\nscheme = \"none\"\n[route.forward]\nurl = \"http://127.0.0.1:9/\"\nsign = { scheme = \"hmac\", secret = [\"hunter2\"] }\n",
            "route[0].forward.sign.secret: invalid type: sequence (value not shown), expected a string",
        ),
    ] {
        let p = write_config(&dir, "secret.toml", text);
        let (code, out, err) = hookgate(&["check", "-c", &p]);
        assert_eq!(code, 1, "{out}{err}");
        assert!(out.contains(expected), "missing {expected:?} in:\n{out}");
        let (code, _, err) = hookgate(&["serve", "-c", &p]);
        assert_eq!(code, 1);
        let (_, _, events) = hookgate(&["events", "-c", &p, "list"]);
        for printed in [&out, &err, &events] {
            assert!(
                !printed.contains("hunter2") && !printed.contains("4242"),
                "{printed}"
            );
        }
    }
}

#[test]
fn events_token_is_used_without_resolving_the_configs_admin_token() {
    let dir = tempfile::tempdir().unwrap();
    // Nothing listens on port 1: with the token settled, the command fails reaching the API.
    let p = write_config(
        &dir,
        "admin.toml",
        "[server]\nadmin_listen = \"127.0.0.1:1\"\nadmin_token = \"env:HOOKGATE_TEST_ADMIN_TOKEN_UNSET\"\n",
    );
    let (code, _, err) = hookgate(&["events", "-c", &p, "--token", "t0ken", "list"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("cannot reach the admin API at http://127.0.0.1:1"),
        "{err}"
    );
    let (code, _, err) = hookgate(&["events", "-c", &p, "list"]);
    assert_eq!(code, 1);
    assert!(
        err.contains(
            "server.admin_token: environment variable HOOKGATE_TEST_ADMIN_TOKEN_UNSET is not set"
        ),
        "{err}"
    );
}

#[test]
fn sign_prints_a_curl_with_https_under_tls_and_the_routes_method() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-days",
            "2",
            "-keyout",
            "key.pem",
            "-out",
            "cert.pem",
        ])
        .current_dir(dir.path())
        .output()
        .expect("openssl installed");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let route = "[[route]]\nname = \"put\"\npath = \"/put\"\nmethods = [\"PUT\", \"POST\"]\n\
                 [route.verify]\nscheme = \"hmac\"\nsecrets = [\"s\"]\n\
                 [route.forward]\nurl = \"http://127.0.0.1:9/\"\n";
    let tls = format!(
        "[server]\nlisten = \"0.0.0.0:8443\"\n[server.tls]\ncert = {:?}\nkey = {:?}\n{route}",
        dir.path().join("cert.pem"),
        dir.path().join("key.pem"),
    );
    let p = write_config(&dir, "tls.toml", &tls);
    let (code, out, err) = hookgate(&["sign", "-c", &p, "--route", "put"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("curl -sS -X PUT 'https://127.0.0.1:8443/put' -H 'x-signature: "),
        "{out}"
    );
    let plain = write_config(
        &dir,
        "plain.toml",
        &format!("[server]\nlisten = \"127.0.0.1:8080\"\n{route}"),
    );
    let (code, out, err) = hookgate(&["sign", "-c", &plain, "--route", "put"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("curl -sS -X PUT 'http://127.0.0.1:8080/put'"),
        "{out}"
    );
}

#[test]
fn output_cut_short_by_its_reader_ends_quietly() {
    use std::io::{Read, Write};
    use std::process::Stdio;
    let dir = tempfile::tempdir().unwrap();
    let p = write_config(
        &dir,
        "c.toml",
        "[[route]]\nname = \"r\"\npath = \"/r\"\n[route.verify]\nscheme = \"hmac\"\nsecrets = [\"s\"]\n\
         [route.forward]\nurl = \"http://127.0.0.1:9/\"\n",
    );
    // `hookgate sign … --body - | head -c 10`: a 1 MiB body comes back inline in the curl
    // line, far more than a pipe holds, and the reader leaves after 10 bytes.
    let mut child = Command::new(env!("CARGO_BIN_EXE_hookgate"))
        .args(["sign", "-c", &p, "--route", "r", "--body", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || stdin.write_all(&vec![b'a'; 1 << 20]));
    let mut first = [0u8; 10];
    child.stdout.take().unwrap().read_exact(&mut first).unwrap();
    writer.join().unwrap().unwrap();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?}: {err}", out.status);
    assert!(!err.contains("panicked"), "{err}");
}

/// `-c` is taken before or after the `events` subcommand (`events list -c FILE` was refused
/// as an unexpected argument); either way the config is read.
#[test]
fn events_take_the_config_before_or_after_the_subcommand() {
    for args in [
        [
            "events",
            "-c",
            "config/hookgate.toml",
            "list",
            "--admin",
            "http://127.0.0.1:9",
        ],
        [
            "events",
            "list",
            "-c",
            "config/hookgate.toml",
            "--admin",
            "http://127.0.0.1:9",
        ],
    ] {
        let (code, out, err) = hookgate(&args);
        assert_eq!(code, 1, "{args:?}: {out}{err}");
        assert!(
            err.contains("cannot reach the admin API at http://127.0.0.1:9"),
            "{args:?}: {err}"
        );
    }
    // Without --admin the config is read for it: a missing file is named, in either place.
    for args in [
        ["events", "-c", "no/such.toml", "list"],
        ["events", "list", "-c", "no/such.toml"],
    ] {
        let (code, _, err) = hookgate(&args);
        assert_eq!(code, 1, "{args:?}: {err}");
        assert!(err.contains("no/such.toml"), "{args:?}: {err}");
    }
}
