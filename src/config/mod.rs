//! Configuration: the TOML file, command-line overrides, defaults, and validation.
//!
//! Every setting has a safe default so `livetap` runs with no file at all (bound to loopback,
//! with a generated admin token). Flags override the file; the README documents each key.
//! `memory.rs` turns the limits into the worst-case memory bound documented in SECURITY.md.

pub mod check;
pub mod memory;

use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema.
    #[error("invalid config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A value is out of range.
    #[error("invalid setting `{key}`: {message}")]
    Invalid {
        /// The setting.
        key: &'static str,
        /// What is wrong.
        message: String,
    },
}

/// One problem [`Config::problems`] found: the setting, the element when the setting is an
/// array of tables, and the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The top-level key (`ring-capacity`, `principal`, …).
    pub key: &'static str,
    /// Which `[[key]]` table, counted from 0, when the problem is in one.
    pub index: Option<usize>,
    /// What is wrong, and how to fix it.
    pub message: String,
}

impl From<Problem> for ConfigError {
    fn from(p: Problem) -> ConfigError {
        ConfigError::Invalid { key: p.key, message: p.message }
    }
}

/// The problems found so far, in order.
#[derive(Debug, Default)]
struct Problems(Vec<Problem>);

impl Problems {
    /// A problem with a whole setting.
    fn bad(&mut self, key: &'static str, message: impl Into<String>) {
        self.0.push(Problem { key, index: None, message: message.into() });
    }

    /// A problem with the `index`th table of `key`.
    fn at(&mut self, key: &'static str, index: usize, message: impl Into<String>) {
        self.0.push(Problem { key, index: Some(index), message: message.into() });
    }

    /// A problem another module's validation reported.
    fn push(&mut self, e: ConfigError) {
        match e {
            ConfigError::Invalid { key, message } => self.bad(key, message),
            other => self.bad("config", other.to_string()),
        }
    }
}

/// A key declared in the config file so it can be filtered on before any producer sends it.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct KeyDecl {
    /// camelCase name as it appears in event `data`.
    pub name: String,
    /// `string`, `folded` (case-insensitive), `ip`, `integer`, `bool` or `timestamp`.
    #[serde(default = "default_kind")]
    pub kind: String,
}

fn default_kind() -> String {
    "string".into()
}

/// An upstream Prometheus endpoint scraped into the live metrics (`[[scrape]]`).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct ScrapeTarget {
    /// Plain-HTTP URL of the exposition, such as `http://127.0.0.1:8080/metrics/prometheus`.
    pub url: String,
    /// Seconds between scrapes.
    pub interval_secs: u64,
    /// Seconds a scrape may take (default: the interval, at most 10).
    pub timeout_secs: Option<u64>,
    /// `Authorization` header value sent with each scrape (`Basic …` or `Bearer …`).
    pub authorization: Option<String>,
    /// A prefix stripped from scraped names before mapping (such as `stalwart_`).
    pub prefix: Option<String>,
    /// Keep families that map to no known name, under their scraped name.
    pub keep_unmapped: bool,
    /// Explicit mapping of scraped family names to dotted names.
    pub map: BTreeMap<String, String>,
}

impl Default for ScrapeTarget {
    fn default() -> Self {
        ScrapeTarget {
            url: String::new(),
            interval_secs: 30,
            timeout_secs: None,
            authorization: None,
            prefix: None,
            keep_unmapped: true,
            map: BTreeMap::new(),
        }
    }
}

impl ScrapeTarget {
    /// How long one scrape may take.
    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout_secs.unwrap_or(self.interval_secs.min(10)).max(1))
    }

    fn validate(&self) -> Result<(), &'static str> {
        let uri: http::Uri =
            self.url.parse().map_err(|_| "url must be a plain-HTTP URL (http://host:port/path)")?;
        if uri.scheme_str() != Some("http") || uri.authority().is_none() {
            return Err("url must be a plain-HTTP URL (http://host:port/path); https is not supported");
        }
        if !(1..=86_400).contains(&self.interval_secs) {
            return Err("interval-secs must be between 1 and 86400");
        }
        if self.timeout_secs.is_some_and(|t| !(1..=self.interval_secs.max(1)).contains(&t)) {
            return Err("timeout-secs must be between 1 and interval-secs");
        }
        if let Some(a) = &self.authorization {
            if http::HeaderValue::from_str(a).is_err() {
                return Err("authorization must be a valid header value");
            }
        }
        if self.map.values().any(|v| crate::metrics::push::check_name(v).is_err()) {
            return Err("map values must be metric names (letters, digits, '.', '-', '_')");
        }
        Ok(())
    }
}

/// A principal (`[[principal]]`): an API key, a password user, or both.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct PrincipalConfig {
    /// Unique name (the Basic user name); `admin` is the admin token's.
    pub name: String,
    /// Bearer secret, at least 16 characters.
    pub api_key: Option<String>,
    /// Argon2 PHC hash of the Basic password (`livetap hash-password`).
    pub password_hash: Option<String>,
    /// Permissions: `tracing-live`, `metrics-live`, `ingest`, `history`, `admin`.
    pub permissions: Vec<String>,
    /// A live query (pair form, e.g. `domain=example.org`) restricting the events it sees.
    pub filter: Option<String>,
    /// Most live streams at once (default `max-subscribers-per-principal`).
    pub max_subscribers: Option<usize>,
    /// Ingest events per second (default `ingest-rate-per-principal`; 0: unlimited).
    pub ingest_rate: Option<u64>,
}

