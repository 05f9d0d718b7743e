//! Outgoing webhooks (`[[webhook]]`): events that match a webhook's live query are spooled to
//! disk on its tap's thread and POSTed in batches by its own sender task, at least once, in
//! Stalwart's webhook shape or NDJSON, signed as Stalwart signs.
//!
//! - [`format`]: the event shape (written straight into the tap's buffer), the bodies, the signature, `Retry-After`
//!   and the backoff;
//! - [`spool`]: the on-disk segments, the batch cuts, the acknowledgement cursor, the cap;
//! - [`sender`]: the HTTP client and the task that sends, retries and skips.
//!
//! The path of an event: the matcher queues it to the webhook's tap (its query is compiled
//! into the index like a subscriber's, so a webhook that wants 1 % of the events costs
//! nothing for the rest); the tap's thread writes its webhook-shape JSON into the spool and
//! closes a batch at `max-events`, `max-bytes` or `max-delay-ms`; the sender task reads closed
//! batches from the files and POSTs them. Ingest never waits for a webhook: a receiver that is
//! slow or down only grows its spool (up to `max-spool-bytes`, past which the oldest batches
//! are dropped, counted and reported as a `telemetry.webhook-error` event).
//!
//! [`Webhooks`] holds the running webhooks: it implements [`Notify`] (an alert appended to a
//! webhook's spool outside its query), the test send of `POST /api/livetap/webhooks/{name}/test`,
//! the per-webhook metrics, and the stop.

pub mod format;
pub mod sender;
pub mod spool;

use super::{Notify, Tap, TapEvent};
use crate::config::ConfigError;
use crate::hub::{Hub, TapError};
use crate::metrics::registry::Scraped;
use format::{write_webhook_event, Format};
use parking_lot::Mutex;
use serde::Deserialize;
use spool::{Fsync, Spool, SpoolError, SpoolSettings};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The event type of spool drops, Stalwart's own name; never sent to any webhook.
pub const ERROR_EVENT: &str = "telemetry.webhook-error";

/// `auth` of a `[[webhook]]`: Basic (`username`, `password`) or Bearer (`token`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Auth {
    /// Basic user name.
    pub username: Option<String>,
    /// Basic password.
    pub password: Option<String>,
    /// Bearer token.
    pub token: Option<String>,
}

impl Auth {
    /// The `Authorization` value.
    pub fn header_value(&self) -> String {
        use base64::Engine;
        match (&self.token, &self.username) {
            (Some(t), _) => format!("Bearer {t}"),
            (None, u) => {
                let pair =
                    format!("{}:{}", u.as_deref().unwrap_or(""), self.password.as_deref().unwrap_or(""));
                format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(pair))
            }
        }
    }

    fn check(&self) -> Result<(), String> {
        match (&self.token, &self.username) {
            (Some(_), None) if self.password.is_none() => Ok(()),
            (None, Some(_)) => Ok(()),
            (Some(_), _) => {
                Err("auth: give either `token` (Bearer) or `username`/`password` (Basic), not both".into())
            }
            (None, None) => Err("auth: give `token` (Bearer) or `username` and `password` (Basic)".into()),
        }
    }
}

/// One `[[webhook]]` table, checked when the file is read (an error names its line).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "RawWebhook")]
pub struct WebhookConfig {
    /// Unique name: letters, digits, `-`, `_` (used in metric names and the spool directory).
    pub name: String,
    /// `http://` or `https://` URL to POST to.
    pub url: String,
    /// The events it wants, in the live query language (pair form); empty wants all.
    pub query: String,
    /// Extra request headers.
    pub headers: BTreeMap<String, String>,
    /// `Authorization`.
    pub auth: Option<Auth>,
    /// Key of the `X-Signature` HMAC (none: no signature).
    pub signature_key: Option<String>,
    /// Body format.
    pub format: Format,
    /// Most events per batch.
    pub max_events: usize,
    /// Most body bytes per batch.
    pub max_bytes: usize,
    /// Milliseconds an open batch waits for more events.
    pub max_delay_ms: u64,
    /// Seconds to connect (and finish the TLS handshake).
    pub connect_timeout_secs: u64,
    /// Seconds for a whole request and its answer.
    pub request_timeout_secs: u64,
    /// Most bytes spooled on disk.
    pub max_spool_bytes: u64,
    /// When spool appends are forced to disk.
    pub fsync: Fsync,
    /// First retry's backoff ceiling in milliseconds (doubling per retry).
    pub retry_initial_ms: u64,
    /// Largest backoff ceiling in seconds.
    pub retry_max_secs: u64,
    /// PEM file of the CAs trusted for an `https` URL (default: the system's bundle).
    pub ca_file: Option<PathBuf>,
}

