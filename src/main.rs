//! The `livetap` command line: parse flags, load the config, run the server until a signal
//! (SIGHUP reloads the configuration without dropping streams); `livetap hash-password` prints the
//! Argon2 hash of a password for a `[[principal]]`; `livetap history …` queries the stored
//! history and prints tables or JSON.

use anyhow::Context;
use clap::{Parser, Subcommand};
use livetap::auth::{resolve_admin_token, TokenOrigin};
use livetap::config::{Config, DemoTraffic, Overrides};
use livetap::event::catalogue::Generation;
use livetap::ingest::logsource::{
    FileSource, JournalConfig, ListenAddr, LogZone, SourceConfig, SyslogConfig,
};
use livetap::Server;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;

/// Live telemetry hub for mail servers: push events in, watch them live over SSE.
#[derive(Parser, Debug)]
#[command(name = "livetap", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// TOML configuration file; flags override its values.
    #[arg(long, short = 'c', value_name = "PATH")]
    config: Option<PathBuf>,
    /// Address to listen on (default 127.0.0.1:7070).
    #[arg(long, value_name = "ADDR:PORT")]
    listen: Option<SocketAddr>,
    /// Admin bearer token (default: generated, kept in --data-dir if given).
    #[arg(long, env = "LIVETAP_ADMIN_TOKEN", value_name = "TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// Key of Stalwart's webhook X-Signature; when set, signatures are required.
    #[arg(long, env = "LIVETAP_WEBHOOK_KEY", value_name = "KEY", hide_env_values = true)]
    webhook_key: Option<String>,
    /// Unix socket accepting NDJSON events.
    #[arg(long, value_name = "PATH")]
    ingest_socket: Option<PathBuf>,
    /// Directory for livetap's state (the generated admin token).
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Run the built-in generator of realistic mail-server traffic.
    #[arg(long)]
    demo: bool,
    /// Events per second of the demo generator (default 200).
    #[arg(long, value_name = "N")]
    demo_rate: Option<u32>,
    /// Stalwart catalogue generation the demo speaks: 0.15 (default) or 0.16 (v0.16 event names).
    #[arg(long, value_name = "0.15|0.16", value_parser = parse_generation)]
    demo_generation: Option<Generation>,
    /// What the demo shows: stalwart (default, generated Stalwart events) or postfix (recorded
    /// Postfix and Dovecot log lines replayed through the mail-log parser).
    #[arg(long, value_name = "stalwart|postfix", value_parser = parse_demo_traffic)]
    demo_traffic: Option<DemoTraffic>,
    /// Slots in the event ring (default 65536).
    #[arg(long, value_name = "N")]
    ring_capacity: Option<usize>,
    /// Events queued per subscriber before it lags (default 8192).
    #[arg(long, value_name = "N")]
    subscriber_queue: Option<usize>,
    /// Matcher threads (default: half the cores, at least one).
    #[arg(long, value_name = "N")]
    matcher_threads: Option<usize>,
    /// Async I/O threads for connections and streams (default: one per core).
    #[arg(long, value_name = "N")]
    io_threads: Option<usize>,
    /// Largest ingest request body in bytes (default 8388608).
    #[arg(long, value_name = "BYTES")]
    max_body_bytes: Option<usize>,
    /// Seconds without traffic before a ping frame (default 30).
    #[arg(long, value_name = "SECS")]
    ping_interval_secs: Option<u64>,
    /// Seconds a full subscriber queue is tolerated before disconnecting it (default 30).
    #[arg(long, value_name = "SECS")]
    stall_timeout_secs: Option<u64>,
    /// Log filter for livetap's own logs (default warn).
    #[arg(long, value_name = "FILTER")]
    log_level: Option<String>,
    /// Serve plain HTTP on a non-loopback --listen address (prefer [tls] in the config).
    #[arg(long)]
    allow_plain_http: bool,
    /// Follow a Postfix log file like `tail -F` (repeatable).
    #[arg(long, value_name = "PATH")]
    postfix_log: Vec<PathBuf>,
    /// Follow a Dovecot log file (its log_path) like `tail -F` (repeatable).
    #[arg(long, value_name = "PATH")]
    dovecot_log: Vec<PathBuf>,
    /// Read the log files and the journal from their start instead of their end.
    #[arg(long)]
    from_start: bool,
    /// Read Postfix's and Dovecot's entries from the systemd journal (journalctl).
    #[arg(long)]
    journal: bool,
    /// Receive syslog: udp://HOST:PORT, tcp://HOST:PORT or unix:///PATH (repeatable).
    #[arg(long, value_name = "ADDR", value_parser = parse_listen)]
    syslog_listen: Vec<ListenAddr>,
    /// Zone of log timestamps without one (Dec  7 13:00:00): local (default), UTC or +HH:MM.
    #[arg(long, value_name = "OFFSET", value_parser = parse_zone)]
    log_utc_offset: Option<LogZone>,
}

