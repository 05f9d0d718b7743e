//! `livetap check-config` with the real binary: a good config (exit 0, `config OK`, every
//! setting with its origin, secrets masked, no port bound), a config with several errors at
//! once (each with its line: the key the message names, else its table's header; exit 1), a syntax error, the JSON form, and errors from flags.

mod common;

use common::TOKEN;
use serde_json::Value;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Runs `livetap ARGS` (with `env`) to its end; `check-config` starts nothing, so it must end
/// by itself.
fn livetap(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_livetap"));
    c.args(args)
        .env_remove("LIVETAP_ADMIN_TOKEN")
        .env_remove("LIVETAP_WEBHOOK_KEY")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        c.env(k, v);
    }
    let mut child = c.spawn().unwrap();
    let deadline = Instant::now() + common::DEADLINE;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("livetap {args:?} did not exit by itself");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

fn text(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The line of `key` in the text report's settings.
fn setting_line<'a>(out: &'a str, key: &str) -> &'a str {
    out.lines()
        .find(|l| l.trim_start().starts_with(&format!("{key} ")))
        .unwrap_or_else(|| panic!("no `{key}` setting in:\n{out}"))
}

const GOOD: &str = r#"# livetap test config
listen = "127.0.0.1:7071"
webhook-key = "stalwart-signing-secret"
ring-capacity = 2048

[[principal]]
name = "ops"
api-key = "ops-api-key-0123456789"
permissions = ["tracing-live", "history"]

[[principal]]
name = "dash"
password-hash = "$argon2id$v=19$m=19456,t=2,p=1$T2pVvG2GD9NmFg9lpPbrQw$iT7EzJqo7Q7/hJV1T7E1iIgq2nFCPfIiYcOj00Nh8PQ"
permissions = ["metrics-live"]
"#;

#[test]
fn a_good_config_is_ok_with_each_setting_origin_and_secrets_masked() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("livetap.toml");
    std::fs::write(&path, GOOD).unwrap();
    // A port held here: check-config must not try to bind the address it is given.
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let listen = held.local_addr().unwrap().to_string();
    let data = dir.path().join("data");
    let o = livetap(
        &[
            "--listen",
            &listen,
            "--data-dir",
            data.to_str().unwrap(),
            "check-config",
            "--config",
            path.to_str().unwrap(),
        ],
        &[("LIVETAP_ADMIN_TOKEN", "admin-token-from-the-environment")],
    );
    let out = text(&o);
    assert!(o.status.success(), "{out}\n{}", String::from_utf8_lossy(&o.stderr));
    assert!(out.contains("config OK"), "{out}");
    assert!(
        setting_line(&out, "listen").contains(&listen) && setting_line(&out, "listen").ends_with("# flag"),
        "{out}"
    );
    assert!(setting_line(&out, "ring-capacity").ends_with("# file:4"), "{out}");
    assert!(setting_line(&out, "subscriber-queue").ends_with("# default"), "{out}");
    assert!(setting_line(&out, "admin-token").ends_with("# env"), "{out}");
    assert!(setting_line(&out, "webhook-key").ends_with("# file:3"), "{out}");
    assert!(setting_line(&out, "principal[0]").ends_with("# file:6"), "{out}");
    assert!(setting_line(&out, "principal[1]").ends_with("# file:11"), "{out}");
    // Secrets never appear; the names beside them do.
    for secret in ["admin-token-from-the-environment", "stalwart-signing-secret", "ops-api-key", "argon2id"] {
        assert!(!out.contains(secret), "`{secret}` shown:\n{out}");
    }
    assert!(setting_line(&out, "principal[0]").contains("name = \"ops\""), "{out}");
    assert!(out.contains("will be created in format"), "{out}");
    // Nothing was created or bound.
    assert!(!data.exists(), "check-config created the data directory");
    drop(held);
}

