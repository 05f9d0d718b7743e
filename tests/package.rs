//! The Debian package on this machine: `dpkg -i` (files, modes, the conffile, the manual pages
//! and completions, the `livetap` system user and its data directory), the installed binary
//! run as that user with the packaged config (no systemd) answering `/healthz`, an upgrade
//! that keeps an edited conffile, `systemd-analyze verify` and `security` on the installed
//! unit, then `dpkg -r` (data, config and user stay) and `dpkg -P` (all gone).
//!
//! It installs a package system-wide, so it runs only with `LIVETAP_PACKAGE_TEST=1` (set by
//! `.ci/run` after `packaging/build-deb.sh`, with the package's path in `LIVETAP_DEB`), as
//! root. With `CI` set, anything missing is a failure.

mod common;

use common::*;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Runs `cmd` with `args`, asserting success, and returns its stdout.
fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd).args(args).output().unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// True when `cmd args` succeeds (its output is discarded).
fn succeeds(cmd: &str, args: &[&str]) -> bool {
    Command::new(cmd)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The `.deb` to install: `$LIVETAP_DEB`, or built now with `packaging/build-deb.sh`.
fn deb_path() -> PathBuf {
    if let Some(p) = std::env::var_os("LIVETAP_DEB") {
        return PathBuf::from(p);
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/build-deb.sh");
    let out = Command::new(&script).stderr(Stdio::inherit()).output().expect("run packaging/build-deb.sh");
    assert!(out.status.success(), "build-deb.sh failed");
    let stdout = String::from_utf8(out.stdout).unwrap();
    let last = stdout.lines().rev().find(|l| l.trim_end().ends_with(".deb")).expect("no .deb path printed");
    PathBuf::from(last.trim())
}

/// Owner name, group name and permission bits of `path`.
fn owner_mode(path: &str) -> (String, String, u32) {
    let meta = std::fs::metadata(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let user = run("getent", &["passwd", &meta.uid().to_string()]);
    let group = run("getent", &["group", &meta.gid().to_string()]);
    let name = |entry: &str| entry.split(':').next().unwrap_or("").to_string();
    (name(&user), name(&group), meta.permissions().mode() & 0o7777)
}

/// The installed binary, as the livetap user, with the packaged config (listening on a free
/// loopback port instead of 7070): it starts, answers `/healthz`, writes its token into the
/// data directory, and stops cleanly at SIGTERM.
async fn run_installed_as_livetap() {
    // What RuntimeDirectory=livetap does under systemd: the NDJSON socket's directory.
    std::fs::create_dir_all("/run/livetap").unwrap();
    run("chown", &["livetap:livetap", "/run/livetap"]);
    run("chmod", &["0750", "/run/livetap"]);
    // setpriv execs livetap itself as the user (runuser would stay in between as a parent).
    let mut child = Command::new("setpriv")
        .args(["--reuid=livetap", "--regid=livetap", "--init-groups", "--"])
        .args(["/usr/bin/livetap", "--config", "/etc/livetap/livetap.toml"])
        .args(["--listen", "127.0.0.1:0"])
        .env_remove("LIVETAP_ADMIN_TOKEN")
        .env_remove("RUST_LOG")
        .env_remove("JOURNAL_STREAM")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("runuser");
    let out = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if let Some(rest) = line.split("listening on http://").nth(1) {
                let _ = tx.send(rest.trim().to_string());
            }
        }
    });
    let mut err = child.stderr.take().unwrap();
    let err_text = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let addr: SocketAddr = match rx.recv_timeout(DEADLINE) {
        Ok(a) => a.parse().unwrap(),
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the installed livetap did not start: {}", err_text.join().unwrap());
        }
    };
    let health = request(addr, "GET", "/healthz", &[], b"").await;
    // SAFETY: signalling our own child (livetap, after setpriv's exec).
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let deadline = Instant::now() + DEADLINE;
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the installed livetap did not stop at SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stderr = err_text.join().unwrap();
    assert_eq!(health.status, 200, "{stderr}");
    assert!(status.success(), "exit {status:?}: {stderr}");
    assert!(stderr.contains("livetap started"), "no start-up line: {stderr}");
    assert!(stderr.contains("ndjson_socket=/run/livetap/ingest.sock"), "{stderr}");
    // The data directory is the user's: it kept the generated admin token there, 0600.
    assert_eq!(owner_mode("/var/lib/livetap/admin-token"), ("livetap".into(), "livetap".into(), 0o600));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debian_package_installs_runs_upgrades_removes_and_purges() {
    let ci = std::env::var_os("CI").is_some();
    if std::env::var("LIVETAP_PACKAGE_TEST").as_deref() != Ok("1") {
        assert!(!ci, "CI must run the package test: set LIVETAP_PACKAGE_TEST=1 (.ci/run does)");
        eprintln!(
            "package test not run: it installs a package system-wide; set LIVETAP_PACKAGE_TEST=1 as root"
        );
        return;
    }
    // SAFETY: `geteuid` has no preconditions.
    assert_eq!(unsafe { libc::geteuid() }, 0, "the package test installs with dpkg: run it as root");
    for tool in ["dpkg", "dpkg-query", "setpriv", "getent", "systemd-analyze"] {
        assert!(succeeds("sh", &["-c", &format!("command -v {tool}")]), "{tool} is missing");
    }
    let deb = deb_path();
    let deb = deb.to_str().unwrap();
    // A leftover from an interrupted run.
    if succeeds("dpkg-query", &["-W", "livetap"]) {
        run("dpkg", &["-P", "livetap"]);
    }

    // Install.
    run("dpkg", &["-i", deb]);
    assert!(run("dpkg-query", &["-W", "-f", "${Status}", "livetap"]).contains("install ok installed"));
    assert_eq!(owner_mode("/usr/bin/livetap"), ("root".into(), "root".into(), 0o755));
    assert_eq!(owner_mode("/lib/systemd/system/livetap.service").2, 0o644);
    // The package carries the manual pages; a minimal image may tell dpkg not to install any
    // (`path-exclude=/usr/share/man/*` in /etc/dpkg/dpkg.cfg.d/), and then only the package's
    // contents can be checked.
    let contents = run("dpkg-deb", &["-c", deb]);
    let man_excluded = std::fs::read_dir("/etc/dpkg/dpkg.cfg.d")
        .into_iter()
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok())
        .any(|t| t.lines().any(|l| l.trim().starts_with("path-exclude") && l.contains("/usr/share/man")));
    for page in ["livetap.1.gz", "livetap-history.1.gz", "livetap-history-traces.1.gz"] {
        assert!(contents.contains(&format!("./usr/share/man/man1/{page}")), "{page} is not in the package");
        let installed = Path::new("/usr/share/man/man1").join(page);
        assert!(man_excluded || installed.is_file(), "{} is not installed", installed.display());
    }
    for f in [
        "/usr/share/bash-completion/completions/livetap",
        "/usr/share/zsh/vendor-completions/_livetap",
        "/usr/share/fish/vendor_completions.d/livetap.fish",
    ] {
        assert!(Path::new(f).is_file(), "{f} is not installed");
    }
    let conffiles = run("dpkg-query", &["--control-show", "livetap", "conffiles"]);
    assert!(conffiles.lines().any(|l| l.trim() == "/etc/livetap/livetap.toml"), "conffiles: {conffiles:?}");
    // The config may hold secrets: readable by root and the livetap group only.
    assert_eq!(owner_mode("/etc/livetap"), ("root".into(), "livetap".into(), 0o750));
    assert_eq!(owner_mode("/etc/livetap/livetap.toml"), ("root".into(), "livetap".into(), 0o640));
    // A system user without a login.
    let user = run("getent", &["passwd", "livetap"]);
    let fields: Vec<&str> = user.trim().split(':').collect();
    let uid: u32 = fields[2].parse().unwrap();
    let login_defs = std::fs::read_to_string("/etc/login.defs").unwrap_or_default();
    let uid_min = login_defs
        .lines()
        .find_map(|l| l.strip_prefix("UID_MIN").map(|v| v.trim().parse::<u32>().unwrap_or(1000)))
        .unwrap_or(1000);
    assert!(uid > 0 && uid < uid_min, "livetap is not a system user: {user}");
    assert!(
        fields[6].ends_with("nologin") || fields[6].ends_with("false"),
        "livetap has a login shell: {user}"
    );
    assert_eq!(fields[5], "/var/lib/livetap");
    assert_eq!(owner_mode("/var/lib/livetap"), ("livetap".into(), "livetap".into(), 0o750));
    // Enabled (deb-systemd-helper works without a running systemd).
    let wants = "/etc/systemd/system/multi-user.target.wants/livetap.service";
    assert!(std::fs::symlink_metadata(wants).is_ok(), "the unit is not enabled");

    // The unit, against the installed binary and manual page.
    let verify = Command::new("systemd-analyze")
        .args(["verify", "/lib/systemd/system/livetap.service"])
        .output()
        .unwrap();
    let said =
        format!("{}{}", String::from_utf8_lossy(&verify.stdout), String::from_utf8_lossy(&verify.stderr));
    let man_found = succeeds("man", &["-w", "livetap"]);
    if man_found {
        assert!(verify.status.success() && said.trim().is_empty(), "systemd-analyze verify: {said}");
    } else {
        // Without man-db the Documentation= check fails; everything else must pass.
        let verify = Command::new("systemd-analyze")
            .args(["verify", "--man=no", "/lib/systemd/system/livetap.service"])
            .output()
            .unwrap();
        assert!(
            verify.status.success(),
            "systemd-analyze verify: {}",
            String::from_utf8_lossy(&verify.stderr)
        );
    }
    let security = run(
        "systemd-analyze",
        &["security", "--offline=true", "--no-pager", "/lib/systemd/system/livetap.service"],
    );
    let line = security.lines().find(|l| l.contains("Overall exposure level")).expect("no exposure line");
    let score: f64 =
        line.split(": ").nth(1).and_then(|v| v.split_whitespace().next()).unwrap().parse().unwrap();
    assert!(score <= 2.0, "{line}");

    // Run it as the livetap user, without systemd.
    run_installed_as_livetap().await;

    // Upgrade (the same package again: dpkg runs the upgrade path, postinst with the old
    // version) keeps the admin's edit of the conffile and the data.
    let conf = "/etc/livetap/livetap.toml";
    let edited = format!("{}\n# edited by the admin\n", std::fs::read_to_string(conf).unwrap());
    std::fs::write(conf, &edited).unwrap();
    run("dpkg", &["-i", deb]);
    assert_eq!(std::fs::read_to_string(conf).unwrap(), edited, "the upgrade replaced the edited conffile");
    assert_eq!(owner_mode(conf), ("root".into(), "livetap".into(), 0o640));
    assert!(Path::new("/var/lib/livetap/admin-token").exists(), "the upgrade lost the data");

    // Remove: the program goes; the data, the config and the user stay.
    run("dpkg", &["-r", "livetap"]);
    assert!(!Path::new("/usr/bin/livetap").exists());
    assert!(!Path::new("/lib/systemd/system/livetap.service").exists());
    assert!(run("dpkg-query", &["-W", "-f", "${Status}", "livetap"]).contains("config-files"));
    assert!(Path::new("/var/lib/livetap/admin-token").exists(), "remove deleted the data");
    assert_eq!(std::fs::read_to_string(conf).unwrap(), edited, "remove deleted the conffile");
    assert!(succeeds("getent", &["passwd", "livetap"]), "remove deleted the user");

    // Purge: nothing is left.
    run("dpkg", &["-P", "livetap"]);
    assert!(!succeeds("dpkg-query", &["-W", "livetap"]), "dpkg still knows livetap");
    for gone in ["/etc/livetap", "/var/lib/livetap", "/run/livetap"] {
        assert!(!Path::new(gone).exists(), "{gone} is left after purge");
    }
    assert!(std::fs::symlink_metadata(wants).is_err(), "the unit is still enabled after purge");
    assert!(!succeeds("getent", &["passwd", "livetap"]), "the user is left after purge");
    assert!(!succeeds("getent", &["group", "livetap"]), "the group is left after purge");
}
