//! The `livetap` command line: parse flags, load the config, set up the logs, run the server
//! until a signal (SIGHUP reloads the configuration without dropping streams), telling systemd
//! about each step (`livetap::service`); `livetap hash-password` prints the Argon2 hash of a password
//! for a `[[principal]]`; `livetap history …` queries the stored history and prints tables or
//! JSON; `livetap check-config` validates a config and prints the effective settings
//! (`config::check`); `livetap man DIR` and `livetap completions SHELL` write the manual pages
//! and the shell completions.

use anyhow::Context;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use livetap::auth::{resolve_admin_token, TokenOrigin};
use livetap::config::{Config, DemoTraffic, LogFormat, Overrides};
use livetap::event::catalogue::Generation;
use livetap::ingest::logsource::{
    FileSource, JournalConfig, ListenAddr, LogZone, SourceConfig, SyslogConfig,
};
use livetap::service::Notifier;
use livetap::store::datadir::{DataDir, Opened};
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
    /// Directory for livetap's state (history, id lease, webhook spools, tokens); versioned and
    /// locked (README, "Data directory format").
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
    /// Format of livetap's own logs on stderr: text (default; without timestamp and colours
    /// under journald) or json (one object per line).
    #[arg(long, value_name = "text|json", value_parser = parse_log_format)]
    log_format: Option<LogFormat>,
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
    /// Validate a config the way the server would at start-up, without starting anything, and
    /// print the effective settings with their origins (secrets masked). Flags given before
    /// `check-config` (`livetap --listen … check-config`) apply as they do to the server.
    /// Exits 1 when there are errors.
    CheckConfig {
        /// The TOML configuration file (default: the global `--config`).
        #[arg(long, short = 'c', value_name = "PATH")]
        config: Option<PathBuf>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
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
    /// Write the manual pages (livetap.1 and one page per subcommand) into a directory.
    Man {
        /// The directory (created if missing).
        dir: PathBuf,
    },
    /// Print the completion script of a shell on standard output.
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
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

/// Parses `--log-format` (`text` or `json`).
fn parse_log_format(s: &str) -> Result<LogFormat, String> {
    LogFormat::parse(s).ok_or_else(|| format!("`{s}`: expected text or json"))
}

/// Writes `livetap.1` and a page per subcommand (`livetap-history-traces.1`) into `dir`, and
/// prints each file's path.
fn write_man_pages(dir: &std::path::Path) -> anyhow::Result<()> {
    use clap::CommandFactory;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    clap_mangen::generate_to(Cli::command(), dir)
        .with_context(|| format!("cannot write the manual pages into {}", dir.display()))?;
    let mut pages: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "1"))
        .collect();
    pages.sort();
    let mut out = std::io::stdout().lock();
    for p in pages {
        writeln!(out, "{}", p.display())?;
    }
    Ok(())
}

/// Sets up livetap's own logs on stderr, in `format`, filtered by `level` (or `RUST_LOG`).
///
/// Under journald (`$JOURNAL_STREAM` names stderr) a text line carries no timestamp (the
/// journal stamps each line) and no colours, and starts with the syslog priority (`<4>`),
/// which journald turns into the entry's priority (`journalctl -p warning`). Colours are
/// otherwise used only on a terminal. The `livetap::service` target (start-up, reload and
/// shutdown lines) is always enabled at `info`, whatever the filter, so the default `warn`
/// does not hide what the service is doing.
fn init_logging(level: &str, format: LogFormat) -> anyhow::Result<()> {
    use std::io::IsTerminal;
    use tracing_subscriber::fmt::format::FmtSpan;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(level))
        .context("invalid log-level")?
        .add_directive("livetap::service=info".parse().context("service log directive")?);
    let journal = stderr_is_journal();
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .with_span_events(FmtSpan::NONE)
            .with_ansi(false)
            .init(),
        LogFormat::Text if journal => builder
            .with_ansi(false)
            .event_format(JournalPriority(tracing_subscriber::fmt::format().without_time().with_ansi(false)))
            .init(),
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
    }
    Ok(())
}

/// True when `fd` is the journal stream systemd connected (`$JOURNAL_STREAM` is
/// `DEVICE:INODE` of that stream); an output redirected elsewhere by the admin does not count.
fn is_journal(fd: std::os::fd::BorrowedFd<'_>) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(value) = std::env::var("JOURNAL_STREAM") else { return false };
    let Some((dev, ino)) = value.split_once(':') else { return false };
    let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else { return false };
    let Ok(fd) = fd.try_clone_to_owned() else { return false };
    match std::fs::File::from(fd).metadata() {
        Ok(m) => m.dev() == dev && m.ino() == ino,
        Err(_) => false,
    }
}