// Parsed once per process, so the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
enum Command {
    /// Print the Argon2 hash of a password (read from standard input, or asked for on a
    /// terminal) for `password-hash` in a `[[principal]]`.
    HashPassword,
    /// Query the history kept in the data directory (works while the server runs).
    History {
        /// The data directory holding `history.sqlite3` (default: `data-dir` of `--config`).
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
        /// The database file itself, instead of a data directory.
        #[arg(long, value_name = "FILE")]
        db: Option<PathBuf>,
        /// Print the API's JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[command(subcommand)]
        what: HistoryCommand,
    },
}

/// What `livetap history` lists. Times are RFC 3339 (`2026-11-01T00:00:00Z`), a date
/// (`2026-11-01`), or Unix seconds, as in the HTTP API.
#[derive(Subcommand, Debug)]
enum HistoryCommand {
    /// Stored traces (spans with a queue id), newest first.
    Traces {
        /// First event type of the span.
        #[arg(long = "type")]
        event_type: Option<String>,
        /// Queue id.
        #[arg(long)]
        queue_id: Option<String>,
        /// Keywords matched against from, to, domain, hostname and remote IP.
        #[arg(long)]
        filter: Option<String>,
        /// A domain (the same keyword search as `--filter`).
        #[arg(long)]
        domain: Option<String>,
        #[command(flatten)]
        window: Window,
    },
    /// Every stored event of one trace (span id from `livetap history traces`).
    Trace {
        /// The span id.
        id: u64,
    },
    /// Stored metric samples.
    Metrics {
        /// Names or globs (`queue.*`); none means all.
        names: Vec<String>,
        #[command(flatten)]
        window: Window,
    },
}

/// The time window and paging shared by the history lists (a trace's start, or a sample's
/// time).
#[derive(clap::Args, Debug)]
struct Window {
    /// Only items at or after this time.
    #[arg(long)]
    after: Option<String>,
    /// Only items before this time.
    #[arg(long)]
    before: Option<String>,
    /// Page, from 1.
    #[arg(long)]
    page: Option<usize>,
    /// Items per page.
    #[arg(long)]
    limit: Option<usize>,
}

/// Parses `--syslog-listen`.
fn parse_listen(s: &str) -> Result<ListenAddr, String> {
    s.parse().map_err(|e: livetap::ingest::logsource::SourceError| e.to_string())
}

/// Parses `--log-utc-offset`.
fn parse_zone(s: &str) -> Result<LogZone, String> {
    s.parse().map_err(|e: livetap::ingest::logsource::SourceError| e.to_string())
}

/// The mail-log sources given as flags.
fn flag_sources(cli: &Cli) -> Vec<SourceConfig> {
    let files = cli.postfix_log.iter().chain(&cli.dovecot_log);
    let mut out: Vec<SourceConfig> =
        files.map(|p| SourceConfig::File(FileSource { path: p.clone(), from_start: false })).collect();
    if cli.journal {
        out.push(SourceConfig::Journal(JournalConfig::default()));
    }
    out.extend(cli.syslog_listen.iter().map(|a| SourceConfig::Syslog(SyslogConfig { listen: a.clone() })));
    out
}

/// Parses `--demo-traffic` (`stalwart` or `postfix`).
fn parse_demo_traffic(s: &str) -> Result<DemoTraffic, String> {
    DemoTraffic::parse(s).ok_or_else(|| format!("`{s}`: expected stalwart or postfix"))
}

