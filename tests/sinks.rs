//! Log sinks (`[[sink]]`, `tap::sink`) end to end: events ingested over real HTTP reach a
//! rotating file, a text file and the real binary's standard output, and what a file holds is
//! byte for byte what a live subscriber with the same query received.

mod common;

use common::*;
use livetap::tap::sink::SinkConfig;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::time::Instant;

/// A fresh directory for one test, removed when the guard drops.
fn scratch(tag: &str) -> tempfile::TempDir {
    tempfile::Builder::new().prefix(&format!("livetap-sinks-{tag}-")).tempdir().unwrap()
}

/// One `[[sink]]` table, parsed as the config file would be.
fn sink(toml_body: &str) -> SinkConfig {
    let c = livetap::Config::from_toml(&format!("[[sink]]\n{toml_body}\n")).unwrap_or_else(|e| panic!("{e}"));
    c.validate().unwrap();
    c.sink.into_iter().next().unwrap()
}

/// The content of a rotated file set, oldest first: `path.N` … `path.1`, then `path`.
fn read_rotated(path: &Path) -> (String, usize) {
    let mut n = 0;
    while Path::new(&format!("{}.{}", path.display(), n + 1)).exists() {
        n += 1;
    }
    let mut all = String::new();
    for i in (1..=n).rev() {
        all.push_str(&std::fs::read_to_string(format!("{}.{i}", path.display())).unwrap());
    }
    all.push_str(&std::fs::read_to_string(path).unwrap_or_default());
    (all, n)
}

/// Events with every kind of value a line format must survive.
fn mixed_events(n: usize) -> Vec<Value> {
    (0..n)
        .map(|i| {
            let level = if i % 2 == 0 { "error" } else { "info" };
            json!({
                "type": "test.sink",
                "level": level,
                "data": {
                    "seq": i,
                    "accountName": format!("user{i}@example.org"),
                    "reason": format!("line {i}\nwith \"quotes\", a tab\t and é"),
                    "to": ["a@example.org", "b@example.org"],
                }
            })
        })
        .collect()
}

/// The events of trace frames, as the raw JSON objects of their `data:` arrays (the brackets
/// dropped), until `n` events arrived.
async fn raw_events(stream: &mut SseClient, n: usize) -> Vec<String> {
    let deadline = Instant::now() + DEADLINE;
    let mut raws = Vec::new();
    let mut count = 0;
    while count < n {
        let left = deadline.saturating_duration_since(Instant::now());
        let f =
            stream.next_frame(left).await.unwrap_or_else(|| panic!("only {count} of {n} events streamed"));
        if f.event != "trace" {
            continue;
        }
        count += serde_json::from_str::<Vec<Value>>(&f.data).unwrap().len();
        raws.push(f.data[1..f.data.len() - 1].to_string());
    }
    assert_eq!(count, n);
    raws
}