/// [`is_journal`] for stderr, where the logs go.
fn stderr_is_journal() -> bool {
    use std::os::fd::AsFd;
    is_journal(std::io::stderr().as_fd())
}

/// A text event format prefixed with the record's syslog priority (`<3>` error, `<4>`
/// warning, `<6>` info, `<7>` debug and trace), which journald reads off each line.
struct JournalPriority<F>(F);

impl<S, N, F> tracing_subscriber::fmt::FormatEvent<S, N> for JournalPriority<F>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
    F: tracing_subscriber::fmt::FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let priority = match *event.metadata().level() {
            tracing::Level::ERROR => 3,
            tracing::Level::WARN => 4,
            tracing::Level::INFO => 6,
            _ => 7,
        };
        write!(writer, "<{priority}>")?;
        self.0.format_event(ctx, writer, event)
    }
}

/// A webhook's URL without credentials or query string (either may hold a secret), for the
/// start-up log line.
fn redact_url(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let rest = rest.split(['?', '#']).next().unwrap_or("");
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let host = authority.rsplit('@').next().unwrap_or("");
    format!("{scheme}://{host}/{path}")
}

/// Logs the one start-up line (target `livetap::service`, always enabled): the effective
/// listen addresses, the sources, the sinks and the webhooks.
fn log_started(server: &Server, base: &str) {
    use livetap::tap::sink::SinkKind;
    let config = &server.hub.config;
    let none = || vec!["none".to_string()];
    let or_none = |v: Vec<String>| if v.is_empty() { none() } else { v };
    let socket = config.ingest_socket.as_ref().map_or("none".to_string(), |p| p.display().to_string());
    let syslog: Vec<String> =
        server.log_sources.iter().filter_map(|d| d.strip_prefix("syslog ").map(str::to_owned)).collect();
    let mut sources: Vec<String> = server.log_sources.clone();
    if config.ingest_socket.is_some() {
        sources.insert(0, format!("ndjson socket {socket}"));
    }
    if config.demo {
        sources.push(format!("demo {:?} {}/s", config.demo_traffic, config.demo_rate));
    }
    let sinks: Vec<String> = config
        .sink
        .iter()
        .map(|s| match (&s.kind, &s.path) {
            (SinkKind::File, Some(p)) => format!("{} file {}", s.name, p.display()),
            (SinkKind::File, None) => format!("{} file", s.name),
            (SinkKind::Stdout, _) => format!("{} stdout", s.name),
        })
        .collect();
    let webhooks: Vec<String> =
        config.webhook.iter().map(|w| format!("{} {}", w.name, redact_url(&w.url))).collect();
    let data_dir = config.data_dir.as_ref().map_or("none".to_string(), |p| p.display().to_string());
    tracing::info!(
        target: "livetap::service",
        version = env!("CARGO_PKG_VERSION"),
        http = %base,
        ndjson_socket = %socket,
        syslog = ?or_none(syslog),
        sources = ?or_none(sources),
        sinks = ?or_none(sinks),
        webhooks = ?or_none(webhooks),
        data_dir = %data_dir,
        "livetap started"
    );
}

/// Parses `--demo-traffic` (`stalwart` or `postfix`).
fn parse_demo_traffic(s: &str) -> Result<DemoTraffic, String> {
    DemoTraffic::parse(s).ok_or_else(|| format!("`{s}`: expected stalwart or postfix"))
}

/// Parses `--demo-generation` (`0.15` or `0.16`).
fn parse_generation(s: &str) -> Result<Generation, String> {
    Generation::parse(s).ok_or_else(|| format!("`{s}`: expected 0.15 or 0.16"))
}

/// The settings the command line gives (flags, and `LIVETAP_*` variables).
fn overrides(cli: &Cli) -> Overrides {
    Overrides {
        listen: cli.listen,
        admin_token: cli.admin_token.clone(),
        webhook_key: cli.webhook_key.clone(),
        ingest_socket: cli.ingest_socket.clone(),
        data_dir: cli.data_dir.clone(),
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
        log_level: cli.log_level.clone(),
        log_format: cli.log_format,
        allow_plain_http: cli.allow_plain_http.then_some(true),
        sources: flag_sources(cli),
        from_start: cli.from_start,
        log_utc_offset: cli.log_utc_offset,
    }
}

/// Exit status of a start refused for a data directory written by a newer livetap
/// (`EX_CONFIG` of sysexits.h: restarting will not help, so a service manager can stop trying).
const EXIT_CONFIG: u8 = 78;