#[test]
fn every_error_is_reported_with_its_line_and_the_exit_status_is_1() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "ring-capacity = 1\n\
         no-such-setting = true\n\
         ping-interval-secs = \"often\"\n\
         \n\
         [[principal]]\n\
         name = \"ops\"\n\
         api-key = \"short\"\n\
         permissions = [\"tracing-live\"]\n\
         \n\
         [[principal]]\n\
         name = \"dash\"\n\
         api-key = \"dash-api-key-0123456789\"\n\
         permissions = [\"flying\"]\n\
         \n\
         [[alert]]\n\
         name = \"queue\"\n\
         condition = \"no.such.metric > 10\"\n",
    )
    .unwrap();
    let p = path.to_str().unwrap();
    let o = livetap(&["check-config", "--config", p], &[]);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    let errors: Vec<&str> = out.lines().filter(|l| l.starts_with("error: ")).collect();
    for (line, key, says) in [
        (1, "ring-capacity", "must be between"),
        (2, "no-such-setting", "unknown field"),
        (3, "ping-interval-secs", "invalid type"),
        (7, "principal[0]", "api-key must be at least 16"),
        (10, "principal[1]", "unknown permission `flying`"),
        (17, "alert[0]", "unknown metric `no.such.metric`"),
    ] {
        let want = format!("error: {p}:{line}: {key}: ");
        assert!(
            errors.iter().any(|e| e.starts_with(&want) && e.contains(says)),
            "no `{want}…{says}` in:\n{out}"
        );
    }
    assert_eq!(errors.len(), 6, "{out}");
    assert!(out.contains("config has 6 errors"), "{out}");

    // The same, for scripts.
    let o = livetap(&["check-config", "--json", "--config", p], &[]);
    assert_eq!(o.status.code(), Some(1));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["ok"], false);
    let lines: Vec<u64> =
        v["errors"].as_array().unwrap().iter().map(|e| e["line"].as_u64().unwrap()).collect();
    assert_eq!(lines, [1, 2, 3, 7, 10, 17], "{v}");
    assert!(v["errors"].as_array().unwrap().iter().all(|e| e["file"] == p));

    // The server refuses the same file, at its first error.
    let o = livetap(&["--config", p, "--admin-token", TOKEN, "--listen", "127.0.0.1:0"], &[]);
    assert!(!o.status.success());
}

#[test]
fn a_syntax_error_is_one_error_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broken.toml");
    std::fs::write(&path, "listen = \"127.0.0.1:7070\"\n\n[tls\ncert = \"x\"\n").unwrap();
    let p = path.to_str().unwrap();
    let o = livetap(&["check-config", "-c", p], &[]);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    let errors: Vec<&str> = out.lines().filter(|l| l.starts_with("error: ")).collect();
    assert_eq!(errors.len(), 1, "{out}");
    assert!(errors[0].starts_with(&format!("error: {p}:3: config: TOML syntax")), "{out}");
}

#[test]
fn flags_are_checked_too_and_json_lists_origins() {
    // No file: defaults and flags. A bad flag is an error named after it.
    let o = livetap(&["--ring-capacity", "1", "check-config"], &[]);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(out.contains("error: ring-capacity (from a flag): must be between"), "{out}");

    let o = livetap(&["--demo", "--postfix-log", "/var/log/mail.log", "check-config", "--json"], &[]);
    assert!(o.status.success(), "{}", text(&o));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["ok"], true);
    let settings = v["settings"].as_array().unwrap();
    let find = |k: &str| settings.iter().find(|s| s["key"] == k).unwrap_or_else(|| panic!("no {k}: {v}"));
    assert_eq!(find("demo")["origin"], "flag");
    assert_eq!(find("demo")["value"], "true");
    assert_eq!(find("listen")["origin"], "default");
    assert_eq!(find("listen")["value"], "\"127.0.0.1:7070\"");
    assert_eq!(find("source[0]")["origin"], "flag");
    assert!(find("source[0]")["value"].as_str().unwrap().contains("/var/log/mail.log"));
    assert_eq!(find("history")["origin"], "default");
}