/// Polls the tap statistics until the tap `name` satisfies `pred`.
async fn tap_until(addr: std::net::SocketAddr, name: &str, mut pred: impl FnMut(&Value) -> bool) -> Value {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let st = stats(addr).await;
        if let Some(t) = st["taps"].as_array().and_then(|t| t.iter().find(|t| t["name"] == name)) {
            if pred(t) {
                return t.clone();
            }
        }
        assert!(Instant::now() < deadline, "tap {name} never got there: {st}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn rotated_files_hold_exactly_what_a_subscriber_with_the_same_query_received() {
    let scratch_dir = scratch("rotate");
    let dir = scratch_dir.path();
    let all = dir.join("all.log");
    let few = dir.join("few.log");
    let sinks = vec![
        sink(&format!(
            "name = \"all\"\nkind = \"file\"\nquery = \"level=error\"\npath = \"{}\"\nrotate-bytes = 4096\nkeep = 1000",
            all.display()
        )),
        sink(&format!(
            "name = \"few\"\nkind = \"file\"\nquery = \"level=error\"\npath = \"{}\"\nrotate-bytes = 4096\nkeep = 2",
            few.display()
        )),
    ];
    let server = start_server(|c| c.sink = sinks).await;
    let addr = server.addr;
    let mut stream = SseClient::connect(addr, "/api/livetap/live?level=error", Some(TOKEN)).await;
    assert_eq!(stream.status, 200);
    let events = mixed_events(400);
    for chunk in events.chunks(50) {
        ingest_ok(addr, chunk).await;
    }
    let raws = raw_events(&mut stream, 200).await;
    // The counters reach the metrics once the sink went idle.
    tap_until(addr, "sink:all", |t| t["counters"]["events"] == 200).await;
    let deadline = Instant::now() + DEADLINE;
    let metrics = loop {
        let m = request_auth(addr, "GET", "/metrics", b"").await.text();
        if m.lines().any(|l| l == "livetap_sink_all_events_total 200") || Instant::now() > deadline {
            break m;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(metrics.lines().any(|l| l == "livetap_sink_all_events_total 200"), "{metrics}");
    drop(stream);
    let st = stats(addr).await;
    server.shutdown().await;

    // Byte for byte: the subscriber's frames, their events joined, equal the files' lines.
    let want = raws.join(",");
    let (got, files) = read_rotated(&all);
    assert!(got.ends_with('\n'));
    assert_eq!(got.trim_end_matches('\n').replace('\n', ","), want);
    assert!(files >= 3, "{files} rotated files");
    for i in 1..=files {
        let len = std::fs::metadata(format!("{}.{i}", all.display())).unwrap().len();
        assert!(len <= 4096, "a rotated file of {len} bytes");
    }
    // The same events in the same order, with the types and values ingested.
    let lines: Vec<Value> = got.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let seqs: Vec<u64> = lines.iter().map(|e| e["data"]["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (0..400).step_by(2).collect::<Vec<u64>>());
    assert_eq!(lines[1]["data"]["reason"], "line 2\nwith \"quotes\", a tab\t and é");

    // `keep = 2`: the same rotations, the two newest rotated files kept, older ones deleted,
    // and what is left is the newest part of the same stream.
    let (tail, kept) = read_rotated(&few);
    assert_eq!(kept, 2);
    assert!(!Path::new(&format!("{}.3", few.display())).exists());
    assert!(got.ends_with(&tail) && tail.len() < got.len());
    assert!(got[..got.len() - tail.len()].ends_with('\n'), "whole lines only");

    let tap = |name: &str| st["taps"].as_array().unwrap().iter().find(|t| t["name"] == name).unwrap().clone();
    let (a, f) = (tap("sink:all"), tap("sink:few"));
    assert_eq!(a["counters"]["events"], 200);
    assert_eq!(a["counters"]["bytes"], got.len());
    assert_eq!(a["counters"]["rotations"], files);
    assert_eq!(a["counters"]["errors"], 0);
    assert_eq!(f["counters"]["rotations"], files);
    assert_eq!((a["matched"].as_u64(), a["dropped"].as_u64()), (Some(200), Some(0)));
}

#[tokio::test]
async fn a_text_sink_writes_one_readable_line_per_event_and_a_classic_one_the_classic_json() {
    let scratch_dir = scratch("text");
    let dir = scratch_dir.path();
    let path = dir.join("text.log");
    let config = sink(&format!(
        "name = \"text\"\nkind = \"file\"\nformat = \"text\"\nquery = \"event=test.text\"\npath = \"{}\"",
        path.display()
    ));
    // Beside it, an NDJSON sink in the classic dialect, checked against a classic stream.
    let classic_path = dir.join("classic.log");
    let classic = sink(&format!(
        "name = \"classic\"\nkind = \"file\"\ndialect = \"classic\"\nquery = \"event=test.text\"\npath = \"{}\"",
        classic_path.display()
    ));
    let server = start_server(|c| c.sink = vec![config, classic]).await;
    let addr = server.addr;
    let mut stream =
        SseClient::connect(addr, "/api/telemetry/traces/live?event=test.text", Some(TOKEN)).await;
    assert_eq!(stream.status, 200);
    ingest_ok(
        addr,
        &[
            json!({"type": "test.text", "level": "warn", "createdAt": "2026-12-07T17:00:00Z",
                   "data": {"accountName": "bob", "reason": "bad \"password\"\nretry", "port": 25}}),
            json!({"type": "test.other", "level": "error", "data": {"x": "y"}}),
            json!({"type": "test.text", "level": "error", "createdAt": "2026-12-07T17:00:01Z",
                   "details": "it broke", "data": {"to": ["a@x", "b@y"], "empty": ""}}),
        ],
    )
    .await;
    tap_until(addr, "sink:text", |t| t["counters"]["events"] == 2).await;
    let raws = raw_events(&mut stream, 2).await;
    drop(stream);
    server.shutdown().await;
    let classic_lines = std::fs::read_to_string(&classic_path).unwrap();
    assert_eq!(classic_lines.trim_end().replace('\n', ","), raws.join(","));
    assert_eq!(classic_lines.lines().count(), 2);
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        concat!(
            "2026-12-07T17:00:00Z WARN  test.text accountName=bob port=25 reason=\"bad \\\"password\\\"\\nretry\"\n",
            "2026-12-07T17:00:01Z ERROR test.text to=a@x,b@y details=\"it broke\"\n",
        )
    );
}

#[tokio::test]
async fn a_sink_reopens_its_file_when_it_is_deleted_and_one_without_matches_stays_empty() {
    let scratch_dir = scratch("deleted");
    let dir = scratch_dir.path();
    let path = dir.join("d.log");
    let none = dir.join("none.log");
    let configs = vec![
        sink(&format!(
            "name = \"d\"\nkind = \"file\"\npath = \"{}\"\nquery = \"event=test.d\"",
            path.display()
        )),
        sink(&format!(
            "name = \"none\"\nkind = \"file\"\npath = \"{}\"\nquery = \"event=nothing.ever\"",
            none.display()
        )),
    ];
    let server = start_server(|c| c.sink = configs).await;
    let addr = server.addr;
    // A sink whose query matches nothing has its (empty) file from start-up on.
    assert_eq!(std::fs::metadata(&none).unwrap().len(), 0);
    let batch = |from: usize| {
        (from..from + 5).map(|i| json!({"type": "test.d", "data": {"n": i}})).collect::<Vec<_>>()
    };
    let lines_in = |p: &Path| std::fs::read_to_string(p).map(|s| s.lines().count()).unwrap_or(0);
    ingest_ok(addr, &batch(0)).await;
    let deadline = Instant::now() + DEADLINE;
    while lines_in(&path) < 5 {
        assert!(Instant::now() < deadline, "the first lines were never flushed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    std::fs::remove_file(&path).unwrap();
    // The sink notices on its own (it checks its path about once a second) and opens a new
    // file at the path; the next events go there.
    let deadline = Instant::now() + DEADLINE;
    while !path.exists() {
        assert!(Instant::now() < deadline, "no new file after the old one was deleted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    ingest_ok(addr, &batch(5)).await;
    let deadline = Instant::now() + DEADLINE;
    while lines_in(&path) < 5 {
        assert!(Instant::now() < deadline, "no new file after the old one was deleted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.shutdown().await;
    let ns: Vec<u64> = std::fs::read_to_string(&path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["data"]["n"].as_u64().unwrap())
        .collect();
    assert_eq!(ns, vec![5, 6, 7, 8, 9]);
    assert_eq!(std::fs::metadata(&none).unwrap().len(), 0);
}

/// A pipe: its read end and its write end.
fn pipe() -> (std::fs::File, std::fs::File) {
    use std::os::fd::FromRawFd;
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: `pipe2` fills the two descriptors it creates; each is owned by one `File` below.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: both descriptors are fresh and owned by nothing else.
    unsafe { (std::fs::File::from_raw_fd(fds[0]), std::fs::File::from_raw_fd(fds[1])) }
}

/// Writes a config file with the test's admin settings and `tables`.
fn config_file(dir: &Path, tables: &str) -> PathBuf {
    let p = dir.join("livetap.toml");
    std::fs::write(&p, tables).unwrap();
    p
}

/// Runs the binary with `config` and returns its exit status and standard error, for
/// configurations it must refuse before it listens.
async fn refused(config: &Path) -> (std::process::ExitStatus, String) {
    let mut child = livetap_command(2)
        .arg("--config")
        .arg(config)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn livetap");
    let deadline = Instant::now() + DEADLINE;
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("livetap did not refuse its configuration");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    (status, err)
}

#[tokio::test]
async fn the_binary_refuses_an_unwritable_path_a_bad_kind_and_an_unknown_key() {
    let scratch_dir = scratch("refused");
    let dir = scratch_dir.path();
    let cases = [
        (
            format!(
                "[[sink]]\nname = \"x\"\nkind = \"file\"\npath = \"{}/no/such/dir/x.log\"\n",
                dir.display()
            ),
            vec!["cannot write", "mkdir -p", "/no/such/dir"],
        ),
        ("[[sink]]\nname = \"x\"\nkind = \"syslog\"\n".to_string(), vec!["line 3", "syslog"]),
        ("[[sink]]\nname = \"x\"\nkind = \"stdout\"\nrotate = true\n".to_string(), vec!["line 4", "rotate"]),
        (
            "[[sink]]\nname = \"x\"\nkind = \"stdout\"\nkeep = 3\n".to_string(),
            vec!["keep is for kind = \"file\""],
        ),
        (
            "[[sink]]\nname = \"x\"\nkind = \"stdout\"\nquery = \"level=loud\"\n".to_string(),
            vec!["tap `sink:x`: invalid query", "level"],
        ),
    ];
    for (toml_text, wants) in cases {
        let (status, err) = refused(&config_file(dir, &toml_text)).await;
        assert!(!status.success(), "{toml_text}");
        for w in wants {
            assert!(err.contains(w), "{toml_text}: missing {w:?} in {err}");
        }
    }
}

#[tokio::test]
async fn a_stdout_sink_of_the_real_binary_writes_lines_journald_can_read() {
    let scratch_dir = scratch("stdout");
    let dir = scratch_dir.path();
    let config = config_file(
        dir,
        "[[sink]]\nname = \"out\"\nkind = \"stdout\"\nquery = \"event=test.out\"\n\n\
         [[sink]]\nname = \"txt\"\nkind = \"stdout\"\nformat = \"text\"\nquery = \"event=test.txt\"\n",
    );
    // Standard output is a pipe whose device and inode `JOURNAL_STREAM` names, as systemd sets
    // it for a service whose output goes to the journal: the sinks prefix each line with the
    // event's syslog priority.
    let (reader, writer) = pipe();
    let meta = {
        use std::os::unix::fs::MetadataExt;
        let m = writer.metadata().unwrap();
        (m.dev(), m.ino())
    };
    let mut child = livetap_command(2)
        .arg("--config")
        .arg(&config)
        .env("JOURNAL_STREAM", format!("{}:{}", meta.0, meta.1))
        .stdout(writer)
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn livetap");
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(reader).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let next = |what: &str| {
        rx.recv_timeout(DEADLINE).unwrap_or_else(|_| panic!("no {what} on livetap's standard output"))
    };
    let addr: std::net::SocketAddr = loop {
        let line = next("banner");
        if let Some(rest) = line.split("listening on http://").nth(1) {
            break rest.trim().parse().unwrap();
        }
    };
    loop {
        if next("banner end").trim_start().starts_with("try:") {
            break;
        }
    }
    let mut stream = SseClient::connect(addr, "/api/livetap/live?event=test.out", Some(TOKEN)).await;
    ingest_ok(
        addr,
        &[
            json!({"type": "test.out", "level": "error", "data": {"n": 1}}),
            json!({"type": "test.txt", "level": "warn", "createdAt": "2026-12-07T17:00:00Z", "data": {"n": 2}}),
            json!({"type": "test.out", "level": "info", "data": {"n": "three\nlines\n"}}),
            json!({"type": "test.out", "level": "debug", "data": {"n": 4}}),
        ],
    )
    .await;
    let raws = raw_events(&mut stream, 3).await;
    let subscriber: Vec<String> = raws.join(",").split(",{\"text\"").map(String::from).collect();
    assert_eq!(subscriber.len(), 3, "{raws:?}");
    let mut json_lines = Vec::new();
    let mut text_lines = Vec::new();
    while json_lines.len() < 3 || text_lines.is_empty() {
        let line = next("sink line");
        if line.contains(" test.txt ") {
            text_lines.push(line);
        } else {
            json_lines.push(line);
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    // Each NDJSON line is the subscriber's event, byte for byte, after its priority.
    let want_prefix = ["<3>", "<6>", "<7>"];
    for (i, line) in json_lines.iter().enumerate() {
        let body = line.strip_prefix(want_prefix[i]).unwrap_or_else(|| panic!("line {i}: {line}"));
        let sub = if i == 0 { subscriber[0].clone() } else { format!("{{\"text\"{}", subscriber[i]) };
        assert_eq!(body, sub);
    }
    assert_eq!(text_lines, vec!["<4>2026-12-07T17:00:00Z WARN  test.txt n=2".to_string()]);
}

/// The lines of the first fenced block after `marker` in `text`.
fn block_after(text: &str, marker: &str) -> String {
    let rest = &text[text.find(marker).expect("marker in README")..];
    let body = &rest[rest.find("```").expect("a fenced block") + 3..];
    let body = &body[body.find('\n').unwrap() + 1..];
    body[..body.find("```").expect("closing fence")].to_string()
}

#[test]
fn the_readme_sink_examples_are_what_livetap_reads_and_writes() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let section = &readme[readme.find("## Log sinks").unwrap()..];
    // The configuration example parses and validates.
    let c = livetap::Config::from_toml(&block_after(section, "```toml")).unwrap_or_else(|e| panic!("{e}"));
    c.validate().unwrap();
    assert_eq!(c.sink.len(), 2);
    // The sample NDJSON line is an event's JSON as livetap writes it, and the sample text line
    // is that event's text line.
    let ndjson = block_after(section, "**Formats.**");
    let ndjson = ndjson.trim_end();
    let text_line = block_after(section, "a line break, whatever the producer sent");
    let (catalogue, keys) = livetap::event::Catalogue::with_keys(1024);
    let raw = livetap::event::RawValue::parse_serde(ndjson.as_bytes()).unwrap();
    let ev = livetap::event::EventBuilder::new(&catalogue, &keys).build(&raw, 0).unwrap();
    assert_eq!(std::str::from_utf8(&ev.json).unwrap(), ndjson);
    let mut line = Vec::new();
    livetap::tap::sink::text::write_line(&ev, &mut line, &mut Vec::new());
    assert_eq!(String::from_utf8(line).unwrap(), text_line.trim_end());
}

#[tokio::test]
async fn a_full_disk_is_counted_and_logged_once_and_never_blocks_ingest() {
    let scratch_dir = scratch("full");
    let dir = scratch_dir.path();
    // `/dev/full` refuses every write with ENOSPC, as a full disk does.
    let config = config_file(dir, "[[sink]]\nname = \"full\"\nkind = \"file\"\npath = \"/dev/full\"\n");
    let lt = Livetap::start(&["--config", config.to_str().unwrap()]);
    let addr = lt.addr;
    let mut stream = SseClient::connect(addr, "/api/livetap/live", Some(TOKEN)).await;
    let events: Vec<Value> = (0..50).map(|i| json!({"type": "test.full", "data": {"n": i}})).collect();
    for round in 1..=3u64 {
        ingest_ok(addr, &events).await;
        assert_eq!(stream.count_events(50, DEADLINE).await.0, 50, "the stream is not held back");
        tap_until(addr, "sink:full", |t| t["counters"]["errors"].as_u64() >= Some(round)).await;
    }
    let t = tap_until(addr, "sink:full", |t| t["delivered"] == 150).await;
    assert_eq!(t["dropped"], 0);
    // The log is read by a thread of its own: wait for the first warning to arrive.
    let deadline = Instant::now() + DEADLINE;
    while !lt.stderr().contains("sink cannot write its file") {
        assert!(Instant::now() < deadline, "no error logged: {}", lt.stderr());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let err = lt.stderr();
    assert_eq!(err.matches("sink cannot write its file").count(), 1, "{err}");
    assert!(err.contains("No space left on device"), "{err}");
    assert!(!err.contains("writes its file again"), "{err}");
}