/// Runs `livetap check-config`: prints the report and returns whether it found no error.
fn check_config(
    path: Option<&std::path::Path>,
    json: bool,
    cli: &Cli,
    matches: &clap::ArgMatches,
) -> anyhow::Result<bool> {
    use livetap::config::check::Origin;
    // The flags' ids are the field names; the config keys are their kebab-case forms.
    let mut origins = std::collections::BTreeMap::new();
    for id in matches.ids() {
        let source = matches.value_source(id.as_str());
        let origin = match source {
            Some(clap::parser::ValueSource::EnvVariable) => Origin::Env,
            Some(clap::parser::ValueSource::CommandLine) => Origin::Flag,
            _ => continue,
        };
        origins.insert(id.as_str().replace('_', "-"), origin);
    }
    let report = livetap::config::check::check(path, overrides(cli), &origins);
    let mut out = std::io::stdout().lock();
    if json {
        print_json(&mut out, &report.to_json())?;
    } else {
        write!(out, "{}", report.to_text())?;
    }
    Ok(report.ok())
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
            // Read-only: no migration and no lock (a server may hold it), but a directory in a
            // newer format is refused rather than misread.
            if let Some(dir) = &config.data_dir {
                livetap::store::datadir::inspect(dir)?;
            }
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

fn main() -> anyhow::Result<std::process::ExitCode> {
    // First, while the process has one thread: it takes the variables out of the environment.
    let notifier = Notifier::from_env();
    disable_transparent_huge_pages();
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    match cli.command {
        Some(Command::CheckConfig { ref config, json }) => {
            let path = config.clone().or_else(|| cli.config.clone());
            let ok = check_config(path.as_deref(), json, &cli, &matches)?;
            return Ok(if ok { std::process::ExitCode::SUCCESS } else { std::process::ExitCode::FAILURE });
        }
        Some(Command::Man { dir }) => {
            write_man_pages(&dir)?;
            return Ok(std::process::ExitCode::SUCCESS);
        }
        Some(Command::Completions { shell }) => {
            let mut cmd = Cli::command();
            // Into memory first: the generator panics on a failed write (a closed pipe), and a
            // write error here is an ordinary error.
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut cmd, "livetap", &mut script);
            std::io::stdout().lock().write_all(&script).context("writing the completions")?;
            return Ok(std::process::ExitCode::SUCCESS);
        }
        Some(Command::HashPassword) => {
            let password = read_password()?;
            let hash = livetap::auth::password::hash_password(&password)?;
            println!("{hash}");
            return Ok(std::process::ExitCode::SUCCESS);
        }
        Some(Command::History { data_dir, db, json, what }) => {
            history(cli.config.as_deref(), data_dir.or(cli.data_dir), db, json, what)?;
            return Ok(std::process::ExitCode::SUCCESS);
        }
        None => {}
    }
    let config = Config::load(cli.config.as_deref(), overrides(&cli))?;
    // SIGHUP reads the same file again with the same flags.
    let reload_from = (cli.config.clone(), overrides(&cli));
    // A log file read from its start reports its progress at `info`, which the default `warn`
    // would hide from the one who asked for it.
    let catching_up = config.source.iter().any(|s| matches!(s, SourceConfig::File(f) if f.from_start));
    let level = if catching_up && config.log_level == "warn" {
        "warn,livetap::ingest::tail=info".to_string()
    } else {
        config.log_level.clone()
    };
    init_logging(&level, config.log_format)?;
    // A malformed NOTIFY_SOCKET is the service manager's problem, not a reason not to run.
    let notifier = notifier.unwrap_or_else(|e| {
        tracing::warn!(target: "livetap::service", error = %e, "not notifying the service manager");
        Notifier::default()
    });
    // The data directory is opened (versioned, migrated, locked) before anything reads it,
    // the admin token kept there included.
    let data_dir = match livetap::http::server::open_data_dir(&config) {
        Ok(d) => d,
        Err(e) => {
            // A log event like every other line, so `log-format = "json"` stays one object per
            // line; the `livetap::service` target is always shown.
            tracing::error!(target: "livetap::service", "{e}");
            let newer = matches!(e, livetap::store::datadir::DataDirError::Newer { .. });
            return Ok(std::process::ExitCode::from(if newer { EXIT_CONFIG } else { 1 }));
        }
    };
    if let Some(d) = &data_dir {
        let (path, format) = (d.path().display(), livetap::store::datadir::FORMAT);
        match d.opened() {
            Opened::Created => {
                tracing::info!(target: "livetap::service", "created data directory {path} (format {format})")
            }
            Opened::Migrated { from } => tracing::info!(
                target: "livetap::service",
                "migrated data directory {path} from format {from} to {format}"
            ),
            Opened::Current => {}
        }
    }
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
    runtime.block_on(run(config, token, origin, data_dir, notifier, reload_from))?;
    Ok(std::process::ExitCode::SUCCESS)
}