/// A `[[webhook]]` table as written, before its checks.
#[derive(Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct RawWebhook {
    name: Name,
    url: Url,
    #[serde(default)]
    query: String,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    auth: Option<Auth>,
    signature_key: Option<String>,
    #[serde(default)]
    format: Format,
    #[serde(default = "defaults::max_events")]
    max_events: usize,
    #[serde(default = "defaults::max_bytes")]
    max_bytes: usize,
    #[serde(default = "defaults::max_delay_ms")]
    max_delay_ms: u64,
    #[serde(default = "defaults::connect_timeout_secs")]
    connect_timeout_secs: u64,
    #[serde(default = "defaults::request_timeout_secs")]
    request_timeout_secs: u64,
    #[serde(default = "defaults::max_spool_bytes")]
    max_spool_bytes: u64,
    #[serde(default)]
    fsync: Fsync,
    #[serde(default = "defaults::retry_initial_ms")]
    retry_initial_ms: u64,
    #[serde(default = "defaults::retry_max_secs")]
    retry_max_secs: u64,
    ca_file: Option<PathBuf>,
}

/// Defaults of a `[[webhook]]` table.
mod defaults {
    pub fn max_events() -> usize {
        10_000
    }
    pub fn max_bytes() -> usize {
        1 << 20
    }
    pub fn max_delay_ms() -> u64 {
        1000
    }
    pub fn connect_timeout_secs() -> u64 {
        10
    }
    pub fn request_timeout_secs() -> u64 {
        30
    }
    pub fn max_spool_bytes() -> u64 {
        1 << 30
    }
    pub fn retry_initial_ms() -> u64 {
        500
    }
    pub fn retry_max_secs() -> u64 {
        60
    }
}

/// A webhook's name, checked on its own so an error points at its line.
#[derive(Deserialize)]
#[serde(try_from = "String")]
struct Name(String);

impl TryFrom<String> for Name {
    type Error = String;

    fn try_from(name: String) -> Result<Self, String> {
        let ok = !name.is_empty()
            && name.len() <= 64
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !ok {
            return Err(format!("webhook name `{name}`: use 1 to 64 letters, digits, '-' or '_'"));
        }
        Ok(Name(name))
    }
}

/// A webhook's URL, checked on its own so an error points at its line.
#[derive(Deserialize)]
#[serde(try_from = "String")]
struct Url(String);

impl TryFrom<String> for Url {
    type Error = String;

    fn try_from(url: String) -> Result<Self, String> {
        match url.parse::<http::Uri>() {
            Ok(u) if matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some() => Ok(Url(url)),
            _ => Err(format!("url `{url}` must be an http:// or https:// URL with a host")),
        }
    }
}

impl TryFrom<RawWebhook> for WebhookConfig {
    type Error = String;

    fn try_from(r: RawWebhook) -> Result<Self, String> {
        let name = r.name.0;
        let w = |m: String| format!("webhook `{name}`: {m}");
        let in_range = |key: &str, v: u64, lo: u64, hi: u64| {
            if (lo..=hi).contains(&v) {
                Ok(())
            } else {
                Err(w(format!("{key} must be between {lo} and {hi}")))
            }
        };
        in_range("max-events", r.max_events as u64, 1, 1_000_000)?;
        in_range("max-bytes", r.max_bytes as u64, 1024, 64 << 20)?;
        in_range("max-delay-ms", r.max_delay_ms, 10, 3_600_000)?;
        in_range("connect-timeout-secs", r.connect_timeout_secs, 1, 600)?;
        in_range("request-timeout-secs", r.request_timeout_secs, 1, 3600)?;
        in_range("retry-initial-ms", r.retry_initial_ms, 1, 3_600_000)?;
        in_range("retry-max-secs", r.retry_max_secs, 1, 86_400)?;
        if r.max_spool_bytes < 4 * r.max_bytes as u64 {
            return Err(w("max-spool-bytes must be at least 4 × max-bytes".into()));
        }
        if let Some(a) = &r.auth {
            a.check().map_err(w)?;
        }
        let cfg = WebhookConfig {
            name: name.clone(),
            url: r.url.0,
            query: r.query,
            headers: r.headers,
            auth: r.auth,
            signature_key: r.signature_key,
            format: r.format,
            max_events: r.max_events,
            max_bytes: r.max_bytes,
            max_delay_ms: r.max_delay_ms,
            connect_timeout_secs: r.connect_timeout_secs,
            request_timeout_secs: r.request_timeout_secs,
            max_spool_bytes: r.max_spool_bytes,
            fsync: r.fsync,
            retry_initial_ms: r.retry_initial_ms,
            retry_max_secs: r.retry_max_secs,
            ca_file: r.ca_file,
        };
        // The headers are checked the way they are used.
        sender::static_headers(&cfg).map_err(w)?;
        Ok(cfg)
    }
}

