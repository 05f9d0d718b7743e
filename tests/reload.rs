//! Reloading the configuration with SIGHUP (issue 26, item 4), against the real binary over
//! real HTTP/SSE: under load nothing is lost, duplicated or disconnected; a removed principal's
//! streams (and only those) end with a last frame saying why; a bad file changes nothing; sinks
//! and sources added and removed by a reload start and stop.

mod common;

use common::{ingest_ok, request, stats, Livetap, SseClient, DEADLINE, TOKEN};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Sends SIGHUP to the binary.
fn sighup(lt: &Livetap) {
    let pid = lt.child.id() as libc::pid_t;
    // SAFETY: sending a signal to our own child process.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0);
}

/// Lines of stderr that report a reload's outcome (done or failed).
fn reload_outcomes(lt: &Livetap) -> Vec<String> {
    let text = lt.stderr();
    // Complete lines only: the reader may have caught the last one half written.
    let complete = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
    complete
        .lines()
        // The outcome is a log line of the `livetap::service` target; what it says follows it.
        .filter_map(|l| l.split_once("livetap::service: ").map(|(_, m)| m))
        .filter(|m| m.starts_with("reloaded") || m.starts_with("reload failed"))
        .map(str::to_string)
        .collect()
}

/// Writes `config` to `path`, sends SIGHUP and waits for the reload's outcome line (the
/// `n`-th), which it returns.
async fn reload(lt: &Livetap, path: &Path, config: &str, n: usize) -> String {
    std::fs::write(path, config).unwrap();
    sighup(lt);
    let deadline = Instant::now() + DEADLINE;
    loop {
        let lines = reload_outcomes(lt);
        if lines.len() >= n {
            return lines[n - 1].clone();
        }
        assert!(Instant::now() < deadline, "no reload outcome #{n}; stderr: {}", lt.stderr());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Starts the binary on `config` (written to `dir/livetap.toml`).
fn start(dir: &Path, config: &str, extra: &[&str]) -> (Livetap, PathBuf) {
    let path = dir.join("livetap.toml");
    std::fs::write(&path, config).unwrap();
    let mut args = vec!["--config", path.to_str().unwrap()];
    args.extend_from_slice(extra);
    (Livetap::start(&args), path)
}

/// An event whose JSON carries `marker`.
fn event(marker: &str) -> Value {
    json!({"type": "auth.success", "data": {"accountName": marker}})
}

/// Reads frames until one of type `trace` holds `marker`; panics at the deadline or the end.
async fn wait_for_marker(c: &mut SseClient, marker: &str) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let f =
            c.next_frame(left).await.unwrap_or_else(|| panic!("stream ended or deadline before {marker}"));
        if f.event == "trace" && f.data.contains(marker) {
            return;
        }
        assert!(f.event == "trace" || f.event == "ping", "unexpected frame {f:?}");
    }
}

/// The last frame of a stream a reload closed: `event: error`, its JSON body, then the end.
async fn expect_closed_with(c: &mut SseClient, error: &str, detail_has: &str) {
    let frames = c.expect_end(DEADLINE).await;
    let last = frames.last().unwrap_or_else(|| panic!("no frame before the end"));
    assert_eq!(last.event, "error", "{frames:?}");
    let v: Value = serde_json::from_str(&last.data).unwrap();
    assert_eq!(v["error"], error, "{v}");
    assert!(v["detail"].as_str().unwrap().contains(detail_has), "{v}");
    assert!(c.ended_cleanly(), "the stream ended with the chunked terminator");
}

/// A live stream that only counts: frame ids and events per frame, read straight from the
/// socket without building JSON (a debug build parses 100 streams of 20,000 events/s too
/// slowly to keep up otherwise).
struct Counter {
    stream: TcpStream,
    dechunker: common::Dechunker,
    data: Vec<u8>,
    /// The id the next frame continues from (the ring head when the stream opened).
    last_id: u64,
    events: u64,
    /// Frames other than `trace` and `ping`, and frames whose event count is not their id
    /// range (an event missing or repeated).
    bad: Vec<String>,
    ended: bool,
}