/// TLS settings (`[tls]`): PEM files, re-read on SIGHUP.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct TlsConfig {
    /// The certificate chain (PEM), leaf first.
    pub cert: PathBuf,
    /// The private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// The settings of a running hub. Field names are the TOML keys in kebab-case.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct Config {
    /// Address to listen on for HTTP.
    pub listen: SocketAddr,
    /// The admin bearer token; generated (and kept in `data-dir` if set) when absent.
    pub admin_token: Option<String>,
    /// Key for the `X-Signature` HMAC of Stalwart webhooks; when set, signatures are required.
    pub webhook_key: Option<String>,
    /// Path of a Unix socket accepting NDJSON events.
    pub ingest_socket: Option<PathBuf>,
    /// Directory for livetap's own state (the generated admin token now; history later).
    pub data_dir: Option<PathBuf>,
    /// Run the built-in generator of mail-server traffic.
    pub demo: bool,
    /// Events per second the demo generator produces.
    pub demo_rate: u32,
    /// The generation of Stalwart's catalogue the demo generator speaks: `"0.15"` (the
    /// default, the classic names) or `"0.16"` (v0.16's names, renamed and added types).
    pub demo_generation: crate::event::catalogue::Generation,
    /// What the demo shows: `"stalwart"` (the default: a generator of Stalwart's events) or
    /// `"postfix"` (recorded Postfix and Dovecot log lines replayed through the mail-log
    /// parser, at `demo-rate` lines per second).
    pub demo_traffic: DemoTraffic,
    /// Slots in the event ring (rounded up to a power of two).
    pub ring_capacity: usize,
    /// Events queued per subscriber before it is marked lagged.
    pub subscriber_queue: usize,
    /// Bytes of recent events kept in memory for streams that resume (`Last-Event-ID`,
    /// `since=`); 0 turns resuming off.
    pub replay_bytes: usize,
    /// Seconds a recent event stays resumable at most.
    pub replay_age_secs: u64,
    /// Matcher threads; 0 means half the CPU cores, at least one.
    pub matcher_threads: usize,
    /// Async I/O threads (HTTP connections, SSE writers, socket readers); 0 means one per
    /// CPU core.
    pub io_threads: usize,
    /// Most concurrent live subscribers.
    pub max_subscribers: usize,
    /// Largest accepted ingest request body, in bytes.
    pub max_body_bytes: usize,
    /// Largest accepted webhook body, in bytes. Stalwart's sender puts everything pending into
    /// one request and, after a refusal, resends it merged with everything newer, so this is
    /// far above `max-body-bytes`; the body is parsed as it arrives and never held whole
    /// (`http/webhook.rs`).
    pub max_webhook_bytes: usize,
    /// Seconds a webhook source's resend credits last (`ingest/dedupe.rs`): longer than
    /// Stalwart's 5-minute discard of unsent events plus its 30 s timeout.
    pub webhook_dedupe_secs: u64,
    /// Most event fingerprints kept for recognising webhook resends, over all sources.
    pub webhook_dedupe_entries: usize,
    /// The webhook sender's timeout (Stalwart's webhook `timeout`, 30 s by default): a webhook
    /// request answered later than a third of it may be one the sender gave up on, so its
    /// events are remembered as possible resends.
    pub webhook_sender_timeout_secs: u64,
    /// Longest accepted NDJSON line on the Unix socket, in bytes.
    pub max_line_bytes: usize,
    /// Largest event accepted, measured as its serialised JSON; larger ones are rejected one by
    /// one with a reason, whatever path they came in by. It bounds the `E` of the memory
    /// formula (`Config::memory_bound`).
    pub max_event_bytes: usize,
    /// How long an HTTP ingest waits for ring space before answering 503.
    pub ingest_wait_ms: u64,
    /// Seconds without traffic before a `ping` frame.
    pub ping_interval_secs: u64,
    /// Seconds a subscriber's queue may stay full before its connection is closed.
    pub stall_timeout_secs: u64,
    /// Seconds of silence after which a followed span is forgotten.
    pub span_ttl_secs: u64,
    /// Followed spans kept per matcher thread at most.
    pub max_spans: usize,
    /// Seconds the shutdown waits for subscribers to receive what was accepted.
    pub drain_timeout_secs: u64,
    /// Log filter for livetap's own logs (`warn`, `info`, `debug`, or a tracing filter).
    pub log_level: String,
    /// How livetap's own log lines are written on stderr: `text` or `json`.
    pub log_format: LogFormat,
    /// Longest accepted live query string (and `q=` expression), in bytes.
    pub max_query_bytes: usize,
    /// Most terms (values and words) in one live query.
    pub max_query_terms: usize,
    /// Deepest nesting of parentheses and `NOT` in a `q=` expression.
    pub max_query_depth: usize,
    /// Longest `filter=` text or quoted word, in bytes.
    pub max_filter_text_bytes: usize,
    /// Extra filterable keys.
    pub keys: Vec<KeyDecl>,
    /// Largest `interval` a live metrics stream may ask for, in seconds.
    pub metrics_max_interval_secs: u64,
    /// Metric names beyond the catalogue (pushed or scraped) kept at most.
    pub max_metrics: usize,
    /// Upstream Prometheus endpoints scraped into the live metrics.
    pub scrape: Vec<ScrapeTarget>,
    /// Principals besides the admin token (`[[principal]]`).
    pub principal: Vec<PrincipalConfig>,
    /// TLS for the listener (`[tls]`); without it, plain HTTP.
    pub tls: Option<TlsConfig>,
    /// `[history]`: the embedded event and metric history (SQLite in the data directory).
    pub history: crate::store::HistoryConfig,
    /// Allow plain HTTP on a non-loopback address (logged as a warning).
    pub allow_plain_http: bool,
    /// Secret the live-token key is derived from (at least 32 characters); default: a random
    /// key kept in `data-dir/token-key`, or in memory without a data directory.
    pub token_key: Option<String>,
    /// Seconds a live token is valid.
    pub live_token_ttl_secs: u64,
    /// Seconds after expiry during which an `EventSource` reconnect may still use a token.
    pub live_token_grace_secs: u64,
    /// Origins allowed to call the API from a browser (CORS); `*` allows any.
    pub cors_origins: Vec<String>,
    /// Seconds a browser may cache a CORS preflight answer.
    pub cors_max_age_secs: u64,
    /// Largest total size of a request's header fields, in bytes.
    pub max_header_bytes: usize,
    /// Longest request target (path and query), in bytes.
    pub max_url_bytes: usize,
    /// Most open connections.
    pub max_connections: usize,
    /// Most open connections from one source address (an IPv6 /64 counts as one).
    pub max_connections_per_ip: usize,
    /// Networks exempt from the per-address connection cap (a local reverse proxy).
    pub per_ip_exempt: Vec<String>,
    /// Most live streams per configured principal (the admin token has only the global cap).
    pub max_subscribers_per_principal: usize,
    /// Ingest events per second per configured principal; 0: unlimited.
    pub ingest_rate_per_principal: u64,
    /// Ingest bodies parsed at once; it also sizes the two byte budgets of bodies being read
    /// (`max-concurrent-ingest × max-body-bytes` each, `http::gate`). More wait
    /// (`ingest-wait-ms`), then 503.
    pub max_concurrent_ingest: usize,
    /// Ingest bodies one source may send at once: a principal (the admin token is exempt), or
    /// a source address for a signed webhook before its signature is checked. More get 429.
    pub max_ingest_bodies_per_source: usize,
    /// Failed authentications per source address per window before it is refused (0: off).
    pub max_auth_failures: u32,
    /// The window of `max-auth-failures`, in seconds.
    pub auth_failure_window_secs: u64,
    /// Seconds a client has to send a request's head (also the idle keep-alive timeout and
    /// the TLS handshake timeout).
    pub header_timeout_secs: u64,
    /// Seconds a client has to send a whole ingest body.
    pub body_timeout_secs: u64,
    /// Seconds a write to a client may stay blocked before the connection is dropped.
    pub write_timeout_secs: u64,
    /// Mail-log sources (`[[source]]`): followed files, the journal, syslog listeners
    /// (`ingest::logsource`).
    pub source: Vec<crate::ingest::logsource::SourceConfig>,
    /// Alerts (`[[alert]]`) over the live metrics, evaluated every `alert-interval`
    /// (`alert`).
    pub alert: Vec<crate::alert::AlertConfig>,
    /// How often the alerts are evaluated (`"10s"` by default).
    pub alert_interval: crate::alert::DurationSetting,
    /// The SMTP relay alert emails go through (`[smtp]`).
    pub smtp: Option<crate::alert::SmtpConfig>,
    /// The zone of mail-log timestamps that name none (`Dec  7 13:00:00`): `local` (the
    /// host's, when livetap starts) or an offset such as `+01:00`.
    pub log_utc_offset: crate::ingest::logsource::LogZone,
    /// Log sinks (`[[sink]]`): files and standard output fed by a query (`tap::sink`).
    pub sink: Vec<crate::tap::sink::SinkConfig>,
    /// Outgoing webhooks (`[[webhook]]`, `tap::webhook`).
    pub webhook: Vec<crate::tap::webhook::WebhookConfig>,
}