/// Parses `--demo-generation` (`0.15` or `0.16`).
fn parse_generation(s: &str) -> Result<Generation, String> {
    Generation::parse(s).ok_or_else(|| format!("`{s}`: expected 0.15 or 0.16"))
}

/// Runs `livetap history …` against the store directly, opened the way the server opens it
/// (`store::open_store`); the embedded store lets it read while a server writes.
fn history(
    config_path: Option<&std::path::Path>,
    data_dir: Option<PathBuf>,
    db: Option<PathBuf>,
    json: bool,
    what: HistoryCommand,
) -> anyhow::Result<()> {
    use livetap::store::{write_json_array, HistoryConfig, MetricQuery, TraceQuery};
    let (settings, path) = match db {
        // A database file named on the command line is read with the default settings, so
        // reading one needs no config file.
        Some(p) => (HistoryConfig::default(), p),
        None => {
            let config = Config::load(config_path, Overrides { data_dir, ..Overrides::default() })?;
            let path = config
                .history
                .resolve_path(config.data_dir.as_deref())
                .context("no history database: pass --data-dir DIR or --db FILE")?;
            (config.history, path)
        }
    };
    anyhow::ensure!(path.exists(), "no history database at {}", path.display());
    let store = livetap::store::open_store(&settings, &path)
        .with_context(|| format!("opening {}", path.display()))?;
    // The same parameter parsing as the HTTP API, so both answer the same way.
    let mut q = form_urlencoded::Serializer::new(String::new());
    let mut add = |k: &str, v: Option<String>| {
        if let Some(v) = v {
            q.append_pair(k, &v);
        }
    };
    let mut out = std::io::stdout().lock();
    match what {
        HistoryCommand::Traces { event_type, queue_id, filter, domain, window: w } => {
            let keywords = [filter, domain].into_iter().flatten().collect::<Vec<_>>().join(" ");
            add("type", event_type);
            add("queue_id", queue_id);
            add("filter", (!keywords.is_empty()).then_some(keywords));
            window(&mut add, w);
            let page = store.traces(&TraceQuery::from_query_string(&q.finish())?)?;
            if json {
                return print_json(&mut out, &livetap::store::Data { data: &page });
            }
            let rows = page.items.iter().map(|t| {
                let v = serde_json::to_value(t).unwrap_or_default();
                let s = |k: &str| v[k].as_str().map(str::to_owned).unwrap_or_else(|| v[k].to_string());
                [s("id"), s("startedAt"), s("type"), s("queueId"), s("events")]
            });
            table(&mut out, ["SPAN", "STARTED", "FIRST EVENT", "QUEUE ID", "EVENTS"], rows)?;
            writeln!(out, "{} of {} traces", page.items.len(), page.total)?;
        }
        HistoryCommand::Trace { id } => {
            let events = store.trace(id)?;
            anyhow::ensure!(!events.is_empty(), "no stored trace {id}");
            let mut body = Vec::new();
            write_json_array(&events, &mut body);
            let list: Vec<serde_json::Value> = serde_json::from_slice(&body)?;
            if json {
                return print_json(&mut out, &serde_json::json!({ "data": list }));
            }
            let rows = list.iter().map(|e| {
                let data = e["data"].as_object().map(|m| {
                    m.iter()
                        .map(|(k, v)| format!("{k}={}", v.as_str().map_or(v.to_string(), str::to_owned)))
                        .collect::<Vec<_>>()
                        .join(" ")
                });
                [
                    e["createdAt"].as_str().unwrap_or("").to_owned(),
                    e["level"].as_str().unwrap_or("").to_owned(),
                    e["type"].as_str().unwrap_or("").to_owned(),
                    data.unwrap_or_default(),
                ]
            });
            table(&mut out, ["CREATED", "LEVEL", "TYPE", "DATA"], rows)?;
        }
        HistoryCommand::Metrics { names, window: w } => {
            add("metrics", (!names.is_empty()).then(|| names.join(",")));
            window(&mut add, w);
            let page = store.metrics(&MetricQuery::from_query_string(&q.finish())?)?;
            if json {
                return print_json(&mut out, &livetap::store::Data { data: &page });
            }
            let rows = page.items.iter().map(|p| {
                let v = serde_json::to_value(p).unwrap_or_default();
                let value = match (v.get("value"), v.get("count")) {
                    (Some(x), _) => x.to_string(),
                    (None, Some(c)) => format!("count={c} sum={}", v["sum"]),
                    _ => String::new(),
                };
                [
                    v["timestamp"].as_str().map_or(v["timestamp"].to_string(), str::to_owned),
                    v["id"].as_str().unwrap_or("").to_owned(),
                    v["type"].as_str().unwrap_or("").to_owned(),
                    value,
                ]
            });
            table(&mut out, ["TIME", "METRIC", "KIND", "VALUE"], rows)?;
            writeln!(out, "{} of {} samples", page.items.len(), page.total)?;
        }
    }
    Ok(())
}