impl Counter {
    async fn open(addr: SocketAddr, start_id: u64) -> Counter {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let req = format!(
            "GET /api/telemetry/traces/live HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {TOKEN}\r\n\r\n"
        );
        stream.write_all(req.as_bytes()).await.unwrap();
        // The head (status line and headers) up to the blank line; the body follows.
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            let n = tokio::time::timeout(DEADLINE, stream.read(&mut b)).await.unwrap().unwrap();
            assert_eq!(n, 1, "the stream's head arrives");
            head.push(b[0]);
        }
        assert!(head.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&head));
        Counter {
            stream,
            dechunker: common::Dechunker::default(),
            data: Vec::new(),
            last_id: start_id,
            events: 0,
            bad: Vec::new(),
            ended: false,
        }
    }

    /// Reads until the stream has every event up to id `until` (or the deadline, or its end).
    async fn read_until(&mut self, until: u64, deadline: Instant) {
        let mut buf = vec![0u8; 256 * 1024];
        while self.last_id < until && !self.ended {
            match tokio::time::timeout_at(deadline, self.stream.read(&mut buf)).await {
                Err(_) => return,
                Ok(Ok(0)) | Ok(Err(_)) => self.ended = true,
                Ok(Ok(n)) => {
                    self.dechunker.feed(&buf[..n], &mut self.data);
                    self.frames();
                }
            }
        }
    }

    fn frames(&mut self) {
        let finder = memchr::memmem::Finder::new(b"\n\n");
        let types = memchr::memmem::Finder::new(b"\"type\":\"");
        let mut at = 0;
        while let Some(end) = finder.find(&self.data[at..]) {
            let block = &self.data[at..at + end];
            at += end + 2;
            let mut id = None;
            let mut kind = "message";
            let mut count = 0u64;
            for line in block.split(|&b| b == b'\n') {
                if let Some(v) = line.strip_prefix(b"id: ") {
                    id = std::str::from_utf8(v).ok().and_then(|v| v.parse::<u64>().ok());
                } else if let Some(v) = line.strip_prefix(b"event: ") {
                    kind = if v == b"trace" {
                        "trace"
                    } else if v == b"ping" {
                        "ping"
                    } else {
                        "other"
                    };
                } else if line.starts_with(b"data: ") {
                    count = types.find_iter(line).count() as u64;
                }
            }
            match (kind, id) {
                ("trace", Some(id)) => {
                    if id.checked_sub(self.last_id) != Some(count) {
                        self.bad.push(format!("frame id {id} after {} with {count} events", self.last_id));
                    }
                    self.last_id = id;
                    self.events += count;
                }
                ("ping", _) | ("message", None) => {}
                _ => self.bad.push(String::from_utf8_lossy(block).chars().take(200).collect()),
            }
        }
        self.data.drain(..at);
    }
}