/// How livetap writes its own log lines (`log-format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// One readable line per record; without timestamp and colours under journald (which
    /// stamps each line itself).
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

impl LogFormat {
    /// Parses `text` or `json`.
    pub fn parse(s: &str) -> Option<LogFormat> {
        match s {
            "text" => Some(LogFormat::Text),
            "json" => Some(LogFormat::Json),
            _ => None,
        }
    }
}

impl<'de> Deserialize<'de> for LogFormat {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<LogFormat, D::Error> {
        let s = String::deserialize(d)?;
        LogFormat::parse(&s)
            .ok_or_else(|| serde::de::Error::custom(format!("`{s}`: expected \"text\" or \"json\"")))
    }
}

/// What the demo shows (`demo-traffic`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DemoTraffic {
    /// A generator of Stalwart's events (`ingest::demo`).
    #[default]
    Stalwart,
    /// Recorded Postfix and Dovecot log lines, replayed (`ingest::maillog::demo`).
    Postfix,
}

impl DemoTraffic {
    /// Parses `stalwart` or `postfix`.
    pub fn parse(s: &str) -> Option<DemoTraffic> {
        match s {
            "stalwart" => Some(DemoTraffic::Stalwart),
            "postfix" => Some(DemoTraffic::Postfix),
            _ => None,
        }
    }
}