impl WebhookConfig {
    /// `connect-timeout-secs`.
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_secs(self.connect_timeout_secs)
    }

    /// `request-timeout-secs`.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.request_timeout_secs)
    }

    /// The wait before retry number `attempt` (see [`format::backoff`]).
    pub fn backoff(&self, attempt: u32, unit: f64) -> Duration {
        format::backoff(
            Duration::from_millis(self.retry_initial_ms),
            Duration::from_secs(self.retry_max_secs),
            attempt,
            unit,
        )
    }

    fn spool_settings(&self) -> SpoolSettings {
        SpoolSettings {
            max_events: self.max_events,
            max_bytes: self.max_bytes,
            max_delay: Duration::from_millis(self.max_delay_ms),
            max_spool_bytes: self.max_spool_bytes,
            fsync: self.fsync,
        }
    }
}

/// Checks what one table cannot: names are unique, and a data directory holds the spools.
pub fn validate(webhooks: &[WebhookConfig], data_dir: Option<&Path>) -> Result<(), ConfigError> {
    let mut seen = std::collections::HashSet::new();
    for w in webhooks {
        if !seen.insert(w.name.as_str()) {
            return Err(ConfigError::Invalid {
                key: "webhook",
                message: format!("two webhooks are named `{}`", w.name),
            });
        }
    }
    if !webhooks.is_empty() && data_dir.is_none() {
        return Err(ConfigError::Invalid {
            key: "webhook",
            message: "webhooks spool their batches to disk: set data-dir (or --data-dir)".into(),
        });
    }
    Ok(())
}

/// A webhook's counters. The tap's thread writes the spool's (`spooled-*`, `dropped`), the
/// sender task the others; readers (metrics) take them with relaxed loads, as a snapshot in
/// which each number is exact but they may be a moment apart.
#[derive(Debug, Default)]
pub struct Counters {
    /// Events appended to the spool.
    pub spooled_events: AtomicU64,
    /// Bytes of the spool's segment files.
    pub spooled_bytes: AtomicU64,
    /// Events in batches the receiver accepted.
    pub sent_events: AtomicU64,
    /// Batches the receiver accepted.
    pub sent_batches: AtomicU64,
    /// Events in batches the receiver refused for good.
    pub failed_events: AtomicU64,
    /// Batches the receiver refused for good.
    pub failed_batches: AtomicU64,
    /// Requests that will be tried again (errors, timeouts, 5xx, 408, 429).
    pub retries: AtomicU64,
    /// Events dropped: past `max-spool-bytes`, or because the tap's queue was full.
    pub dropped_events: AtomicU64,
    /// When the batch being sent was closed (Unix ms); 0 when nothing waits.
    pub oldest_ms: AtomicU64,
}

/// A running webhook, shared by its tap, its sender task, [`Webhooks`] and the test send.
pub struct Running {
    /// Its table.
    pub config: WebhookConfig,
    /// Its counters.
    pub counters: Arc<Counters>,
    /// Its spool: written by the tap's thread and [`Notify`], read and acknowledged by the
    /// sender. Shared with the `Running` that replaces this one when a reload changes the
    /// webhook, so the backlog carries over.
    pub spool: Arc<Mutex<Spool>>,
    /// Wakes the sender when a batch closes.
    pub wake: tokio::sync::Notify,
    /// Where it sends.
    pub target: sender::Target,
    /// Headers of every request.
    pub headers: http::HeaderMap,
    /// Metric names, in the order of [`Running::readings`].
    metric_names: Vec<String>,
}

/// The per-webhook metric names after `webhook.<name>.` (not under `livetap.`: the registry
/// reserves that prefix for the readings it computes itself; these are handed to it the way
/// scraped values are), their kind (counter or
/// gauge), for the README and `/metrics`.
pub const METRICS: [(&str, bool); 9] = [
    ("sent-events", true),
    ("sent-batches", true),
    ("failed-events", true),
    ("failed-batches", true),
    ("retries", true),
    ("dropped-events", true),
    ("spooled-events", true),
    ("spooled-bytes", false),
    ("oldest-age-seconds", false),
];