/// A config with two principals besides the admin, a limit, and optionally a sink.
fn load_config(dir: &Path, round: usize) -> String {
    // The unrelated principal's permissions alternate; every third round adds a sink, and
    // the body limit changes every round.
    let perms = if round % 2 == 0 { r#"["tracing-live"]"# } else { r#"["tracing-live", "history"]"# };
    let sink = if round % 3 == 1 {
        format!(
            "\n[[sink]]\nname = \"copy\"\nkind = \"file\"\npath = \"{}\"\nquery = \"level=error\"\n",
            dir.join("copy.ndjson").display()
        )
    } else {
        String::new()
    };
    // A sink of every event whose table changes every round, so each reload replaces its
    // tap: the file must hold every event once, in order.
    format!(
        r#"subscriber-queue = 1000000
ring-capacity = 262144
max-body-bytes = {body}

[[principal]]
name = "other"
api-key = "other-key-0123456789"
permissions = {perms}

[[sink]]
name = "all"
kind = "file"
path = "{all}"
queue = {queue}
{sink}"#,
        body = 4_194_304 + round,
        all = dir.join("all.ndjson").display(),
        queue = 1_000_000 + round
    )
}

/// Ten SIGHUPs, each with a changed configuration (an unrelated principal's permissions, a
/// sink added and removed, a limit), while events flow at about 20,000/s to 100 subscribers:
/// every subscriber receives every event exactly once, in order, and none is disconnected.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_reloads_under_load_lose_nothing_and_disconnect_no_one() {
    common::raise_nofile();
    let dir = tempfile::tempdir().unwrap();
    let (lt, path) = start(dir.path(), &load_config(dir.path(), 0), &[]);
    let addr = lt.addr;
    let head = stats(addr).await["ring_head"].as_u64().unwrap();
    let mut counters = Vec::new();
    for _ in 0..100 {
        counters.push(Counter::open(addr, head).await);
    }
    // Read while the producer sends, each stream on its own task, so no socket backs up.
    let produced = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let final_id = Arc::new(AtomicU64::new(u64::MAX));
    let mut readers = Vec::new();
    for mut c in counters {
        let final_id = final_id.clone();
        readers.push(tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(300);
            loop {
                // Until the producer is done the target is unknown (`u64::MAX`): read what
                // comes, looking at the target again every 200 ms.
                let until = final_id.load(Ordering::Acquire);
                let slice = (Instant::now() + Duration::from_millis(200)).min(deadline);
                c.read_until(until, slice).await;
                if c.ended || Instant::now() >= deadline || c.last_id >= until {
                    return c;
                }
            }
        }));
    }
    // The producer: batches of 200 events every 10 ms (20,000 events/s), for as long as the
    // reloads take and at least 40,000 events.
    let producer = {
        let produced = produced.clone();
        let done = done.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            let mut n = 0u64;
            while !done.load(Ordering::Acquire) || n < 40_000 {
                tick.tick().await;
                let batch: Vec<Value> = (0..200).map(|i| event(&format!("e{}", n + i))).collect();
                let body = common::ndjson(&batch);
                loop {
                    let r = common::ingest(addr, &body).await;
                    if r.status == 200 {
                        break;
                    }
                    // 503: the ring is full for now; the batch was refused whole, send it again.
                    assert_eq!(r.status, 503, "{}", r.text());
                }
                n += 200;
                produced.store(n, Ordering::Release);
            }
            n
        })
    };
    // Ten reloads, spread over the flow: each after another 3,000 events went in.
    for round in 1..=10 {
        let want = round as u64 * 3_000;
        let deadline = Instant::now() + DEADLINE;
        while produced.load(Ordering::Acquire) < want {
            assert!(Instant::now() < deadline, "the producer stalled");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let line = reload(&lt, &path, &load_config(dir.path(), round), round).await;
        assert!(line.starts_with("reloaded"), "{line}");
        assert!(line.contains("max-body-bytes"), "the limit change is reported: {line}");
        if round % 3 == 1 {
            assert!(line.contains("added sink copy"), "{line}");
        }
        if round % 3 == 2 {
            assert!(line.contains("removed sink copy"), "{line}");
        }
        assert!(line.contains("changed sink all"), "{line}");
    }
    done.store(true, Ordering::Release);
    let total = producer.await.unwrap();
    let end = head + total;
    final_id.store(end, Ordering::Release);
    // The streams stay open until the stats below counted them.
    let mut open = Vec::new();
    for r in readers {
        let c = r.await.unwrap();
        assert!(c.bad.is_empty(), "unexpected frames: {:?}", &c.bad[..c.bad.len().min(5)]);
        assert!(!c.ended, "a subscriber was disconnected");
        assert_eq!(c.last_id, end, "a subscriber did not get every event");
        assert_eq!(c.events, total, "every event exactly once");
        open.push(c);
    }
    // The sink replaced at every reload wrote every event once, in order.
    let all = dir.path().join("all.ndjson");
    let deadline = Instant::now() + DEADLINE;
    let text = loop {
        let text = std::fs::read_to_string(&all).unwrap_or_default();
        if text.lines().count() as u64 >= total || Instant::now() > deadline {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let marks: Vec<u64> = text
        .lines()
        .map(|l| {
            let at = l.find("\"accountName\":\"e").expect("a marker") + "\"accountName\":\"e".len();
            l[at..].split('"').next().unwrap().parse().unwrap()
        })
        .collect();
    assert_eq!(marks.len() as u64, total, "the sink's lines");
    assert!(marks.iter().enumerate().all(|(i, &m)| m == i as u64), "the sink's events in order, once each");
    let s = stats(addr).await;
    assert_eq!(s["subscribers"], 100, "{s}");
    assert_eq!(s["dropped"], 0, "{s}");
    assert!(!lt.stderr().contains("reload failed"), "{}", lt.stderr());
}

const PRINCIPALS: &str = r#"
[[principal]]
name = "alice"
api-key = "alice-key-0123456789"
permissions = ["tracing-live"]

[[principal]]
name = "bob"
api-key = "bob-key-0123456789"
permissions = ["tracing-live"]

[[principal]]
name = "carol"
api-key = "carol-key-0123456789"
permissions = ["tracing-live"]

[[principal]]
name = "dave"
api-key = "dave-key-0123456789"
permissions = ["metrics-live"]
"#;

/// A reload that removes a principal (bob) and takes a permission from another (carol) closes
/// exactly their streams, each with a last `event: error` frame saying why; alice's and the
/// admin's streams stay and keep receiving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_a_principal_closes_exactly_its_streams_with_a_last_frame() {
    let dir = tempfile::tempdir().unwrap();
    let (lt, path) = start(dir.path(), PRINCIPALS, &[]);
    let addr = lt.addr;
    let live = "/api/telemetry/traces/live";
    let mut alice = [
        SseClient::connect(addr, live, Some("alice-key-0123456789")).await,
        SseClient::connect(addr, live, Some("alice-key-0123456789")).await,
    ];
    let mut bob = [
        SseClient::connect(addr, live, Some("bob-key-0123456789")).await,
        SseClient::connect(addr, live, Some("bob-key-0123456789")).await,
    ];
    let mut carol = SseClient::connect(addr, live, Some("carol-key-0123456789")).await;
    let mut admin = SseClient::connect(addr, live, Some(TOKEN)).await;
    // Live metrics streams are checked too: dave's loses its permission, the admin's stays.
    let metrics = "/api/telemetry/metrics/live?interval=1";
    let mut dave = SseClient::connect(addr, metrics, Some("dave-key-0123456789")).await;
    let mut admin_metrics = SseClient::connect(addr, metrics, Some(TOKEN)).await;
    for c in alice.iter().chain(&bob).chain([&carol, &admin, &dave, &admin_metrics]) {
        assert_eq!(c.status, 200);
    }
    ingest_ok(addr, &[event("before")]).await;
    for c in alice.iter_mut().chain(bob.iter_mut()).chain([&mut carol, &mut admin]) {
        wait_for_marker(c, "before").await;
    }

    let without_bob = PRINCIPALS
        .replace("name = \"bob\"\napi-key = \"bob-key-0123456789\"\npermissions = [\"tracing-live\"]\n", "")
        .replace("[[principal]]\n\n[[principal]]", "[[principal]]")
        .replace(
            "name = \"carol\"\napi-key = \"carol-key-0123456789\"\npermissions = [\"tracing-live\"]",
            "name = \"carol\"\napi-key = \"carol-key-0123456789\"\npermissions = [\"metrics-live\"]",
        )
        .replace(
            "name = \"dave\"\napi-key = \"dave-key-0123456789\"\npermissions = [\"metrics-live\"]",
            "name = \"dave\"\napi-key = \"dave-key-0123456789\"\npermissions = [\"history\"]",
        );
    assert!(!without_bob.contains("bob"), "{without_bob}");
    let line = reload(&lt, &path, &without_bob, 1).await;
    assert!(line.contains("principals changed (3 streams closed"), "{line}");

    for c in &mut bob {
        expect_closed_with(c, "forbidden", "principal `bob` removed by a configuration reload").await;
    }
    expect_closed_with(&mut carol, "forbidden", "`carol` no longer has the `tracing-live` permission").await;
    expect_closed_with(&mut dave, "forbidden", "`dave` no longer has the `metrics-live` permission").await;
    // The admin's metrics stream goes on: two more metrics frames, an interval apart.
    let deadline = Instant::now() + DEADLINE;
    let mut frames = 0;
    while frames < 2 {
        let f = admin_metrics
            .next_frame(deadline.saturating_duration_since(Instant::now()))
            .await
            .expect("the admin's metrics stream stays open");
        if f.event == "metrics" {
            frames += 1;
        }
    }
    // The others stay and receive what comes next.
    ingest_ok(addr, &[event("after")]).await;
    for c in alice.iter_mut().chain([&mut admin]) {
        wait_for_marker(c, "after").await;
    }
    // The new set is in force: bob is refused, carol may not open a traces stream.
    let refused = SseClient::connect(addr, live, Some("bob-key-0123456789")).await;
    assert_eq!(refused.status, 401);
    let refused = SseClient::connect(addr, live, Some("carol-key-0123456789")).await;
    assert_eq!(refused.status, 403);
    let s = stats(addr).await;
    assert_eq!(s["subscribers"], 3, "{s}");
    assert_eq!(s["metric_streams"], 1, "{s}");
}

/// Starts the binary on [`PRINCIPALS`] and opens a live traces stream with `key`.
async fn start_watching(dir: &Path, key: &str) -> (Livetap, PathBuf, SseClient) {
    let (lt, path) = start(dir, PRINCIPALS, &[]);
    let stream = SseClient::connect(lt.addr, "/api/telemetry/traces/live", Some(key)).await;
    assert_eq!(stream.status, 200);
    (lt, path, stream)
}

/// After a refused reload, the configuration running before it is still in force: `stream`
/// still receives (a `marker` event sent now), and bob is still a principal.
async fn still_in_force(addr: SocketAddr, stream: &mut SseClient, marker: &str) {
    ingest_ok(addr, &[event(marker)]).await;
    wait_for_marker(stream, marker).await;
    let again = SseClient::connect(addr, "/api/telemetry/traces/live", Some("bob-key-0123456789")).await;
    assert_eq!(again.status, 200, "bob is still a principal");
}

/// A configuration that does not parse leaves everything running: the streams stay, the
/// principals stay, and the error is logged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_config_at_sighup_changes_nothing_and_logs_the_error() {
    let dir = tempfile::tempdir().unwrap();
    let (lt, path, mut alice) = start_watching(dir.path(), "alice-key-0123456789").await;
    let addr = lt.addr;
    // Not TOML, then TOML with an unknown key: both refused, with the line.
    let line = reload(&lt, &path, "this is = = not toml\n", 1).await;
    assert!(line.starts_with("reload failed"), "{line}");
    assert!(line.contains("line 1"), "{line}");
    let line = reload(&lt, &path, "max-body-bytez = 5\n", 2).await;
    assert!(line.starts_with("reload failed"), "{line}");
    assert!(lt.stderr().contains("max-body-bytez"), "the error names the key: {}", lt.stderr());
    // The error is also in the log, and nothing changed.
    assert!(lt.stderr().contains("reload refused"), "{}", lt.stderr());
    still_in_force(addr, &mut alice, "still-here").await;
    let r = request(addr, "GET", "/healthz", &[], b"").await;
    assert_eq!(r.status, 200);
    // A good file afterwards is taken.
    let line = reload(&lt, &path, PRINCIPALS, 3).await;
    assert!(line.starts_with("reloaded"), "{line}");
}