impl<'de> Deserialize<'de> for DemoTraffic {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<DemoTraffic, D::Error> {
        let s = String::deserialize(d)?;
        DemoTraffic::parse(&s)
            .ok_or_else(|| serde::de::Error::custom(format!("`{s}`: expected \"stalwart\" or \"postfix\"")))
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 7070)),
            admin_token: None,
            webhook_key: None,
            ingest_socket: None,
            data_dir: None,
            demo: false,
            demo_rate: 200,
            demo_generation: crate::event::catalogue::Generation::V015,
            demo_traffic: DemoTraffic::Stalwart,
            ring_capacity: 65_536,
            subscriber_queue: 8192,
            replay_bytes: 64 << 20,
            replay_age_secs: 3600,
            matcher_threads: 0,
            io_threads: 0,
            max_subscribers: 10_000,
            max_body_bytes: 8 << 20,
            max_webhook_bytes: 256 << 20,
            webhook_dedupe_secs: 600,
            webhook_dedupe_entries: 1_000_000,
            webhook_sender_timeout_secs: 30,
            max_line_bytes: 1 << 20,
            max_event_bytes: 64 << 10,
            ingest_wait_ms: 250,
            ping_interval_secs: 30,
            stall_timeout_secs: 30,
            span_ttl_secs: 600,
            max_spans: 100_000,
            drain_timeout_secs: 5,
            log_level: "warn".into(),
            log_format: LogFormat::Text,
            max_query_bytes: 8192,
            max_query_terms: 64,
            max_query_depth: 32,
            max_filter_text_bytes: 256,
            keys: Vec::new(),
            metrics_max_interval_secs: 3600,
            max_metrics: 4096,
            scrape: Vec::new(),
            principal: Vec::new(),
            tls: None,
            history: crate::store::HistoryConfig::default(),
            allow_plain_http: false,
            token_key: None,
            live_token_ttl_secs: 60,
            live_token_grace_secs: 120,
            cors_origins: Vec::new(),
            cors_max_age_secs: 600,
            max_header_bytes: 16 * 1024,
            max_url_bytes: 16 * 1024,
            max_connections: 16_384,
            max_connections_per_ip: 256,
            per_ip_exempt: vec!["127.0.0.0/8".into(), "::1".into()],
            max_subscribers_per_principal: 1000,
            ingest_rate_per_principal: 100_000,
            max_concurrent_ingest: 8,
            max_ingest_bodies_per_source: 4,
            max_auth_failures: 20,
            auth_failure_window_secs: 60,
            header_timeout_secs: 30,
            body_timeout_secs: 30,
            write_timeout_secs: 60,
            source: Vec::new(),
            alert: Vec::new(),
            alert_interval: crate::alert::DurationSetting(crate::alert::DEFAULT_INTERVAL),
            smtp: None,
            log_utc_offset: crate::ingest::logsource::LogZone::Local,
            sink: Vec::new(),
            webhook: Vec::new(),
        }
    }
}

/// Settings given on the command line; `None` leaves the file's (or default) value.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--listen`.
    pub listen: Option<SocketAddr>,
    /// `--admin-token`.
    pub admin_token: Option<String>,
    /// `--webhook-key`.
    pub webhook_key: Option<String>,
    /// `--ingest-socket`.
    pub ingest_socket: Option<PathBuf>,
    /// `--data-dir`.
    pub data_dir: Option<PathBuf>,
    /// `--demo`.
    pub demo: Option<bool>,
    /// `--demo-rate`.
    pub demo_rate: Option<u32>,
    /// `--demo-generation`.
    pub demo_generation: Option<crate::event::catalogue::Generation>,
    /// `--demo-traffic`.
    pub demo_traffic: Option<DemoTraffic>,
    /// `--ring-capacity`.
    pub ring_capacity: Option<usize>,
    /// `--subscriber-queue`.
    pub subscriber_queue: Option<usize>,
    /// `--matcher-threads`.
    pub matcher_threads: Option<usize>,
    /// `--io-threads`.
    pub io_threads: Option<usize>,
    /// `--max-body-bytes`.
    pub max_body_bytes: Option<usize>,
    /// `--ping-interval-secs`.
    pub ping_interval_secs: Option<u64>,
    /// `--stall-timeout-secs`.
    pub stall_timeout_secs: Option<u64>,
    /// `--log-level`.
    pub log_level: Option<String>,
    /// `--log-format`.
    pub log_format: Option<LogFormat>,
    /// `--allow-plain-http`.
    pub allow_plain_http: Option<bool>,
    /// `--postfix-log`, `--dovecot-log`, `--journal`, `--syslog-listen`: sources added to the
    /// file's.
    pub sources: Vec<crate::ingest::logsource::SourceConfig>,
    /// `--from-start`: every file and journal source reads from its start.
    pub from_start: bool,
    /// `--log-utc-offset`.
    pub log_utc_offset: Option<crate::ingest::logsource::LogZone>,
}