impl Running {
    fn readings(&self) -> [f64; 9] {
        let c = &self.counters;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed) as f64;
        let oldest = c.oldest_ms.load(Ordering::Relaxed);
        let now = spool_now_ms();
        let age = if oldest == 0 { 0.0 } else { now.saturating_sub(oldest) as f64 / 1000.0 };
        [
            l(&c.sent_events),
            l(&c.sent_batches),
            l(&c.failed_events),
            l(&c.failed_batches),
            l(&c.retries),
            l(&c.dropped_events),
            l(&c.spooled_events),
            l(&c.spooled_bytes),
            age,
        ]
    }

    /// Appends `event` and closes its batch, so it goes out now (an alert's notification).
    fn append_now(&self, event: &TapEvent) -> Result<(), SpoolError> {
        let mut json = Vec::with_capacity(event.event.json.len() + 32);
        write_webhook_event(event.seq + 1, &event.event, &mut json);
        let mut spool = self.spool.lock();
        spool.append_event(event.seq, &json)?;
        spool.cut()?;
        spool.flush()?;
        drop(spool);
        self.wake.notify_one();
        Ok(())
    }
}

fn spool_now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Why the webhooks could not start.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// A spool could not be opened.
    #[error("webhook `{0}`: spool: {1}")]
    Spool(String, SpoolError),
    /// Its URL, CA file or headers cannot be used.
    #[error("webhook `{0}`: {1}")]
    Target(String, String),
    /// Its tap could not be added (its query, mostly).
    #[error("webhook: {0}")]
    Tap(#[from] TapError),
}

/// How long a webhook's tap thread waits after a delivery of fewer than [`FEW`] events:
/// `max-delay-ms` / [`COALESCE_SHARE`], at most [`COALESCE_MAX`] (50 ms with the default
/// `max-delay-ms` of one second).
///
/// The wait lets the matching events of a sparse query (a webhook that wants 1 % of the
/// events) pile up in the tap's queue, so each group the thread takes is bigger. That matters
/// twice: the matcher wakes a parked tap thread with a system call, once per wake-up, and under
/// `fsync = "always"` every group costs an `fdatasync`, which on this kind of host takes about
/// 0.1 ms of CPU. With a fixed 5 ms wait a 1 % webhook made 200 of each a second, and cost 11 %
/// more CPU per ingested event at a fixed rate, against 0 % with `fsync = "never"`
/// (`perf/RESULTS.md` §19); 50 ms makes it 20. The events that wait are in the tap's queue, as
/// before: a batch closes after `max-delay-ms` anyway, so the receiver sees them at most this
/// much later, and a `kill -9` loses at most this much more (README, loss window).
fn coalesce(max_delay: Duration) -> Duration {
    (max_delay / COALESCE_SHARE).clamp(COALESCE_MIN, COALESCE_MAX)
}
/// [`coalesce`] waits this fraction of `max-delay-ms`.
const COALESCE_SHARE: u32 = 20;
/// The shortest wait of [`coalesce`].
const COALESCE_MIN: Duration = Duration::from_millis(1);
/// The longest wait of [`coalesce`].
const COALESCE_MAX: Duration = Duration::from_millis(50);
/// A delivery this small is followed by a wait ([`coalesce`]).
const FEW: usize = 256;

/// The tap of one webhook: appends matching events to its spool.
struct WebhookTap {
    running: Arc<Running>,
    hub: Arc<Hub>,
    tap_name: String,
    /// One event's JSON, reused for every event (the tap's per-event work allocates nothing
    /// once it has grown).
    scratch: Vec<u8>,
    /// When a spool write error was last logged (one line per minute at most).
    last_error_log: Option<Instant>,
}

impl WebhookTap {
    fn after_append(&mut self, r: Result<bool, SpoolError>) {
        match r {
            Ok(true) => self.running.wake.notify_one(),
            Ok(false) => {}
            Err(e) => {
                if !self.last_error_log.is_some_and(|t| t.elapsed() <= Duration::from_secs(60)) {
                    tracing::error!(webhook = %self.running.config.name, error = %e, "cannot write the webhook spool");
                    self.last_error_log = Some(Instant::now());
                }
            }
        }
        let dropped = self.running.spool.lock().take_dropped();
        if dropped > 0 {
            self.report_drop(dropped, "spool full (max-spool-bytes): oldest batches dropped");
        }
    }