/// Adds the time window and paging parameters shared by the history lists.
fn window(add: &mut impl FnMut(&str, Option<String>), w: Window) {
    add("after", w.after);
    add("before", w.before);
    add("page", w.page.map(|p| p.to_string()));
    add("limit", w.limit.map(|l| l.to_string()));
}

/// Prints the API's JSON answer, indented.
fn print_json(out: &mut impl Write, v: &impl serde::Serialize) -> anyhow::Result<()> {
    serde_json::to_writer_pretty(&mut *out, v)?;
    writeln!(out)?;
    Ok(())
}

/// Prints rows under a header, each column as wide as its widest cell.
fn table<const N: usize>(
    out: &mut impl Write,
    header: [&str; N],
    rows: impl Iterator<Item = [String; N]>,
) -> std::io::Result<()> {
    let rows: Vec<[String; N]> = rows.collect();
    let mut width = header.map(str::len);
    for r in &rows {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |out: &mut dyn Write, cells: &[&str]| -> std::io::Result<()> {
        let mut text = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 < N {
                text.push_str(&format!("{c:<w$}  ", w = width[i]));
            } else {
                text.push_str(c);
            }
        }
        writeln!(out, "{}", text.trim_end())
    };
    line(out, &header)?;
    for r in &rows {
        line(out, &r.iter().map(String::as_str).collect::<Vec<_>>())?;
    }
    Ok(())
}

/// Reads the password: one line from standard input, or twice from the terminal with echo off.
fn read_password() -> anyhow::Result<String> {
    use std::io::{BufRead, IsTerminal};
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        let mut line = String::new();
        stdin.lock().read_line(&mut line)?;
        return Ok(line.trim_end_matches(['\n', '\r']).to_owned());
    }
    let first = prompt("Password: ")?;
    let second = prompt("Again: ")?;
    anyhow::ensure!(first == second, "the passwords differ");
    Ok(first)
}

/// Asks for one line on the terminal with echo turned off (and back on afterwards).
fn prompt(label: &str) -> anyhow::Result<String> {
    use std::io::BufRead;
    eprint!("{label}");
    std::io::stderr().flush()?;
    let fd = libc::STDIN_FILENO;
    // SAFETY: tcgetattr/tcsetattr only read and write the termios struct passed by pointer.
    let saved = unsafe {
        let mut t: libc::termios = std::mem::zeroed();
        if libc::tcgetattr(fd, &mut t) != 0 {
            None
        } else {
            let saved = t;
            t.c_lflag &= !libc::ECHO;
            libc::tcsetattr(fd, libc::TCSANOW, &t);
            Some(saved)
        }
    };
    let mut line = String::new();
    let read = std::io::stdin().lock().read_line(&mut line);
    if let Some(t) = saved {
        // SAFETY: as above; restores the settings read before.
        unsafe { libc::tcsetattr(fd, libc::TCSANOW, &t) };
    }
    eprintln!();
    read?;
    Ok(line.trim_end_matches(['\n', '\r']).to_owned())
}

/// Turns transparent huge pages off for this process.
///
/// The allocator asks for huge pages on its arenas (`madvise`), and with the common kernel
/// setting `defrag = madvise` a fault on such a region may compact memory synchronously before
/// it clears 2 MiB. Ingest allocates fresh memory as the ring and the replay log fill, so those
/// faults landed on the parsing thread: stalls of about 6 ms several times a second, which
/// were the p99 of a hub at 12,600 events/s (5.1 ms, against 0.34 ms without them;
/// `perf/RESULTS.md` §9). The one process livetap starts, the journal source's `journalctl`,
/// inherits the flag, which costs it nothing.
#[cfg(target_os = "linux")]
fn disable_transparent_huge_pages() {
    // SAFETY: `prctl(PR_SET_THP_DISABLE, 1, 0, 0, 0)` only sets a flag on this process; it
    // reads no memory. A kernel that lacks it answers EINVAL, which changes nothing.
    unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
}