async fn run(
    config: Config,
    token: String,
    origin: TokenOrigin,
    data_dir: Option<DataDir>,
    notifier: Notifier,
    reload_from: (Option<PathBuf>, Overrides),
) -> anyhow::Result<()> {
    let demo = config.demo.then_some((config.demo_rate, config.demo_generation, config.demo_traffic));
    let socket = config.ingest_socket.clone();
    let data_path = config.data_dir.clone();
    let listen = config.listen;
    let server = Server::start_in(config, token.clone(), data_dir)
        .await
        .with_context(|| format!("cannot start livetap (HTTP on {listen})"))?;
    // The handlers are in place before anything says livetap is up (the banner, the start-up
    // line, READY=1): a service manager or a script may send SIGTERM or SIGHUP the moment it
    // reads one, and without them the signal's default action would end livetap without
    // draining. A signal that arrives now waits for `wait_for_signals`.
    let signals = Signals::install()?;
    let scheme = if server.is_tls() { "https" } else { "http" };
    let base = format!("{scheme}://{}", server.addr);
    // The journal is readable by the adm and systemd-journal groups: a token kept in the data
    // directory is not copied there (it is read from the file), only one that exists nowhere
    // else is.
    let journal = {
        use std::os::fd::AsFd;
        is_journal(std::io::stdout().as_fd())
    };
    let shown = match (origin, &data_path) {
        (TokenOrigin::Generated | TokenOrigin::Stored, Some(dir)) if journal => {
            format!("(kept in {}; not printed to the journal)", dir.join("admin-token").display())
        }
        (TokenOrigin::Generated, _) => {
            format!("{token}  (generated for this run; set admin-token or --data-dir to keep one)")
        }
        (TokenOrigin::Stored, _) => format!("{token}  (kept in the data directory)"),
        (TokenOrigin::Configured, _) => "(as configured)".to_string(),
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
        if origin == TokenOrigin::Configured || (journal && data_path.is_some()) { "TOKEN" } else { &token }
    )?;
    out.flush()?;
    drop(out);
    log_started(&server, &base);
    // Ready: the listener is bound and every source and tap runs (`Server::start` returned).
    let watchdog = tokio::spawn(livetap::service::watchdog(notifier.clone(), server.hub.clone()));
    notify(notifier.ready(&format!("listening on {base}")));

    wait_for_signals(signals, &server, &notifier, reload_from).await?;
    notify(notifier.stopping("draining accepted events to subscribers"));
    tracing::info!(target: "livetap::service", "shutting down, draining accepted events to subscribers");
    server.shutdown().await;
    watchdog.abort();
    Ok(())
}

/// Logs a notification that could not be sent (systemd then times the service out, which
/// the log explains).
fn notify(sent: Result<(), livetap::service::NotifyError>) {
    if let Err(e) = sent {
        tracing::warn!(target: "livetap::service", error = %e, "service manager not notified");
    }
}

/// The signals livetap handles, listened for from [`Signals::install`] on.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    /// Replaces the default actions of SIGTERM, SIGINT and SIGHUP (which end the process).
    fn install() -> std::io::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
        })
    }
}

/// Returns at SIGINT or SIGTERM; reloads at SIGHUP, between `RELOADING=1` and `READY=1`: the
/// config file is read again with the same flags (`reload_from`), and what changed is put in
/// force (`Server::reload`).
async fn wait_for_signals(
    signals: Signals,
    server: &Server,
    notifier: &Notifier,
    reload_from: (Option<PathBuf>, Overrides),
) -> anyhow::Result<()> {
    let Signals { mut term, mut int, mut hup } = signals;
    let (path, overrides) = reload_from;
    loop {
        tokio::select! {
            _ = term.recv() => return Ok(()),
            _ = int.recv() => return Ok(()),
            _ = hup.recv() => {
                notify(notifier.reloading());
                let status = match server.reload(path.as_deref(), overrides.clone()).await {
                    Ok(r) => {
                        tracing::info!(target: "livetap::service", "reloaded: {r}");
                        format!("reloaded: {r}")
                    }
                    Err(e) => {
                        tracing::error!(target: "livetap::service", "reload failed, keeping the running configuration: {e}");
                        format!("reload failed, running with the previous configuration: {e}")
                    }
                };
                // Ready again either way: a failed reload leaves the running configuration in place.
                notify(notifier.ready(&status));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn webhook_urls_lose_credentials_and_query_in_the_start_up_line() {
        assert_eq!(
            redact_url("https://user:pw@siem.example.org:8443/in?token=x#f"),
            "https://siem.example.org:8443/in"
        );
        assert_eq!(redact_url("http://127.0.0.1:9000"), "http://127.0.0.1:9000/");
        assert_eq!(redact_url("http://h/a/b@c"), "http://h/a/b@c");
    }
}