/// A configuration that parses but names a sink whose file cannot be opened changes nothing,
/// not even the principal it also removes: everything that can fail to start is opened
/// before the first swap. Fixed, the same reload is taken whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_whose_sink_cannot_open_changes_nothing_then_the_fixed_one_changes_all() {
    let dir = tempfile::tempdir().unwrap();
    let (lt, path, mut bob) = start_watching(dir.path(), "bob-key-0123456789").await;
    let addr = lt.addr;
    let live = "/api/telemetry/traces/live";
    // A regular file where the sink's directory should be: the sink cannot open.
    let blocker = dir.path().join("not-a-dir");
    std::fs::write(&blocker, b"x").unwrap();
    let without_bob = PRINCIPALS
        .replace("name = \"bob\"", "name = \"robert\"")
        .replace("bob-key-0123456789", "robert-key-0123456789");
    let sink = |p: &Path| {
        format!("\n[[sink]]\nname = \"all\"\nkind = \"file\"\npath = \"{}\"\nquery = \"\"\n", p.display())
    };
    let bad = format!("{without_bob}{}", sink(&blocker.join("all.ndjson")));
    let line = reload(&lt, &path, &bad, 1).await;
    assert!(line.starts_with("reload failed"), "{line}");
    assert!(line.contains("all.ndjson") || line.contains("sink"), "the error names the sink: {line}");
    // Bob is still a principal and his stream still receives.
    still_in_force(addr, &mut bob, "after-failed-reload").await;
    // The same change with a path that opens is taken whole: bob's streams end, the sink
    // writes.
    let file = dir.path().join("all.ndjson");
    let good = format!("{without_bob}{}", sink(&file));
    let line = reload(&lt, &path, &good, 2).await;
    assert!(line.starts_with("reloaded"), "{line}");
    assert!(line.contains("added sink all"), "{line}");
    let refused = SseClient::connect(addr, live, Some("bob-key-0123456789")).await;
    assert_eq!(refused.status, 401, "bob is gone");
    ingest_ok(addr, &[event("into-the-sink")]).await;
    let deadline = Instant::now() + DEADLINE;
    while !std::fs::read_to_string(&file).unwrap_or_default().contains("into-the-sink") {
        assert!(Instant::now() < deadline, "the sink added by the second reload did not write");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A third reload of the same file changes nothing: the second was recorded whole.
    let line = reload(&lt, &path, &good, 3).await;
    assert!(line.starts_with("reloaded"), "{line}");
    assert!(!line.contains("added sink"), "the sink is not added twice: {line}");
}

