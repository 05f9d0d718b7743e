//! The `livetap hash-password` subcommand: reads a password from standard input and prints an
//! Argon2 PHC hash that livetap accepts as a principal's `password-hash`.

use std::io::Write;
use std::process::{Command, Stdio};

/// Runs `livetap hash-password` with `input` on standard input.
fn hash_password(input: &[u8]) -> std::process::Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_livetap"))
        .arg("hash-password")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run livetap");
    child.stdin.take().unwrap().write_all(input).unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn hash_password_prints_a_usable_argon2_hash() {
    let out = hash_password(b"correct horse battery\n");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let hash = String::from_utf8(out.stdout).unwrap();
    let hash = hash.trim();
    assert!(hash.starts_with("$argon2id$"), "{hash}");
    assert!(livetap::auth::password::check_hash(hash).is_ok());
    assert!(livetap::auth::password::verify_blocking(hash, "correct horse battery"));
    assert!(!livetap::auth::password::verify_blocking(hash, "correct horse battery\n"));

    // An empty password is refused.
    let out = hash_password(b"\n");
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
}
