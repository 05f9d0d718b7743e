//! The `livetap hash-password` subcommand: reads a password from standard input and prints an
//! Argon2 PHC hash that livetap accepts as a principal's `password-hash`.

use std::io::Write;
use std::process::{Command, Stdio};

#[test]
fn hash_password_prints_a_usable_argon2_hash() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_livetap"))
        .arg("hash-password")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run livetap");
    child.stdin.take().unwrap().write_all(b"correct horse battery\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let hash = String::from_utf8(out.stdout).unwrap();
    let hash = hash.trim();
    assert!(hash.starts_with("$argon2id$"), "{hash}");
    assert!(livetap::auth::password::check_hash(hash).is_ok());
    assert!(livetap::auth::password::verify_blocking(hash, "correct horse battery"));
    assert!(!livetap::auth::password::verify_blocking(hash, "correct horse battery\n"));

    // An empty password is refused.
    let mut child = Command::new(env!("CARGO_BIN_EXE_livetap"))
        .arg("hash-password")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
}