/// A free TCP port on the loopback (bound and released).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Sinks and mail-log sources added and removed by a reload start and stop; one left alone
/// keeps running; a webhook added and removed keeps its spool on disk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sinks_sources_and_webhooks_follow_the_reloaded_config() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let sink = dir.path().join("sink.ndjson");
    let kept_sink = dir.path().join("kept.ndjson");
    let port = free_port();
    let base = format!(
        "data-dir = \"{}\"\n\n[[sink]]\nname = \"kept\"\nkind = \"file\"\npath = \"{}\"\n",
        data.display(),
        kept_sink.display()
    );
    let (lt, path) = start(dir.path(), &base, &[]);
    let addr = lt.addr;
    let mut watch = SseClient::connect(addr, "/api/telemetry/traces/live", Some(TOKEN)).await;
    assert_eq!(watch.status, 200);

    // Added: a sink file, a syslog TCP listener and a webhook.
    let added = format!(
        "{base}\n[[sink]]\nname = \"new\"\nkind = \"file\"\npath = \"{}\"\n\n\
         [[source]]\nkind = \"syslog\"\nlisten = \"tcp://127.0.0.1:{port}\"\n\n\
         [[webhook]]\nname = \"hook\"\nurl = \"http://127.0.0.1:9/\"\nquery = \"event=auth.success\"\n",
        sink.display()
    );
    let line = reload(&lt, &path, &added, 1).await;
    assert!(line.contains("added sink new"), "{line}");
    assert!(line.contains("added webhook hook"), "{line}");
    assert!(line.contains("started source"), "{line}");
    ingest_ok(addr, &[event("to-the-new-sink")]).await;
    wait_for_marker(&mut watch, "to-the-new-sink").await;
    wait_file_contains(&sink, "to-the-new-sink").await;
    wait_file_contains(&kept_sink, "to-the-new-sink").await;
    // The syslog listener runs: a Postfix line sent to it becomes an event.
    let mut tcp = TcpStream::connect(("127.0.0.1", port)).await.expect("the added listener accepts");
    tcp.write_all(b"<22>Dec  7 10:00:00 mx postfix/smtpd[4242]: connect from unknown[203.0.113.77]\n")
        .await
        .unwrap();
    tcp.flush().await.unwrap();
    drop(tcp);
    wait_for_marker(&mut watch, "203.0.113.77").await;
    // A client that stays connected across the removal: its line is read before the reload.
    let mut open = TcpStream::connect(("127.0.0.1", port)).await.expect("the added listener accepts");
    open.write_all(b"<22>Dec  7 10:00:01 mx postfix/smtpd[4243]: connect from unknown[203.0.113.78]\n")
        .await
        .unwrap();
    wait_for_marker(&mut watch, "203.0.113.78").await;
    let spool = data.join("webhooks").join("hook");
    assert!(spool.is_dir(), "the webhook's spool exists");

    // Removed: the sink, the source and the webhook; the kept sink stays.
    let line = reload(&lt, &path, &base, 2).await;
    assert!(line.contains("removed sink new"), "{line}");
    assert!(line.contains("removed webhook hook"), "{line}");
    assert!(line.contains("stopped source"), "{line}");
    let taps: Vec<String> = stats(addr).await["taps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap().into())
        .collect();
    // The history writer's tap (the data directory turns history on) and the kept sink.
    assert_eq!(taps, vec!["history".to_string(), "sink:kept".to_string()], "only the kept sink runs");
    ingest_ok(addr, &[event("after-removal")]).await;
    wait_for_marker(&mut watch, "after-removal").await;
    wait_file_contains(&kept_sink, "after-removal").await;
    let text = std::fs::read_to_string(&sink).unwrap();
    assert!(text.contains("to-the-new-sink") && !text.contains("after-removal"), "{text}");
    // The listener is closed, and so is the connection that stayed open: livetap ends it
    // (end of stream or reset) instead of reading on for a source that no longer exists.
    let refused = TcpStream::connect(("127.0.0.1", port)).await;
    assert!(refused.is_err(), "the removed syslog listener still accepts");
    let mut rest = [0u8; 16];
    match tokio::time::timeout(DEADLINE, open.read(&mut rest)).await {
        Ok(Ok(0)) | Ok(Err(_)) => {}
        Ok(Ok(n)) => panic!("the removed source's connection sent {n} bytes"),
        Err(_) => panic!("the removed source's connection stayed open"),
    }
    // A removed webhook's spool stays on disk.
    assert!(spool.is_dir(), "the removed webhook's spool stays");
    // The kept sink got both events once each: it was not restarted.
    let kept = std::fs::read_to_string(&kept_sink).unwrap();
    assert_eq!(kept.matches("to-the-new-sink").count(), 1, "{kept}");
    assert_eq!(kept.matches("after-removal").count(), 1, "{kept}");
}