impl Config {
    /// Reads `path` (if given), applies `overrides` and validates the result.
    pub fn load(path: Option<&Path>, overrides: Overrides) -> Result<Config, ConfigError> {
        let mut source_text = None;
        let mut c = match path {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .map_err(|source| ConfigError::Read { path: p.into(), source })?;
                let c = Self::from_toml(&text)
                    .map_err(|message| ConfigError::Parse { path: p.into(), message })?;
                source_text = Some(text);
                c
            }
            None => Config::default(),
        };
        c.apply(overrides);
        // Alert conditions first, with the file's text, so an error names the line.
        if let (Some(p), Some(text)) = (path, &source_text) {
            c.validate_alerts(Some(text))
                .map_err(|e| ConfigError::Parse { path: p.into(), message: e.to_string() })?;
        }
        c.validate()?;
        Ok(c)
    }

    /// Applies the command line's `overrides` (no validation): a flag replaces the file's
    /// value, and sources add to the file's.
    pub fn apply(&mut self, overrides: Overrides) {
        let c = self;
        macro_rules! over {
            ($($f:ident),*) => { $( if let Some(v) = overrides.$f { c.$f = v; } )* };
        }
        over!(
            listen,
            demo,
            demo_rate,
            demo_generation,
            demo_traffic,
            ring_capacity,
            subscriber_queue,
            matcher_threads
        );
        over!(io_threads, log_format);
        over!(max_body_bytes, ping_interval_secs, stall_timeout_secs, log_level, allow_plain_http);
        if overrides.admin_token.is_some() {
            c.admin_token = overrides.admin_token;
        }
        if overrides.webhook_key.is_some() {
            c.webhook_key = overrides.webhook_key;
        }
        if overrides.ingest_socket.is_some() {
            c.ingest_socket = overrides.ingest_socket;
        }
        if overrides.data_dir.is_some() {
            c.data_dir = overrides.data_dir;
        }
        if let Some(z) = overrides.log_utc_offset {
            c.log_utc_offset = z;
        }
        // Sources on the command line add to the file's, and `--from-start` applies to all.
        c.source.extend(overrides.sources);
        if overrides.from_start {
            use crate::ingest::logsource::SourceConfig;
            for s in &mut c.source {
                match s {
                    SourceConfig::File(f) => f.from_start = true,
                    SourceConfig::Journal(j) => j.from_start = true,
                    SourceConfig::Syslog(_) => {}
                }
            }
        }
    }

    /// Parses TOML text (no validation).
    pub fn from_toml(text: &str) -> Result<Config, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    /// Checks ranges and tables; called by [`Config::load`]. The first of
    /// [`Config::problems`].
    pub fn validate(&self) -> Result<(), ConfigError> {
        match self.problems().into_iter().next() {
            Some(p) => Err(p.into()),
            None => Ok(()),
        }
    }

    /// Every problem validation finds, in the order of the settings (`livetap check-config`
    /// reports them all; [`Config::validate`] stops at the first). The one implementation of
    /// the checks, so the server and `check-config` cannot disagree.
    pub fn problems(&self) -> Vec<Problem> {
        let mut out = Problems::default();
        self.check_settings(&mut out);
        self.check_tables(&mut out);
        self.check_security(&mut out);
        out.0
    }

    /// The top-level settings' ranges.
    fn check_settings(&self, out: &mut Problems) {
        let mut bad = |key, message: &str| out.bad(key, message);
        if !(2..=1 << 24).contains(&self.ring_capacity) {
            bad("ring-capacity", "must be between 2 and 16777216");
        }
        if self.subscriber_queue == 0 || self.subscriber_queue > 1 << 20 {
            bad("subscriber-queue", "must be between 1 and 1048576");
        }
        if self.matcher_threads > 256 {
            bad("matcher-threads", "must be at most 256");
        }
        if self.io_threads > 256 {
            bad("io-threads", "must be at most 256");
        }
        if self.max_body_bytes < 1024 {
            bad("max-body-bytes", "must be at least 1024");
        }
        if self.max_webhook_bytes < self.max_body_bytes {
            bad(
                "max-webhook-bytes",
                "must be at least max-body-bytes: Stalwart's sender grows a refused batch, so a \
                 smaller limit would refuse its resends for ever",
            );
        }
        if !(1..=86_400).contains(&self.webhook_dedupe_secs) {
            bad("webhook-dedupe-secs", "must be between 1 and 86400");
        }
        if !(1..=3600).contains(&self.webhook_sender_timeout_secs) {
            bad("webhook-sender-timeout-secs", "must be between 1 and 3600");
        }
        if self.webhook_dedupe_entries == 0 {
            bad("webhook-dedupe-entries", "must be at least 1");
        }
        if self.max_line_bytes < 256 {
            bad("max-line-bytes", "must be at least 256");
        }
        if self.max_event_bytes < 512 {
            bad("max-event-bytes", "must be at least 512");
        }
        if self.ping_interval_secs == 0 {
            bad("ping-interval-secs", "must be at least 1");
        }
        if self.stall_timeout_secs == 0 {
            bad("stall-timeout-secs", "must be at least 1");
        }
        if self.demo_rate == 0 || self.demo_rate > 10_000_000 {
            bad("demo-rate", "must be between 1 and 10000000");
        }
        if let Some(t) = &self.admin_token {
            if t.len() < 16 {
                bad("admin-token", "must be at least 16 characters");
            }
        }
        if !(64..=1 << 20).contains(&self.max_query_bytes) {
            bad("max-query-bytes", "must be between 64 and 1048576");
        }
        if !(1..=4096).contains(&self.max_query_terms) {
            bad("max-query-terms", "must be between 1 and 4096");
        }
        if !(1..=crate::query::parse::MAX_DEPTH_CAP).contains(&self.max_query_depth) {
            bad("max-query-depth", "must be between 1 and 256");
        }
        if !(1..=65_536).contains(&self.max_filter_text_bytes) {
            bad("max-filter-text-bytes", "must be between 1 and 65536");
        }
        let keys_bad = self.keys.iter().map(|k| crate::event::KeyKind::from_name(&k.kind).is_none());
        let keys_bad: Vec<usize> = keys_bad.enumerate().filter(|(_, b)| *b).map(|(i, _)| i).collect();
        if !(1..=86_400).contains(&self.metrics_max_interval_secs) {
            bad("metrics-max-interval-secs", "must be between 1 and 86400");
        }
        if !(16..=1_000_000).contains(&self.max_metrics) {
            bad("max-metrics", "must be between 16 and 1000000");
        }
        for i in keys_bad {
            out.at("keys", i, "kind must be string, folded, ip, integer, bool or timestamp");
        }
    }

    /// The arrays of tables and `[history]`: each element on its own (so every bad one is
    /// reported, with its index), then what only the whole array can show (duplicates).
    fn check_tables(&self, out: &mut Problems) {
        for (i, t) in self.scrape.iter().enumerate() {
            if let Err(m) = t.validate() {
                out.at("scrape", i, m);
            }
        }
        self.validate_sources(out);
        let before = out.0.len();
        for i in 0..self.sink.len() {
            if let Err(m) = crate::tap::sink::validate_all(&self.sink[i..=i]) {
                out.at("sink", i, m);
            }
        }
        if out.0.len() == before {
            if let Err(m) = crate::tap::sink::validate_all(&self.sink) {
                out.bad("sink", m);
            }
        }
        self.check_alerts(out);
        if let Err(e) = crate::tap::webhook::validate(&self.webhook, self.data_dir.as_deref()) {
            out.push(e);
        }
        if let Err(e) = self.history.validate() {
            out.bad("history", e.to_string());
        }
    }

    /// `[[alert]]` and `[smtp]` through [`crate::alert::check`]: the settings every alert
    /// shares first, then each alert alone, then all together (unique names).
    fn check_alerts(&self, out: &mut Problems) {
        if self.alert.is_empty() && self.smtp.is_none() {
            return;
        }
        let kinds = crate::alert::CatalogueKinds::new(&crate::event::Catalogue::embedded());
        let check = |alerts: &[crate::alert::AlertConfig]| {
            crate::alert::check(alerts, self.smtp.as_ref(), self.alert_interval.0, &kinds, None)
        };
        if let Err(e) = check(&[]) {
            // `alert-interval` or `[smtp]`: every alert would repeat it.
            let key = if e.to_string().contains("[smtp]") { "smtp" } else { "alert-interval" };
            out.bad(key, e.to_string());
            return;
        }
        let before = out.0.len();
        for i in 0..self.alert.len() {
            if let Err(e) = check(&self.alert[i..=i]) {
                out.at("alert", i, e.to_string());
            }
        }
        if out.0.len() == before {
            if let Err(e) = check(&self.alert) {
                out.bad("alert", e.to_string());
            }
        }
    }

    /// The `[[alert]]` tables and `[smtp]` (`alert::check`); `source` is the file's text.
    pub fn validate_alerts(&self, source: Option<&str>) -> Result<(), crate::alert::AlertError> {
        if self.alert.is_empty() && self.smtp.is_none() {
            return Ok(());
        }
        let kinds = crate::alert::CatalogueKinds::new(&crate::event::Catalogue::embedded());
        crate::alert::check(&self.alert, self.smtp.as_ref(), self.alert_interval.0, &kinds, source)
            .map(|_| ())
    }

    /// Mail-log sources: each file and listen address once, the journal once (two readers of
    /// one log would publish every line twice).
    fn validate_sources(&self, out: &mut Problems) {
        use crate::ingest::logsource::SourceConfig;
        let mut seen = std::collections::HashSet::new();
        for (i, s) in self.source.iter().enumerate() {
            let (key, message) = match s {
                SourceConfig::File(f) => (
                    format!("file {}", f.path.display()),
                    format!(
                        "{} is followed twice (flags add to the file's [[source]] tables)",
                        f.path.display()
                    ),
                ),
                SourceConfig::Journal(_) => {
                    ("journal".to_string(), "the journal is read twice: keep one journal source".to_string())
                }
                SourceConfig::Syslog(l) => {
                    (format!("listen {}", l.listen), format!("{} is listened on twice", l.listen))
                }
            };
            if !seen.insert(key) {
                out.at("source", i, message);
            }
            if let SourceConfig::Journal(j) = s {
                if j.command.as_ref().is_some_and(|c| c.is_empty()) {
                    out.at("source", i, "command must not be empty");
                }
            }
        }
    }

    /// The listener, the tokens, the connection limits and the principals.
    fn check_security(&self, out: &mut Problems) {
        let mut bad = |key, message: String| out.bad(key, message);
        if self.tls.is_none() && !self.listen.ip().is_loopback() && !self.allow_plain_http {
            bad(
                "listen",
                format!(
                    "{} is not a loopback address: configure [tls], or set allow-plain-http = true \
                     (--allow-plain-http) to serve plain HTTP there",
                    self.listen
                ),
            );
        }
        if let Some(k) = &self.token_key {
            if k.len() < 32 {
                bad("token-key", "must be at least 32 characters".into());
            }
        }
        let ranges: [(&'static str, u64, u64, u64); 15] = [
            ("live-token-ttl-secs", self.live_token_ttl_secs, 1, 86_400),
            ("live-token-grace-secs", self.live_token_grace_secs, 0, 86_400),
            ("cors-max-age-secs", self.cors_max_age_secs, 0, 86_400),
            ("max-header-bytes", self.max_header_bytes as u64, 1024, 1 << 20),
            ("max-url-bytes", self.max_url_bytes as u64, 256, 1 << 20),
            ("max-connections", self.max_connections as u64, 1, 1 << 24),
            ("max-connections-per-ip", self.max_connections_per_ip as u64, 1, 1 << 24),
            ("max-subscribers-per-principal", self.max_subscribers_per_principal as u64, 1, 1 << 24),
            ("max-concurrent-ingest", self.max_concurrent_ingest as u64, 1, 4096),
            ("max-ingest-bodies-per-source", self.max_ingest_bodies_per_source as u64, 1, 4096),
            ("max-auth-failures", self.max_auth_failures as u64, 0, 1 << 20),
            ("auth-failure-window-secs", self.auth_failure_window_secs, 1, 86_400),
            ("header-timeout-secs", self.header_timeout_secs, 1, 3600),
            ("body-timeout-secs", self.body_timeout_secs, 1, 3600),
            ("write-timeout-secs", self.write_timeout_secs, 1, 3600),
        ];
        for (key, v, lo, hi) in ranges {
            if !(lo..=hi).contains(&v) {
                bad(key, format!("must be between {lo} and {hi}"));
            }
        }
        for net in &self.per_ip_exempt {
            if crate::auth::ratelimit::parse_net(net).is_none() {
                bad("per-ip-exempt", format!("`{net}` is not an address or address/prefix-length"));
            }
        }
        for o in &self.cors_origins {
            let ok = o == "*"
                || (o.starts_with("http://") || o.starts_with("https://"))
                    && !o.ends_with('/')
                    && http::HeaderValue::from_str(o).is_ok();
            if !ok {
                bad("cors-origins", format!("`{o}` is not `*` or an origin like https://dash.example.org"));
            }
        }
        for (i, p) in self.principal.iter().enumerate() {
            let key = "principal";
            let mut bad = |key, message: String| out.at(key, i, message);
            let name_ok = !p.name.is_empty()
                && p.name.len() <= 64
                && p.name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-@".contains(&b));
            if !name_ok {
                bad(key, format!("name `{}`: 1 to 64 of letters, digits, `.`, `_`, `-`, `@`", p.name));
            }
            if p.api_key.is_none() && p.password_hash.is_none() {
                bad(key, format!("`{}` needs an api-key or a password-hash", p.name));
            }
            if p.api_key.as_ref().is_some_and(|k| k.len() < 16 || k.trim() != k) {
                bad(key, format!("`{}`: api-key must be at least 16 characters, no spaces around", p.name));
            }
            if let Some(h) = &p.password_hash {
                if let Err(e) = crate::auth::password::check_hash(h) {
                    bad(key, format!("`{}`: {e}", p.name));
                }
            }
            if p.max_subscribers == Some(0) {
                bad(key, format!("`{}`: max-subscribers must be at least 1", p.name));
            }
        }
    }

    /// The per-address exemptions, parsed (validated by [`Config::validate`]).
    pub fn exempt_networks(&self) -> Vec<(std::net::IpAddr, u8)> {
        self.per_ip_exempt.iter().filter_map(|n| crate::auth::ratelimit::parse_net(n)).collect()
    }

    /// Matcher threads to start (resolving 0 to the number of cores).
    pub fn effective_matcher_threads(&self) -> usize {
        if self.matcher_threads > 0 {
            self.matcher_threads
        } else {
            // Half the cores: one matcher thread delivers about a million matched events per
            // second at the fanout-1k shape, and on a small host (the mail server's own) every
            // extra busy thread adds scheduling delay to the tail latency. On 2 cores, one
            // thread cut the p99 at 12,000 events/s from 13-30 ms to 6-8 ms (perf/RESULTS.md).
            (std::thread::available_parallelism().map_or(2, |n| n.get()) / 2).max(1)
        }
    }

    /// Async I/O worker threads to start.
    pub fn effective_io_threads(&self) -> usize {
        if self.io_threads > 0 {
            self.io_threads
        } else {
            std::thread::available_parallelism().map_or(2, |n| n.get())
        }
    }

    /// What the replay log retains.
    pub fn replay_limits(&self) -> crate::matcher::replay::ReplayLimits {
        crate::matcher::replay::ReplayLimits {
            max_bytes: self.replay_bytes,
            max_age_ms: self.replay_age_secs.saturating_mul(1000),
        }
    }

    /// The limits every live query is parsed under.
    pub fn query_limits(&self) -> crate::query::Limits {
        crate::query::Limits {
            max_query_bytes: self.max_query_bytes,
            max_terms: self.max_query_terms,
            max_text_bytes: self.max_filter_text_bytes,
            max_depth: self.max_query_depth,
        }
    }

    /// The ping interval.
    pub fn ping_interval(&self) -> Duration {
        Duration::from_secs(self.ping_interval_secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_then_flags() {
        let c = Config::from_toml(
            "listen = \"127.0.0.1:9000\"\ndemo-rate = 50\n[[keys]]\nname = \"clientName\"\nkind = \"folded\"\n",
        )
        .unwrap();
        assert_eq!(c.listen.port(), 9000);
        assert_eq!(c.demo_rate, 50);
        assert_eq!(c.keys[0].kind, "folded");
        assert!(Config::from_toml("nope = 1").is_err());
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, "demo-rate = 50\n").unwrap();
        let c = Config::load(Some(&p), Overrides { demo_rate: Some(7), ..Default::default() }).unwrap();
        assert_eq!(c.demo_rate, 7);
        let e = Config::load(None, Overrides { ring_capacity: Some(1), ..Default::default() });
        assert!(matches!(e, Err(ConfigError::Invalid { key: "ring-capacity", .. })));
    }

    #[test]
    fn demo_generation_from_file_and_flag() {
        use crate::event::catalogue::Generation;
        assert_eq!(Config::default().demo_generation, Generation::V015);
        let t = Config::from_toml("demo = true\ndemo-traffic = \"postfix\"\n").unwrap();
        assert_eq!(t.demo_traffic, DemoTraffic::Postfix);
        assert!(Config::from_toml("demo-traffic = \"exim\"\n").unwrap_err().to_string().contains("postfix"));
        let c = Config::from_toml("demo = true\ndemo-generation = \"0.16\"\n").unwrap();
        assert_eq!(c.demo_generation, Generation::V016);
        let e = Config::from_toml("demo-generation = \"0.17\"\n").unwrap_err();
        assert!(e.contains("expected \"0.15\" or \"0.16\""), "{e}");
        let c =
            Config::load(None, Overrides { demo_generation: Some(Generation::V016), ..Default::default() })
                .unwrap();
        assert_eq!(c.demo_generation, Generation::V016);
    }

    #[test]
    fn scrape_targets() {
        let c = Config::from_toml(
            "metrics-max-interval-secs = 600\n[[scrape]]\nurl = \"http://127.0.0.1:8080/metrics/prometheus\"\n\
             interval-secs = 15\nprefix = \"stalwart_\"\n[scrape.map]\nmail_queue = \"queue.count\"\n",
        )
        .unwrap();
        assert!(c.validate().is_ok());
        assert_eq!(c.metrics_max_interval_secs, 600);
        let t = &c.scrape[0];
        assert_eq!((t.interval_secs, t.timeout(), t.keep_unmapped), (15, Duration::from_secs(10), true));
        assert_eq!(t.map["mail_queue"], "queue.count");
        for bad in [
            "[[scrape]]\nurl = \"https://example.org/metrics\"\n",
            "[[scrape]]\nurl = \"not a url\"\n",
            "[[scrape]]\nurl = \"http://h/m\"\ninterval-secs = 0\n",
            "[[scrape]]\nurl = \"http://h/m\"\ninterval-secs = 5\ntimeout-secs = 6\n",
            "[[scrape]]\nurl = \"http://h/m\"\n[scrape.map]\nx = \"bad name\"\n",
            "metrics-max-interval-secs = 0\n",
        ] {
            let c = Config::from_toml(bad).unwrap();
            assert!(c.validate().is_err(), "{bad}");
        }
        assert!(Config::from_toml("[[scrape]]\nurl = \"http://h/m\"\nnope = 1\n").is_err());
    }

    #[test]
    fn log_format_key_and_flag() {
        assert_eq!(Config::default().log_format, LogFormat::Text);
        assert_eq!(Config::from_toml("log-format = \"json\"\n").unwrap().log_format, LogFormat::Json);
        let e = Config::from_toml("log-format = \"yaml\"\n").unwrap_err();
        assert!(e.contains("expected \"text\" or \"json\"") && e.contains("line 1"), "{e}");
        let c = Config::load(None, Overrides { log_format: Some(LogFormat::Json), ..Default::default() })
            .unwrap();
        assert_eq!(c.log_format, LogFormat::Json);
    }
}