    /// Publishes a `telemetry.webhook-error` event into the hub (never sent to a webhook).
    fn report_drop(&self, total: u64, why: &str) {
        let name = &self.running.config.name;
        tracing::warn!(webhook = %name, dropped = total, "{why}");
        let json = serde_json::json!({
            "type": ERROR_EVENT,
            "data": {"details": format!("webhook {name}: {why}"), "total": total, "url": self.running.config.url},
        })
        .to_string();
        let Ok(raw) = crate::event::raw::RawValue::parse_serde(json.as_bytes()) else { return };
        let Ok(ev) = self.hub.builder().build(&raw, crate::event::encode::now_secs()) else { return };
        let mut events = vec![Arc::new(ev)];
        let mut displaced = Vec::new();
        // A full ring refuses it: the drop is still counted and logged.
        let _ = self.hub.try_publish(&mut events, &mut displaced);
    }
}

impl Tap for WebhookTap {
    fn name(&self) -> &str {
        &self.tap_name
    }

    fn query(&self) -> &str {
        &self.running.config.query
    }

    fn deliver(&mut self, events: &[TapEvent]) {
        let mut spool = self.running.spool.lock();
        let mut r = Ok(());
        for e in events {
            if &*e.event.kind == ERROR_EVENT {
                continue;
            }
            self.scratch.clear();
            write_webhook_event(e.seq + 1, &e.event, &mut self.scratch);
            r = r.and(spool.append_event(e.seq, &self.scratch));
        }
        let r = r.and_then(|_| spool.cut_if_due()).and_then(|cut| Ok(spool.flush()? || cut));
        drop(spool);
        self.after_append(r);
        if events.len() < FEW {
            // Let more arrive before looking again (see `coalesce`).
            std::thread::sleep(coalesce(Duration::from_millis(self.running.config.max_delay_ms)));
        }
    }

    fn lagged(&mut self, n: u64) {
        self.running.counters.dropped_events.fetch_add(n, Ordering::Relaxed);
        self.report_drop(n, "the webhook's tap queue was full: events dropped");
    }

    fn idle(&mut self) {
        let mut spool = self.running.spool.lock();
        let r = spool.cut_if_due().and_then(|cut| Ok(spool.flush()? || cut));
        drop(spool);
        self.after_append(r);
    }

    fn stop(&mut self) {
        let mut spool = self.running.spool.lock();
        // Close the open batch, so it is sent (after a restart if need be).
        let r = spool.cut().and_then(|_| spool.flush());
        drop(spool);
        self.after_append(r);
    }
}

/// What a reload will do to the webhooks, every new or changed one already opened
/// ([`Webhooks::prepare_reload`]).
pub struct WebhookPlan {
    /// Webhooks to remove, by name.
    removed: Vec<String>,
    /// `(replaces a running one, the opened webhook)`.
    prepared: Vec<(bool, Prepared)>,
}

/// The running webhooks.
#[derive(Default)]
pub struct Webhooks {
    /// The running webhooks; replaced whole by a reload ([`Webhooks::reload`]), read by
    /// [`Notify`], the test send and the metrics task.
    list: Mutex<Vec<Arc<Running>>>,
    stop: tokio_util::sync::CancellationToken,
    /// Each webhook's sender task and the token that stops it alone.
    senders: Mutex<BTreeMap<String, (tokio_util::sync::CancellationToken, tokio::task::JoinHandle<()>)>>,
    /// The metrics task.
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

/// A webhook ready to run: everything that can fail was done (its target, headers, query
/// and spool), nothing started.
struct Prepared {
    running: Arc<Running>,
}

impl Webhooks {
    /// Starts every configured webhook: opens its spool, adds its tap, starts its sender, and
    /// a task that copies the counters into the live metrics. Call before the sources start.
    pub async fn start(hub: &Arc<Hub>) -> Result<Arc<Webhooks>, WebhookError> {
        let hooks = Arc::new(Webhooks::default());
        let plan = hooks.prepare_reload(hub, &hub.config.webhook)?;
        hooks.commit_reload(hub, plan).await?;
        Ok(hooks)
    }