/// Other systems have no transparent huge pages to turn off.
#[cfg(not(target_os = "linux"))]
fn disable_transparent_huge_pages() {}

/// Descriptor slots the table is sized for at start-up: enough for about 65,000 connections,
/// 512 KiB of kernel memory.
#[cfg(target_os = "linux")]
const FD_TABLE_SLOTS: u64 = 65_536;

/// Raises the soft limit on open files to the hard limit, and grows the descriptor table to
/// [`FD_TABLE_SLOTS`] (or that limit) now, while the process has a single thread.
///
/// A hub holds a descriptor per subscriber, and the kernel's default soft limit (1,024 under
/// systemd) would refuse connections long before the hard limit does. The kernel grows a
/// process's descriptor table by doubling, and when other threads share the table it waits for
/// an RCU grace period before freeing the old one. On this kind of machine that kept an
/// `accept` call, and the I/O thread making it, blocked for 15-18 ms each time the number of
/// descriptors passed a power of two: with about 1,024 connections, it was the slow start of
/// `fanout-1k` (`perf/RESULTS.md` §14.5). Growing it before any thread exists costs no wait.
#[cfg(target_os = "linux")]
fn prepare_descriptor_table() {
    use std::os::fd::AsRawFd;
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `getrlimit` writes one `rlimit` that lives on this stack.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return;
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
        // SAFETY: `setrlimit` reads one `rlimit`; raising the soft limit up to the hard one
        // needs no privilege, and a refusal (an unlimited hard limit above `nr_open`) leaves
        // the soft limit as it was.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            lim.rlim_cur = lim.rlim_max;
        }
    }
    let highest = lim.rlim_cur.min(FD_TABLE_SLOTS).saturating_sub(1);
    let Ok(null) = std::fs::File::open("/dev/null") else { return };
    // SAFETY: `F_DUPFD_CLOEXEC` duplicates a descriptor this function owns onto the lowest free
    // number at or above `highest`, growing the table to cover it; the copy is closed at once.
    unsafe {
        let fd = libc::fcntl(null.as_raw_fd(), libc::F_DUPFD_CLOEXEC, highest as libc::c_int);
        if fd >= 0 {
            libc::close(fd);
        }
    }
}

/// Other systems keep their defaults.
#[cfg(not(target_os = "linux"))]
fn prepare_descriptor_table() {}

fn main() -> anyhow::Result<()> {
    disable_transparent_huge_pages();
    let cli = Cli::parse();
    match cli.command {
        Some(Command::HashPassword) => {
            let password = read_password()?;
            let hash = livetap::auth::password::hash_password(&password)?;
            println!("{hash}");
            return Ok(());
        }
        Some(Command::History { data_dir, db, json, what }) => {
            return history(cli.config.as_deref(), data_dir.or(cli.data_dir), db, json, what);
        }
        None => {}
    }
    let sources = flag_sources(&cli);
    let overrides = Overrides {
        listen: cli.listen,
        admin_token: cli.admin_token,
        webhook_key: cli.webhook_key,
        ingest_socket: cli.ingest_socket,
        data_dir: cli.data_dir,
        demo: cli.demo.then_some(true),
        demo_rate: cli.demo_rate,
        demo_generation: cli.demo_generation,
        demo_traffic: cli.demo_traffic,
        ring_capacity: cli.ring_capacity,
        subscriber_queue: cli.subscriber_queue,
        matcher_threads: cli.matcher_threads,
        io_threads: cli.io_threads,
        max_body_bytes: cli.max_body_bytes,
        ping_interval_secs: cli.ping_interval_secs,
        stall_timeout_secs: cli.stall_timeout_secs,
        log_level: cli.log_level,
        allow_plain_http: cli.allow_plain_http.then_some(true),
        sources,
        from_start: cli.from_start,
        log_utc_offset: cli.log_utc_offset,
    };
    let config = Config::load(cli.config.as_deref(), overrides.clone())?;
    // SIGHUP reads the same file again with the same flags.
    let reload_from = (cli.config.clone(), overrides);
    // A log file read from its start reports its progress at `info`, which the default `warn`
    // would hide from the one who asked for it.
    let catching_up = config.source.iter().any(|s| matches!(s, SourceConfig::File(f) if f.from_start));
    let level = if catching_up && config.log_level == "warn" {
        "warn,livetap::ingest::tail=info".to_string()
    } else {
        config.log_level.clone()
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&level))
        .context("invalid log-level")?;
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    let (token, origin) = resolve_admin_token(config.admin_token.as_deref(), config.data_dir.as_deref())
        .context("cannot create or read the admin token")?;
    // Before the runtime starts its threads (see the function).
    prepare_descriptor_table();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.effective_io_threads())
        .enable_all()
        .thread_name("livetap-io")
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(run(config, token, origin, reload_from))
}