/// Waits until the file at `path` contains `needle`.
async fn wait_file_contains(path: &Path, needle: &str) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if std::fs::read_to_string(path).is_ok_and(|t| t.contains(needle)) {
            return;
        }
        assert!(Instant::now() < deadline, "{} never got {needle}", path.display());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A principal whose filter changes: its stream ends with a frame asking it to reconnect, and
/// the reconnect (with `Last-Event-ID`) resumes under the new filter without missing an event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_filter_asks_the_stream_to_reconnect_and_the_resume_misses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let principal = |filter: &str| {
        format!(
            "[[principal]]\nname = \"erin\"\napi-key = \"erin-key-0123456789\"\n\
             permissions = [\"tracing-live\"]\nfilter = \"{filter}\"\n"
        )
    };
    let (lt, path) = start(dir.path(), &principal("event=auth.*"), &[]);
    let addr = lt.addr;
    let live = "/api/telemetry/traces/live";
    let mut erin = SseClient::connect(addr, live, Some("erin-key-0123456789")).await;
    assert_eq!(erin.status, 200);
    ingest_ok(addr, &[event("first")]).await;
    let got = erin.collect(1, DEADLINE).await;
    let last_id = *got.ids.last().expect("a frame with an id");

    let line = reload(&lt, &path, &principal("event=auth.failed"), 1).await;
    assert!(line.contains("1 asked to reconnect"), "{line}");
    expect_closed_with(&mut erin, "reconnect", "the filter of principal `erin` changed").await;
    // Events after the close: one the new filter takes, one it refuses.
    ingest_ok(
        addr,
        &[
            json!({"type": "auth.failed", "data": {"accountName": "second"}}),
            json!({"type": "auth.success", "data": {"accountName": "third"}}),
        ],
    )
    .await;
    let id = last_id.to_string();
    let mut again = SseClient::connect_with(
        addr,
        live,
        &[("Authorization", "Bearer erin-key-0123456789"), ("Last-Event-ID", &id)],
    )
    .await;
    assert_eq!(again.status, 200);
    ingest_ok(addr, &[json!({"type": "auth.failed", "data": {"accountName": "fourth"}})]).await;
    let got = again.collect(2, DEADLINE).await;
    let names: Vec<&str> = got.events.iter().map(|e| e["data"]["accountName"].as_str().unwrap()).collect();
    assert_eq!(names, vec!["second", "fourth"], "the resume under the new filter");
}