    /// Opens `cfg`'s spool (or takes `previous`'s, with its backlog) and builds its target.
    fn prepare(
        hub: &Hub,
        cfg: &WebhookConfig,
        previous: Option<&Arc<Running>>,
    ) -> Result<Prepared, WebhookError> {
        let name = cfg.name.clone();
        let target = sender::Target::new(cfg).map_err(|e| WebhookError::Target(name.clone(), e))?;
        let headers = sender::static_headers(cfg).map_err(|e| WebhookError::Target(name.clone(), e))?;
        crate::query::parse_pairs(&cfg.query, &hub.keys, &hub.current().query_limits())
            .map_err(|e| WebhookError::Tap(TapError::Query(format!("webhook:{name}"), e)))?;
        let overhead = cfg.format.overhead(2) - cfg.format.overhead(1);
        let (spool, counters) = match previous {
            Some(p) => {
                p.spool.lock().set_settings(cfg.spool_settings(), overhead);
                (p.spool.clone(), p.counters.clone())
            }
            None => {
                let Some(data_dir) = hub.config.data_dir.clone() else {
                    // `Config::validate` refuses this; a config built in code may still try.
                    return Err(WebhookError::Target(name, "webhooks need data-dir".into()));
                };
                let counters = Arc::new(Counters::default());
                let dir = data_dir.join("webhooks").join(&name);
                let (spool, rec) = Spool::open(&dir, cfg.spool_settings(), counters.clone(), overhead)
                    .map_err(|e| WebhookError::Spool(name.clone(), e))?;
                if rec != spool::Recovered::default() {
                    tracing::info!(
                        webhook = %name, pending = rec.pending_events, torn_bytes = rec.torn_bytes,
                        closed_tail = rec.closed_tail, "webhook spool recovered"
                    );
                }
                (Arc::new(Mutex::new(spool)), counters)
            }
        };
        let metric_names = METRICS.iter().map(|(m, _)| format!("webhook.{name}.{m}")).collect();
        let running = Arc::new(Running {
            config: cfg.clone(),
            counters,
            spool,
            wake: tokio::sync::Notify::new(),
            target,
            headers,
            metric_names,
        });
        Ok(Prepared { running })
    }

    fn tap_of(hub: &Arc<Hub>, running: &Arc<Running>) -> Box<dyn Tap> {
        Box::new(WebhookTap {
            running: running.clone(),
            hub: hub.clone(),
            tap_name: format!("webhook:{}", running.config.name),
            scratch: Vec::with_capacity(4096),
            last_error_log: None,
        })
    }

    /// Starts `running`'s sender task.
    fn start_sender(&self, running: &Arc<Running>) {
        let token = self.stop.child_token();
        let task = tokio::spawn(sender::run(running.clone(), token.clone()));
        self.senders.lock().insert(running.config.name.clone(), (token, task));
    }

    /// Stops the sender of the webhook `name` (a batch in flight is sent again by the next
    /// sender of that spool, after a reload adds it back or after a restart).
    async fn stop_sender(&self, name: &str) {
        let entry = self.senders.lock().remove(name);
        if let Some((token, task)) = entry {
            token.cancel();
            let _ = task.await;
        }
    }

    /// Prepares a reload to the webhooks `configs`: every new or changed webhook is opened
    /// (its spool, its target; a changed one keeps the running one's spool and counters) and
    /// the ones to remove are listed. Changes nothing: a webhook that cannot open leaves the
    /// whole running configuration as it was.
    pub fn prepare_reload(
        &self,
        hub: &Arc<Hub>,
        configs: &[WebhookConfig],
    ) -> Result<WebhookPlan, WebhookError> {
        let old: Vec<Arc<Running>> = self.list.lock().clone();
        let find = |name: &str| old.iter().find(|r| r.config.name == name);
        let mut prepared = Vec::new();
        for cfg in configs {
            match find(&cfg.name) {
                Some(r) if r.config == *cfg => {}
                Some(r) => prepared.push((true, Webhooks::prepare(hub, cfg, Some(r))?)),
                None => prepared.push((false, Webhooks::prepare(hub, cfg, None)?)),
            }
        }
        let removed = old
            .iter()
            .filter(|r| !configs.iter().any(|c| c.name == r.config.name))
            .map(|r| r.config.name.clone())
            .collect();
        Ok(WebhookPlan { removed, prepared })
    }

    /// Puts a [`WebhookPlan`] in force: a removed webhook's tap closes its open batch and its
    /// sender stops (its spool stays on disk); an added one starts; a changed one keeps its
    /// spool and backlog, its tap is replaced in one index generation and its sender restarts.
    /// Returns what changed.
    pub async fn commit_reload(
        self: &Arc<Self>,
        hub: &Arc<Hub>,
        plan: WebhookPlan,
    ) -> Result<Vec<String>, WebhookError> {
        let mut changes = Vec::new();
        for name in plan.removed {
            hub.remove_tap(&format!("webhook:{name}")).await?;
            self.stop_sender(&name).await;
            self.list.lock().retain(|x| x.config.name != name);
            tracing::info!(webhook = %name, "webhook removed; its spool stays on disk");
            changes.push(format!("removed webhook {name}"));
        }
        for (changed, p) in plan.prepared {
            let running = p.running;
            let name = running.config.name.clone();
            if changed {
                hub.replace_tap(&format!("webhook:{name}"), Webhooks::tap_of(hub, &running)).await?;
                self.stop_sender(&name).await;
                changes.push(format!("changed webhook {name}"));
            } else {
                hub.add_tap(Webhooks::tap_of(hub, &running)).await?;
                changes.push(format!("added webhook {name}"));
            }
            {
                let mut list = self.list.lock();
                list.retain(|x| x.config.name != name);
                list.push(running.clone());
            }
            self.start_sender(&running);
            tracing::info!(webhook = %name, url = %running.config.url, "webhook started");
        }
        // The metrics task, once there is a webhook to report.
        let mut tasks = self.tasks.lock();
        if tasks.is_empty() && !self.list.lock().is_empty() {
            tasks.push(tokio::spawn(publish_metrics(hub.clone(), self.clone())));
        }
        Ok(changes)
    }