async fn run(
    config: Config,
    token: String,
    origin: TokenOrigin,
    reload_from: (Option<PathBuf>, Overrides),
) -> anyhow::Result<()> {
    let demo = config.demo.then_some((config.demo_rate, config.demo_generation, config.demo_traffic));
    let socket = config.ingest_socket.clone();
    let listen = config.listen;
    let server = Server::start(config, token.clone())
        .await
        .with_context(|| format!("cannot start livetap (HTTP on {listen})"))?;
    let scheme = if server.is_tls() { "https" } else { "http" };
    let base = format!("{scheme}://{}", server.addr);
    let shown = match origin {
        TokenOrigin::Generated => {
            format!("{token}  (generated for this run; set admin-token or --data-dir to keep one)")
        }
        TokenOrigin::Stored => format!("{token}  (kept in the data directory)"),
        TokenOrigin::Configured => "(as configured)".to_string(),
    };
    let mut out = std::io::stdout().lock();
    writeln!(out, "livetap {} listening on {base}", env!("CARGO_PKG_VERSION"))?;
    writeln!(out, "  admin token: {shown}")?;
    if let Some((rate, _, DemoTraffic::Postfix)) = demo {
        writeln!(out, "  demo: {rate} lines/s of recorded Postfix and Dovecot logs, replayed")?;
    } else if let Some((rate, generation, _)) = demo {
        let names = match generation {
            Generation::V015 => String::new(),
            generation => format!(", Stalwart v{generation} event names"),
        };
        writeln!(out, "  demo generator: {rate} events/s of simulated mail traffic{names}")?;
    }
    if let Some(p) = socket {
        writeln!(out, "  NDJSON socket: {}", p.display())?;
    }
    for source in &server.log_sources {
        writeln!(out, "  mail log:    {source}")?;
    }
    writeln!(out, "  dashboard:   {base}/")?;
    writeln!(out, "  watch live:  {base}/api/telemetry/traces/live")?;
    writeln!(
        out,
        "  try:  curl -N -H 'Authorization: Bearer {}' '{base}/api/telemetry/traces/live?filter=smtp'",
        if origin == TokenOrigin::Configured { "TOKEN" } else { &token }
    )?;
    out.flush()?;
    drop(out);

    wait_for_signals(&server, reload_from).await?;
    eprintln!("livetap: shutting down, draining accepted events to subscribers");
    server.shutdown().await;
    Ok(())
}

/// Returns at SIGINT or SIGTERM; reloads at SIGHUP: the config file is read again with the
/// same flags (`reload_from`), and what changed is put in force (`Server::reload`).
async fn wait_for_signals(server: &Server, reload_from: (Option<PathBuf>, Overrides)) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let (path, overrides) = reload_from;
    loop {
        tokio::select! {
            _ = term.recv() => return Ok(()),
            _ = int.recv() => return Ok(()),
            _ = hup.recv() => match server.reload(path.as_deref(), overrides.clone()).await {
                Ok(r) => eprintln!("livetap: reloaded: {r}"),
                Err(e) => eprintln!("livetap: reload failed, keeping the running configuration: {e}"),
            },
        }
    }
}
