//! The data directory's format across versions, with the real binary: a directory in the
//! previous (unversioned) format, made by running livetap and removing its stamp, is migrated
//! in place (its history, its event ids and a webhook spool's backlog survive); a second
//! livetap on it is refused while the first runs; and a directory stamped by a simulated newer
//! livetap is refused with a clear message and exit status 78, untouched. `Server::start` (the
//! library's way in) opens, stamps and locks the directory the same way.

mod common;

use common::*;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use livetap::store::datadir::{self, FORMAT, LOCK_FILE, STAMP_FILE};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A webhook receiver answering 200 to every POST and keeping the events it got.
async fn receiver() -> (SocketAddr, Arc<Mutex<Vec<Value>>>) {
    let got = Arc::new(Mutex::new(Vec::new()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let keep = got.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let keep = keep.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let keep = keep.clone();
                    async move {
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                        if let Some(events) = v["events"].as_array() {
                            keep.lock().unwrap().extend(events.iter().cloned());
                        }
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(
                            Full::new(bytes::Bytes::new()),
                        ))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, got)
}

/// Writes the config: history in `data`, one webhook for `auth.failed` sent to `to`.
fn write_config(path: &Path, data: &Path, to: SocketAddr) {
    std::fs::write(
        path,
        format!(
            "data-dir = \"{}\"\n\n[[webhook]]\nname = \"ops\"\nurl = \"http://{to}/hook\"\n\
             query = \"event=auth.failed\"\nmax-delay-ms = 50\nretry-initial-ms = 50\nretry-max-secs = 1\n",
            data.display()
        ),
    )
    .unwrap();
}

async fn prometheus_value(addr: SocketAddr, part: &str) -> Option<f64> {
    let text = request_auth(addr, "GET", "/metrics", b"").await.text();
    text.lines()
        .filter(|l| !l.starts_with('#') && l.contains(part))
        .find_map(|l| l.rsplit(' ').next()?.parse().ok())
}

/// Every file under `dir` with its contents, sorted.
fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push((p.clone(), std::fs::read(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

/// Runs the binary to its end (it must end by itself within the deadline).
fn run_to_end(args: &[&str]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_livetap"))
        .args(args)
        .env_remove("LIVETAP_ADMIN_TOKEN")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + DEADLINE;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("livetap {args:?} did not exit by itself");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn span_event(queue: u64) -> Value {
    json!({"type": "queue.queue-message", "data": {"spanId": queue, "queueId": queue, "domain": "example.org"}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_previous_format_directory_is_migrated_and_a_newer_one_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let config = tmp.path().join("livetap.toml");
    let cfg = config.to_str().unwrap();
    // A receiver that is not there yet: the webhook's batches stay in its spool.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    write_config(&config, &data, dead);

    // Run 1: today's code makes the directory, its history, lease and spool.
    let mut lt = Livetap::start(&["--config", cfg]);
    ingest_ok(lt.addr, &[span_event(100), span_event(101), span_event(102)]).await;
    let failed: Vec<Value> = (0..5)
        .map(|i| json!({"type": "auth.failed", "data": {"accountName": format!("u{i}"), "remoteIp": "192.0.2.7"}}))
        .collect();
    let answer = ingest_ok(lt.addr, &failed).await;
    let old_last = answer["lastId"].as_u64().expect("lastId");
    let stored = traces_until(lt.addr, "", |v| v["data"]["total"] == 3).await;
    assert_eq!(stored["data"]["total"], 3, "{stored}");
    let deadline = Instant::now() + DEADLINE;
    while prometheus_value(lt.addr, "webhook_ops_spooled_events").await != Some(5.0) {
        assert!(Instant::now() < deadline, "the spool did not reach 5 events; stderr: {}", lt.stderr());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    lt.sigterm();
    assert!(lt.wait_exit().await.success(), "{}", lt.stderr());
    assert!(lt.stderr().contains("created data directory"), "{}", lt.stderr());
    assert_eq!(datadir::read_stamp(&data).unwrap().map(|s| s.format), Some(FORMAT));

    // The previous format: the same files without the stamp (and the lock it came with).
    std::fs::remove_file(data.join(STAMP_FILE)).unwrap();
    std::fs::remove_file(data.join(LOCK_FILE)).unwrap();
    assert_eq!(datadir::inspect(&data).unwrap(), Some(0));
    assert!(data.join("history.sqlite3").exists() && data.join("sequence").exists());
    assert!(data.join("webhooks/ops").read_dir().unwrap().next().is_some(), "a spool segment");

    // Run 2: migrated in place, and everything the old run kept is there.
    let (to, got) = receiver().await;
    write_config(&config, &data, to);
    let lt = Livetap::start(&["--config", cfg]);
    wait_until("the migration's log line", || {
        lt.stderr().contains(&format!("migrated data directory {} from format 0 to {FORMAT}", data.display()))
    })
    .await;
    let stamp = datadir::read_stamp(&data).unwrap().expect("stamped");
    assert_eq!(stamp.format, FORMAT);
    assert_eq!(stamp.history_schema, Some(1), "the history's schema is recorded");
    let stored = traces_until(lt.addr, "", |v| v["data"]["total"] == 3).await;
    assert_eq!(stored["data"]["total"], 3, "the old history answers: {stored}");
    let next = ingest_ok(lt.addr, &[span_event(103)]).await;
    assert!(next["lastId"].as_u64().unwrap() > old_last, "ids continue above {old_last}: {next}");
    // The old run's spooled backlog is sent to the receiver now up.
    wait_until("the spooled backlog", || got.lock().unwrap().len() >= 5).await;
    let sent: Vec<u64> =
        got.lock().unwrap().iter().map(|e| e["id"].as_str().unwrap().parse().unwrap()).collect();
    assert!(sent.iter().all(|&id| id <= old_last), "the old events, with their old ids: {sent:?}");

    // A second livetap on the same directory is refused while this one runs.
    let second = run_to_end(&["--config", cfg, "--listen", "127.0.0.1:0", "--admin-token", TOKEN]);
    let err = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(1), "{err}");
    assert!(
        err.contains("is in use by another livetap") && err.contains(&data.display().to_string()),
        "{err}"
    );
    // `livetap history` reads beside it, without migrating or locking.
    let listed = run_to_end(&["history", "--data-dir", data.to_str().unwrap(), "--json", "traces"]);
    assert!(listed.status.success(), "{}", String::from_utf8_lossy(&listed.stderr));
    let v: Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert!(v["data"]["total"].as_u64().unwrap() >= 3, "{v}");
    lt.sigterm();
    let mut lt = lt;
    assert!(lt.wait_exit().await.success(), "{}", lt.stderr());

    // A simulated newer livetap's directory: refused, untouched.
    let newer = FORMAT + 1;
    std::fs::write(
        data.join(STAMP_FILE),
        format!("format = {newer}\nwritten-by = \"99.0.0\"\nsomething-new = 1\n"),
    )
    .unwrap();
    let before = snapshot(&data);
    let refused = run_to_end(&["--config", cfg, "--listen", "127.0.0.1:0", "--admin-token", TOKEN]);
    let err = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(78), "{err}");
    for part in [
        data.display().to_string(),
        format!("has format {newer}"),
        format!("knows formats up to {FORMAT}"),
        "Upgrade livetap".to_string(),
        "--data-dir".to_string(),
    ] {
        assert!(err.contains(&part), "`{part}` missing from: {err}");
    }
    assert!(!String::from_utf8_lossy(&refused.stdout).contains("listening on"));
    assert_eq!(snapshot(&data), before, "the newer directory was modified");
    // The readers refuse it too, without touching it.
    let listed = run_to_end(&["history", "--data-dir", data.to_str().unwrap(), "traces"]);
    assert!(!listed.status.success());
    assert!(String::from_utf8_lossy(&listed.stderr).contains(&format!("has format {newer}")));
    let checked = run_to_end(&["check-config", "--config", cfg]);
    assert_eq!(checked.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&checked.stdout).contains(&format!("has format {newer}")));
    assert_eq!(snapshot(&data), before, "a reader modified the newer directory");
}

#[tokio::test]
async fn the_library_server_opens_the_directory_the_same_way() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let d = data.clone();
    let server = start_server(move |c| c.data_dir = Some(d)).await;
    assert_eq!(datadir::read_stamp(&data).unwrap().map(|s| s.format), Some(FORMAT));
    assert!(datadir::in_use(&data), "the server holds the lock");
    // A second server on the same directory is refused before it binds or opens anything.
    let mut c = livetap::Config { listen: "127.0.0.1:0".parse().unwrap(), ..livetap::Config::default() };
    c.data_dir = Some(data.clone());
    let e = livetap::Server::start(c, TOKEN.to_string()).await.err().expect("refused");
    assert!(e.to_string().contains("in use by another livetap"), "{e}");
    server.shutdown().await;
    assert!(!datadir::in_use(&data), "the lock is released at shutdown");
}