    /// Stops the senders (after the hub's shutdown, which closed and flushed every spool
    /// through the taps' `stop`); a batch in flight is sent again after the next start.
    pub async fn stop(&self) {
        self.stop.cancel();
        let senders = std::mem::take(&mut *self.senders.lock());
        for (_, (_, t)) in senders {
            let _ = t.await;
        }
        let tasks = std::mem::take(&mut *self.tasks.lock());
        for t in tasks {
            let _ = t.await;
        }
    }

    /// The running webhook called `name`.
    pub fn get(&self, name: &str) -> Option<Arc<Running>> {
        self.list.lock().iter().find(|r| r.config.name == name).cloned()
    }

    /// Copies every webhook's counters into the metrics registry.
    pub fn update_metrics(&self, hub: &Hub) {
        let list = self.list.lock().clone();
        for r in &list {
            for ((name, v), (_, counter)) in r.metric_names.iter().zip(r.readings()).zip(METRICS) {
                let s = if counter { Scraped::Counter(v) } else { Scraped::Gauge(v) };
                if let Err(e) = hub.metrics.apply_scraped(name, s) {
                    tracing::debug!(metric = %name, error = %e, "webhook metric not recorded");
                }
            }
        }
    }

    /// Sends one test event to the webhook called `name` now (not through its spool) and
    /// reports the receiver's answer. `None` when no webhook has that name.
    pub async fn test_send(&self, hub: &Hub, name: &str) -> Option<TestReport> {
        let r = self.get(name)?;
        let cfg = &r.config;
        let json = serde_json::json!({
            "type": "livetap.webhook-test",
            "data": {"details": format!("test event for webhook {name}"), "url": cfg.url},
        })
        .to_string();
        let mut event_json = Vec::new();
        if let Ok(raw) = crate::event::raw::RawValue::parse_serde(json.as_bytes()) {
            if let Ok(ev) = hub.builder().build(&raw, crate::event::encode::now_secs()) {
                // Id 0 is never a real event's (those start at 1).
                write_webhook_event(0, &ev, &mut event_json);
            }
        }
        let mut body = Vec::new();
        cfg.format.write_body(std::iter::once(&event_json[..]), &mut body);
        let headers = sender::request_headers(&r.headers, cfg, (0, 0), &body);
        let mut client = sender::Client::new(r.target.clone());
        let started = Instant::now();
        let answer = client.post(&headers, bytes::Bytes::from(body)).await;
        let elapsed_ms = started.elapsed().as_secs_f64() * 1000.0;
        Some(match answer {
            Ok(a) => {
                let interesting = ["content-type", "content-length", "retry-after", "server", "location"];
                let headers = interesting
                    .iter()
                    .filter_map(|h| Some((h.to_string(), a.headers.get(*h)?.to_str().ok()?.to_string())))
                    .collect();
                TestReport {
                    webhook: name.to_string(),
                    url: cfg.url.clone(),
                    delivered: format::verdict(a.status) == format::Verdict::Delivered,
                    status: Some(a.status),
                    headers,
                    body: a.excerpt,
                    error: None,
                    elapsed_ms,
                }
            }
            Err(e) => TestReport {
                webhook: name.to_string(),
                url: cfg.url.clone(),
                delivered: false,
                status: None,
                headers: BTreeMap::new(),
                body: String::new(),
                error: Some(e.to_string()),
                elapsed_ms,
            },
        })
    }
}

/// What a test send found.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TestReport {
    /// The webhook's name.
    pub webhook: String,
    /// Its URL.
    pub url: String,
    /// True for a 2xx answer.
    pub delivered: bool,
    /// The receiver's status (none when it could not be reached).
    pub status: Option<u16>,
    /// The answer's headers of interest (`content-type`, `retry-after`, `server`, …).
    pub headers: BTreeMap<String, String>,
    /// The start of the answer's body (at most 512 bytes).
    pub body: String,
    /// Why there was no answer.
    pub error: Option<String>,
    /// Milliseconds from the start of the request to the end of the answer.
    pub elapsed_ms: f64,
}