/// A webhook receiver that answers `200` and keeps every body.
async fn receiver() -> (SocketAddr, Arc<std::sync::Mutex<Vec<String>>>) {
    use http_body_util::BodyExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let bodies = Arc::new(std::sync::Mutex::new(Vec::new()));
    let kept = bodies.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            let kept = kept.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let kept = kept.clone();
                    async move {
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        kept.lock().unwrap().push(String::from_utf8_lossy(&body).into_owned());
                        let ok = http_body_util::Full::new(bytes::Bytes::from_static(b"ok"));
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(ok))
                    }
                });
                let io = hyper_util::rt::TokioIo::new(stream);
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, svc).await;
            });
        }
    });
    (addr, bodies)
}

/// A changed webhook keeps its spool and backlog: events spooled while its receiver was
/// unreachable go to the new URL after the reload, in order, followed by the new ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_webhook_keeps_its_backlog() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let hook = |url: &str, max_events: u32| {
        format!(
            "data-dir = \"{}\"\n\n[[webhook]]\nname = \"hook\"\nurl = \"{url}\"\nquery = \"event=auth.success\"\n\
             max-delay-ms = 10\nmax-events = {max_events}\nretry-initial-ms = 50\nretry-max-secs = 1\n",
            data.display()
        )
    };
    // Port 9 (discard) is closed on the loopback: every send fails and the batches wait.
    let (lt, path) = start(dir.path(), &hook("http://127.0.0.1:9/", 100), &[]);
    let addr = lt.addr;
    ingest_ok(addr, &[event("w1"), event("w2"), event("w3")]).await;
    // Spooled: the tap delivered them to the spool.
    let deadline = Instant::now() + DEADLINE;
    loop {
        let s = stats(addr).await;
        let spooled = s["taps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["name"] == "webhook:hook")
            .map_or(0, |t| t["delivered"].as_u64().unwrap());
        if spooled >= 3 {
            break;
        }
        assert!(Instant::now() < deadline, "the events were not spooled: {s}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (at, bodies) = receiver().await;
    let line = reload(&lt, &path, &hook(&format!("http://{at}/"), 2), 1).await;
    assert!(line.contains("changed webhook hook"), "{line}");
    ingest_ok(addr, &[event("w4")]).await;
    let deadline = Instant::now() + DEADLINE;
    let text = loop {
        let text = bodies.lock().unwrap().join("\n");
        if text.contains("w4") {
            break text;
        }
        assert!(Instant::now() < deadline, "the backlog and the new event did not arrive: {text:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let order: Vec<usize> = ["w1", "w2", "w3", "w4"].iter().map(|m| text.find(m).expect(m)).collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "in order: {text}");
}

/// `GET /api/livetap/alerts` with the admin token, polled until `pred` holds.
async fn alerts_until(addr: SocketAddr, what: &str, mut pred: impl FnMut(&Value) -> bool) -> Value {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let r = common::request_auth(addr, "GET", "/api/livetap/alerts", b"").await;
        assert_eq!(r.status, 200, "{}", r.text());
        let v = r.json();
        if pred(&v) {
            return v;
        }
        assert!(Instant::now() < deadline, "alerts never reached {what}: {v}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Alerts added by a reload start; an alert whose table did not change keeps its state (still
/// firing, since the same time, notified once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_keeps_the_state_of_unchanged_alerts() {
    let dir = tempfile::tempdir().unwrap();
    let seen = "alert-interval = \"200ms\"\n\n[[alert]]\nname = \"seen\"\ncondition = \"rate(auth.success, 1m) > 0\"\n";
    let (lt, path) = start(dir.path(), seen, &[]);
    let addr = lt.addr;
    // A rate needs a reading before the event: wait for the first evaluation.
    alerts_until(addr, "a first evaluation", |v| v["alerts"][0]["last_evaluated"].is_string()).await;
    ingest_ok(addr, &[event("a1")]).await;
    let firing = |v: &Value| v["alerts"][0]["state"] == "firing";
    let before = alerts_until(addr, "seen firing", firing).await;
    let since = before["alerts"][0]["since"].clone();
    assert_eq!(before["alerts"][0]["notifications"], 1, "{before}");

    let both = format!("{seen}\n[[alert]]\nname = \"other\"\ncondition = \"rate(auth.failed, 1m) > 1000\"\n");
    let line = reload(&lt, &path, &both, 1).await;
    assert!(line.contains("alerts: 2 in force"), "{line}");
    // Evaluated after the reload: both are listed, and `other` has been evaluated once.
    let after = alerts_until(addr, "two alerts, both evaluated", |v| {
        v["alerts"].as_array().is_some_and(|a| a.len() == 2 && a[1]["last_evaluated"].is_string())
    })
    .await;
    let a = &after["alerts"];
    assert_eq!(a[0]["name"], "seen");
    assert_eq!(a[0]["state"], "firing", "{after}");
    assert_eq!(a[0]["since"], since, "the unchanged alert kept its state: {after}");
    assert_eq!(a[0]["notifications"], 1, "not fired again: {after}");
    assert_eq!(a[1]["name"], "other");
    assert_eq!(a[1]["state"], "ok", "{after}");
}

/// A mail-log file source that a reload leaves unchanged keeps running where it was: a file
/// read from its start is not read again (no line twice), and lines appended after the
/// reload still arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unchanged_file_source_keeps_its_position() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("mail.log");
    std::fs::write(&log, "Dec  7 10:00:00 mx postfix/smtpd[4242]: connect from unknown[203.0.113.81]\n")
        .unwrap();
    let config = |limit: u32| {
        format!(
            "max-body-bytes = {limit}\n\n[[source]]\nkind = \"file\"\npath = \"{}\"\nfrom-start = true\n",
            log.display()
        )
    };
    let (lt, path) = start(dir.path(), &config(4_000_000), &[]);
    let addr = lt.addr;
    // The file is read from its start as soon as livetap runs, possibly before this stream
    // opens: resuming from the very first id gets the first line either way.
    let mut watch = SseClient::connect(addr, "/api/telemetry/traces/live?last-event-id=0", Some(TOKEN)).await;
    assert_eq!(watch.status, 200);
    wait_for_marker(&mut watch, "203.0.113.81").await;
    let line = reload(&lt, &path, &config(4_000_001), 1).await;
    assert!(line.contains("max-body-bytes") && !line.contains("source"), "the source is untouched: {line}");
    let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
    std::io::Write::write_all(
        &mut f,
        b"Dec  7 10:00:01 mx postfix/smtpd[4243]: connect from unknown[203.0.113.82]\n",
    )
    .unwrap();
    drop(f);
    let got = watch
        .collect_until(DEADLINE, |c| c.events.iter().any(|e| e.to_string().contains("203.0.113.82")))
        .await;
    let text: Vec<String> = got.events.iter().map(|e| e.to_string()).collect();
    assert!(text.iter().any(|t| t.contains("203.0.113.82")), "the appended line arrived: {text:?}");
    assert!(!text.iter().any(|t| t.contains("203.0.113.81")), "the first line was not read again: {text:?}");
}