impl Notify for Webhooks {
    fn notify(&self, name: &str, event: TapEvent) -> bool {
        let Some(r) = self.get(name) else { return false };
        match r.append_now(&event) {
            Ok(()) => true,
            Err(e) => {
                tracing::error!(webhook = %name, error = %e, "cannot spool a notification");
                false
            }
        }
    }

    fn names(&self) -> Vec<String> {
        self.list.lock().iter().map(|r| r.config.name.clone()).collect()
    }
}

/// Copies the counters into the live metrics twice a second, until the webhooks stop.
async fn publish_metrics(hub: Arc<Hub>, hooks: Arc<Webhooks>) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        hooks.update_metrics(&hub);
        tokio::select! {
            _ = tick.tick() => {}
            _ = hooks.stop.cancelled() => {
                hooks.update_metrics(&hub);
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(toml_text: &str) -> Result<crate::config::Config, String> {
        crate::config::Config::from_toml(toml_text)
    }

    /// A sparse webhook's tap waits a twentieth of its batch delay between small groups, never
    /// more than 50 ms nor less than 1 ms.
    #[test]
    fn coalescing_follows_the_batch_delay() {
        let ms = Duration::from_millis;
        assert_eq!(coalesce(ms(1000)), ms(50));
        assert_eq!(coalesce(ms(3_600_000)), ms(50));
        assert_eq!(coalesce(ms(100)), ms(5));
        assert_eq!(coalesce(ms(10)), ms(1));
    }

    #[test]
    fn a_full_table_parses_with_defaults() {
        let c = parse(
            r#"
data-dir = "/tmp/x"
[[webhook]]
name = "ops"
url = "https://hooks.example.org/in"
query = "level=error"
signature-key = "k"
headers = { "X-Team" = "mail" }
auth = { token = "abc" }
"#,
        )
        .unwrap();
        let w = &c.webhook[0];
        assert_eq!(w.name, "ops");
        assert_eq!(w.format, Format::Stalwart);
        assert_eq!(w.max_bytes, 1 << 20);
        assert_eq!(w.fsync, Fsync::Always);
        assert_eq!(w.auth.as_ref().unwrap().header_value(), "Bearer abc");
        c.validate().unwrap();
        let basic = Auth { username: Some("u".into()), password: Some("p".into()), token: None };
        assert_eq!(basic.header_value(), "Basic dTpw");
    }

    #[test]
    fn bad_tables_are_refused_with_their_line() {
        let cases = [
            ("name = \"a b\"\nurl = \"http://x/\"", "webhook name"),
            ("name = \"a\"\nurl = \"ftp://x/\"", "http:// or https://"),
            ("name = \"a\"\nurl = \"http://x/\"\nmax-bytes = 10", "max-bytes must be between"),
            ("name = \"a\"\nurl = \"http://x/\"\nauth = { token = \"t\", username = \"u\" }", "not both"),
            ("name = \"a\"\nurl = \"http://x/\"\nheaders = { \"bad name\" = \"v\" }", "invalid header name"),
            ("name = \"a\"\nurl = \"http://x/\"\nfsync = \"sometimes\"", "unknown variant"),
            ("name = \"a\"\nurl = \"http://x/\"\nmax-dealy-ms = 5", "unknown field"),
        ];
        for (table, want) in cases {
            let text = format!("data-dir = \"/tmp/x\"\n\n[[webhook]]\n{table}\n");
            let e = parse(&text).unwrap_err();
            assert!(e.contains(want), "{table}: {e}");
            assert!(
                e.contains("line 3") || e.contains("line 4") || e.contains("line 5") || e.contains("line 6"),
                "{e}"
            );
        }
    }

    #[test]
    fn duplicate_names_and_a_missing_data_dir_are_refused() {
        let two = "data-dir = \"/tmp/x\"\n[[webhook]]\nname = \"a\"\nurl = \"http://x/\"\n[[webhook]]\nname = \"a\"\nurl = \"http://y/\"\n";
        let e = parse(two).unwrap().validate().unwrap_err().to_string();
        assert!(e.contains("two webhooks are named `a`"), "{e}");
        let no_dir = "[[webhook]]\nname = \"a\"\nurl = \"http://x/\"\n";
        let e = parse(no_dir).unwrap().validate().unwrap_err().to_string();
        assert!(e.contains("set data-dir"), "{e}");
    }
}
