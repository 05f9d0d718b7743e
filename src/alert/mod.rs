//! Alerts: `[[alert]]` tables whose conditions over the live metrics are evaluated every
//! `alert-interval`, and the notifications they send (events in the hub, a named webhook,
//! email) as they fire, repeat and resolve.
//!
//! - [`expr`]: the condition language (pure parser).
//! - [`eval`]: the sample rings and the arithmetic of rates, gauges and quantiles (pure).
//! - [`email`]: SMTP through a relay (`[smtp]`), on spawned tasks with a timeout.
//! - this module: the configuration and its validation, the state machine ([`Machine`]), and
//!   the evaluator task ([`start`]) that samples the registry, steps each alert and notifies.
//!
//! The evaluator is one tokio task. It reads the registry like a live metrics frame does (a
//! snapshot under the registry's read lock, once per interval), so evaluation costs ingest
//! nothing. Notifications never block it: the hub event is published without waiting for
//! ring space beyond a short bound, the webhook's `Notify::notify` only queues, and an email
//! is sent on its own task.

pub mod email;
pub mod eval;
pub mod expr;

use crate::event::raw::RawValue;
use crate::event::Catalogue;
use crate::hub::Hub;
use crate::metrics::query::NameFilter;
use crate::metrics::Kind;
use crate::tap::{Notify, TapEvent};
use ahash::AHashMap;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The default `alert-interval`.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);

/// The event type published when an alert fires or repeats (Stalwart's name).
pub const ALERT_EVENT: &str = "telemetry.alert";
/// The event type published when an alert resolves (livetap's own, known to the catalogue).
pub const RESOLVED_EVENT: &str = "telemetry.alert-resolved";

/// A duration setting: `"30s"`, `"500ms"`, `"5m"`, `"1h"`, `"1d"`, or a number of seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DurationSetting(pub Duration);

impl<'de> Deserialize<'de> for DurationSetting {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Secs(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Secs(s) => Ok(DurationSetting(Duration::from_secs(s))),
            Raw::Text(t) => parse_duration(&t).map(DurationSetting).ok_or_else(|| {
                serde::de::Error::custom(format!(
                    "`{t}` is not a duration: write a number and a unit (ms, s, m, h, d), such as \"30s\""
                ))
            }),
        }
    }
}

/// Parses `"30s"`, `"500ms"`, `"1.5m"`, `"2h"`, `"1d"` (at most a year).
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let split = s.find(|c: char| c.is_ascii_alphabetic())?;
    let n: f64 = s[..split].trim().parse().ok()?;
    let f = match &s[split..] {
        "ms" => 0.001,
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        "d" => 86_400.0,
        _ => return None,
    };
    let secs = n * f;
    (secs.is_finite() && (0.0..=366.0 * 86_400.0).contains(&secs)).then(|| Duration::from_secs_f64(secs))
}

/// One `[[alert]]` table.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct AlertConfig {
    /// A unique name (`auth-failures`).
    pub name: String,
    /// The condition, in the expression language of [`expr`]; spanned, so an error names its
    /// line in the file.
    pub condition: toml::Spanned<String>,
    /// How long the condition must hold before the alert fires (0: at the first evaluation).
    #[serde(default, rename = "for")]
    pub for_: DurationSetting,
    /// How often to notify again while it holds (absent: never).
    #[serde(default)]
    pub repeat: Option<DurationSetting>,
    /// The `[[webhook]]` to hand notifications to, by name.
    #[serde(default)]
    pub webhook: Option<String>,
    /// Addresses to email notifications to (needs `[smtp]`).
    #[serde(default)]
    pub email: Vec<String>,
    /// A text of its own for the notifications: `{name}`, `{state}`, `{condition}`,
    /// `{values}` and `{time}` are replaced.
    #[serde(default)]
    pub message: Option<String>,
}

/// How the SMTP connection is secured.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum SmtpTls {
    /// Plain SMTP (a relay on the same host or network).
    None,
    /// Plain, upgraded with STARTTLS, which is required (port 587).
    #[default]
    Starttls,
    /// TLS from the first byte (port 465).
    Tls,
}

/// The `[smtp]` table: the relay alert emails go through.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct SmtpConfig {
    /// The relay's host name (checked against its certificate with TLS).
    pub host: String,
    /// The port; by default 25, 587 or 465 for `tls = "none"`, `"starttls"` or `"tls"`.
    #[serde(default)]
    pub port: Option<u16>,
    /// `none`, `starttls` (default) or `tls`.
    #[serde(default)]
    pub tls: SmtpTls,
    /// The user name for SMTP AUTH, if the relay wants it.
    #[serde(default)]
    pub username: Option<String>,
    /// The password for SMTP AUTH.
    #[serde(default)]
    pub password: Option<String>,
    /// The sender address (`livetap <alerts@example.org>`).
    pub from: String,
    /// Seconds one message may take, connection included (default 30).
    #[serde(default = "default_smtp_timeout")]
    pub timeout_secs: u64,
}

fn default_smtp_timeout() -> u64 {
    30
}

/// Metric names and kinds an alert may read: the catalogue's gauges and histograms, every
/// event type (a counter), and livetap's own samples.
pub struct CatalogueKinds {
    names: AHashMap<String, (Kind, Option<String>)>,
}

/// livetap's own samples (`hub::own`), which the catalogue does not list.
const OWN: &[(&str, Kind, Option<&str>)] = &[
    ("livetap.events-accepted", Kind::Counter, None),
    ("livetap.events-rejected", Kind::Counter, None),
    ("livetap.events-per-second", Kind::Gauge, None),
    ("livetap.refused-batches", Kind::Counter, None),
    ("livetap.deliveries", Kind::Counter, None),
    ("livetap.dropped", Kind::Counter, None),
    ("livetap.subscribers", Kind::Gauge, None),
    ("livetap.lagged-subscribers", Kind::Gauge, None),
    ("livetap.metric-streams", Kind::Gauge, None),
    ("livetap.ring-occupancy", Kind::Gauge, None),
    ("livetap.ring-capacity", Kind::Gauge, None),
    ("livetap.metric-samples", Kind::Counter, None),
    ("livetap.scrapes", Kind::Counter, None),
    ("livetap.scrape-failures", Kind::Counter, None),
    ("livetap.memory", Kind::Gauge, Some("bytes")),
    (crate::metrics::registry::OVERFLOW_COUNTER, Kind::Counter, None),
];

impl CatalogueKinds {
    /// The names of `catalogue`.
    pub fn new(catalogue: &Catalogue) -> CatalogueKinds {
        let mut names = AHashMap::new();
        for name in catalogue.known_names() {
            names.insert(name.to_string(), (Kind::Counter, None));
        }
        for m in &catalogue.metrics {
            if let Some(kind) = Kind::parse(&m.kind) {
                names.insert(m.name.clone(), (kind, m.unit.clone()));
            }
        }
        for (n, k, u) in OWN {
            names.insert(n.to_string(), (*k, u.map(str::to_string)));
        }
        CatalogueKinds { names }
    }
}

impl expr::MetricKinds for CatalogueKinds {
    fn kind_of(&self, name: &str) -> Option<(Kind, Option<&str>)> {
        self.names.get(name).map(|(k, u)| (*k, u.as_deref()))
    }
}

/// A configuration problem in the alerts, with the fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AlertError {
    /// A condition does not parse.
    #[error("alert `{name}`{line}: condition {error}")]
    Condition {
        /// The alert.
        name: String,
        /// ` (line N)` when the file is known, else empty.
        line: String,
        /// The position and the reason.
        error: expr::ExprError,
    },
    /// Anything else, said in full.
    #[error("{0}")]
    Other(String),
}

/// The alerts, parsed and checked: what [`start`] runs.
#[derive(Debug, Clone)]
pub struct Parsed {
    /// Each alert's table and its condition.
    pub alerts: Vec<(AlertConfig, expr::Condition)>,
}

/// Parses and checks `alerts` (unique names, conditions, durations, email addresses and the
/// `[smtp]` table they need) against `kinds`; `source` is the config file's text, so a bad
/// condition's error names its line. Called at start-up (`Config::validate`) and reusable
/// for a reload.
pub fn check(
    alerts: &[AlertConfig],
    smtp: Option<&SmtpConfig>,
    interval: Duration,
    kinds: &dyn expr::MetricKinds,
    source: Option<&str>,
) -> Result<Parsed, AlertError> {
    let other = |m: String| Err(AlertError::Other(m));
    if interval < Duration::from_millis(100) || interval > Duration::from_secs(3600) {
        return other("`alert-interval` must be between 100ms and 1h".into());
    }
    let mut out = Vec::with_capacity(alerts.len());
    let mut seen = std::collections::HashSet::new();
    for a in alerts {
        if a.name.is_empty() || a.name.len() > 128 || a.name.chars().any(char::is_control) {
            return other("an [[alert]]'s `name` is 1 to 128 printable characters".into());
        }
        if !seen.insert(a.name.as_str()) {
            return other(format!("two [[alert]] tables are called `{}`: names must be unique", a.name));
        }
        let cond = expr::parse(a.condition.get_ref(), kinds).map_err(|error| {
            let line = source
                .and_then(|s| s.get(..a.condition.span().start))
                .map(|before| format!(" (line {})", before.matches('\n').count() + 1))
                .unwrap_or_default();
            AlertError::Condition { name: a.name.clone(), line, error }
        })?;
        if let Some(r) = a.repeat {
            if r.0 < interval {
                return other(format!(
                    "alert `{}`: `repeat` ({:?}) is shorter than `alert-interval` ({interval:?})",
                    a.name, r.0
                ));
            }
        }
        if !a.email.is_empty() {
            if smtp.is_none() {
                return other(format!(
                    "alert `{}` sends email but there is no [smtp] table: add one with `host` and `from`",
                    a.name
                ));
            }
            for addr in &a.email {
                if addr.parse::<lettre::message::Mailbox>().is_err() {
                    return other(format!("alert `{}`: `{addr}` is not an email address", a.name));
                }
            }
        }
        out.push((a.clone(), cond));
    }
    if let Some(s) = smtp {
        if s.host.is_empty() {
            return other("[smtp] `host` is empty".into());
        }
        if s.from.parse::<lettre::message::Mailbox>().is_err() {
            return other(format!("[smtp] `from`: `{}` is not an email address", s.from));
        }
        if s.username.is_some() != s.password.is_some() {
            return other("[smtp] `username` and `password` go together".into());
        }
        if !(1..=600).contains(&s.timeout_secs) {
            return other("[smtp] `timeout-secs` must be between 1 and 600".into());
        }
    }
    Ok(Parsed { alerts: out })
}

/// An alert's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum State {
    /// The condition does not hold (and the alert never fired).
    Ok,
    /// The condition holds, for less than `for` so far.
    Pending,
    /// The condition has held for `for`: notified.
    Firing,
    /// It fired and then stopped holding: notified (behaves like `Ok`).
    Resolved,
}

impl State {
    /// The lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Ok => "ok",
            State::Pending => "pending",
            State::Firing => "firing",
            State::Resolved => "resolved",
        }
    }
}

/// What a step of the state machine asks to notify.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// It fired.
    Fire,
    /// It still holds and `repeat` passed since the last notification.
    Repeat,
    /// It stopped holding after firing.
    Resolve,
}

/// The state machine of one alert, stepped with the condition's value and the time (any
/// monotonic clock; the tests use made-up times).
#[derive(Debug, Clone)]
pub struct Machine {
    /// How long the condition must hold.
    pub for_: Duration,
    /// How often to notify again while it holds.
    pub repeat: Option<Duration>,
    /// The current state.
    pub state: State,
    /// When the state was entered.
    pub since: Duration,
    /// When the last notification was sent.
    pub notified: Option<Duration>,
}

impl Machine {
    /// A machine in `Ok` from `now`.
    pub fn new(for_: Duration, repeat: Option<Duration>, now: Duration) -> Machine {
        Machine { for_, repeat, state: State::Ok, since: now, notified: None }
    }

    /// Steps the machine: `holds` is the condition at `now`.
    pub fn step(&mut self, holds: bool, now: Duration) -> Option<Transition> {
        let enter = |m: &mut Machine, s: State| {
            m.state = s;
            m.since = now;
        };
        match (self.state, holds) {
            (State::Ok | State::Resolved, true) => {
                enter(self, State::Pending);
                self.fire_if_due(now)
            }
            (State::Pending, true) => self.fire_if_due(now),
            (State::Pending, false) => {
                // It never fired, so nothing resolves: back to where it was.
                enter(self, if self.notified.is_some() { State::Resolved } else { State::Ok });
                None
            }
            (State::Firing, true) => match self.repeat {
                Some(r) if self.notified.is_some_and(|n| now.saturating_sub(n) >= r) => {
                    self.notified = Some(now);
                    Some(Transition::Repeat)
                }
                _ => None,
            },
            (State::Firing, false) => {
                enter(self, State::Resolved);
                self.notified = Some(now);
                Some(Transition::Resolve)
            }
            (State::Ok | State::Resolved, false) => None,
        }
    }

    fn fire_if_due(&mut self, now: Duration) -> Option<Transition> {
        if now.saturating_sub(self.since) >= self.for_ {
            self.state = State::Firing;
            self.since = now;
            self.notified = Some(now);
            Some(Transition::Fire)
        } else {
            None
        }
    }
}

/// One alert as `GET /api/livetap/alerts` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct AlertStatus {
    /// The alert's name.
    pub name: String,
    /// Its condition, as written.
    pub condition: String,
    /// `ok`, `pending`, `firing` or `resolved`.
    pub state: State,
    /// When it entered that state (RFC 3339, UTC).
    pub since: String,
    /// Each term of the condition and its value at the last evaluation (`null`: no data).
    pub values: Vec<TermValue>,
    /// When it last notified (fire, repeat or resolve), if ever.
    pub last_notified: Option<String>,
    /// When it was last evaluated, if yet.
    pub last_evaluated: Option<String>,
    /// Notifications sent: fire, repeat and resolve.
    pub notifications: u64,
}

/// A term and its value.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TermValue {
    /// The term as written (`rate(auth.failed, 5m)`).
    pub term: String,
    /// Its value, or `null` without data.
    pub value: Option<f64>,
}

/// The running alerts, shared with the HTTP handler.
pub struct Alerts {
    /// Written by the evaluator task after each evaluation, read by the API (a short lock).
    status: Mutex<Vec<AlertStatus>>,
    /// Emails sent and failed, written by the email tasks.
    pub mail: Arc<email::MailStats>,
    /// The evaluation interval.
    pub interval: Duration,
    /// Alerts a configuration reload put in force, taken by the evaluator at its next tick
    /// (written by [`reload`], taken by the evaluator; a short lock).
    pending: Mutex<Option<(Parsed, Option<email::Mailer>)>>,
    /// True while an evaluator task runs (set by whoever starts it).
    running: std::sync::atomic::AtomicBool,
}

impl Alerts {
    /// No alerts (none configured).
    pub fn none() -> Arc<Alerts> {
        Arc::new(Alerts {
            status: Mutex::new(Vec::new()),
            mail: Arc::default(),
            interval: DEFAULT_INTERVAL,
            pending: Mutex::new(None),
            running: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Each alert's state, in configuration order.
    pub fn status(&self) -> Vec<AlertStatus> {
        self.status.lock().clone()
    }

    /// True when any alert is firing.
    pub fn any_firing(&self) -> bool {
        self.status.lock().iter().any(|s| s.state == State::Firing)
    }
}

fn rfc3339(secs: i64) -> String {
    String::from_utf8_lossy(&crate::event::encode::format_timestamp(secs)).into_owned()
}

/// Checks the configured alerts against the hub's catalogue and the webhooks `notify` knows,
/// and starts the evaluator task. Returns the shared state and the task (none without alerts).
pub fn start(
    hub: Arc<Hub>,
    notify: Arc<dyn Notify>,
) -> Result<(Arc<Alerts>, Option<tokio::task::JoinHandle<()>>), AlertError> {
    let c = &hub.config;
    let interval = c.alert_interval.0;
    let alerts = Arc::new(Alerts {
        status: Mutex::new(Vec::new()),
        mail: Arc::new(email::MailStats::default()),
        interval,
        pending: Mutex::new(None),
        running: std::sync::atomic::AtomicBool::new(false),
    });
    let c = c.clone();
    let task = reload(&hub, notify, &alerts, &c)?;
    Ok((alerts, task))
}

/// Checks `config`'s alerts (as [`start`] does) and puts them in force: the running
/// evaluator takes them at its next tick, keeping the state (firing or not, since when, the
/// notifications counted) of every alert whose table did not change; an alert that is new or
/// changed starts in `ok`. Starts the evaluator (and returns its task) when none runs yet.
/// On an error nothing changes.
pub fn reload(
    hub: &Arc<Hub>,
    notify: Arc<dyn Notify>,
    alerts: &Arc<Alerts>,
    config: &crate::config::Config,
) -> Result<Option<tokio::task::JoinHandle<()>>, AlertError> {
    let c = config;
    let kinds = CatalogueKinds::new(&hub.catalogue);
    let parsed = check(&c.alert, c.smtp.as_ref(), alerts.interval, &kinds, None)?;
    let names = notify.names();
    for (a, _) in &parsed.alerts {
        if let Some(w) = &a.webhook {
            if !names.iter().any(|n| n == w) {
                let known =
                    if names.is_empty() { "none is configured".to_string() } else { names.join(", ") };
                return Err(AlertError::Other(format!(
                    "alert `{}` names the webhook `{w}`, which is not a [[webhook]] ({known}): add a \
                     [[webhook]] table with `name = \"{w}\"` or fix the name",
                    a.name
                )));
            }
        }
    }
    let mailer = match &c.smtp {
        Some(s) => Some(email::Mailer::new(s).map_err(|e| AlertError::Other(format!("[smtp]: {e}")))?),
        None => None,
    };
    if parsed.alerts.is_empty() && !alerts.running.load(std::sync::atomic::Ordering::Acquire) {
        return Ok(None);
    }
    *alerts.pending.lock() = Some((parsed, mailer));
    if alerts.running.swap(true, std::sync::atomic::Ordering::AcqRel) {
        return Ok(None);
    }
    Ok(Some(tokio::spawn(run(hub.clone(), notify, alerts.clone()))))
}

/// Checks `config`'s alerts against the catalogue and its own `[[webhook]]` names, changing
/// nothing (a reload's check before it changes anything).
pub fn validate(hub: &Hub, config: &crate::config::Config) -> Result<(), AlertError> {
    let kinds = CatalogueKinds::new(&hub.catalogue);
    let parsed = check(&config.alert, config.smtp.as_ref(), config.alert_interval.0, &kinds, None)?;
    for (a, _) in &parsed.alerts {
        if let Some(w) = &a.webhook {
            if !config.webhook.iter().any(|h| &h.name == w) {
                return Err(AlertError::Other(format!(
                    "alert `{}` names the webhook `{w}`, which is not a [[webhook]]",
                    a.name
                )));
            }
        }
    }
    Ok(())
}

/// The status line of a new (or changed) alert.
fn fresh_status(a: &AlertConfig, cond: &expr::Condition, now_secs: i64) -> AlertStatus {
    AlertStatus {
        name: a.name.clone(),
        condition: a.condition.get_ref().clone(),
        state: State::Ok,
        since: rfc3339(now_secs),
        values: cond.terms.iter().map(|t| TermValue { term: t.text.clone(), value: None }).collect(),
        last_notified: None,
        last_evaluated: None,
        notifications: 0,
    }
}

/// The evaluator: every interval, samples the registry, steps each alert and notifies.
async fn run(hub: Arc<Hub>, notify: Arc<dyn Notify>, alerts: Arc<Alerts>) {
    let interval = alerts.interval;
    let start = Instant::now();
    let mut parsed = Parsed { alerts: Vec::new() };
    let mut mailer: Option<email::Mailer> = None;
    let mut samples = eval::Samples::new(std::iter::empty(), interval);
    let mut filter = NameFilter::new(samples.names());
    let mut machines: Vec<Machine> = Vec::new();
    let mut counts: Vec<u64> = Vec::new();
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut shutdown = hub.shutdown_signal();
    loop {
        // New alerts from a reload (or the first ones): an unchanged alert keeps its machine,
        // its count and its status; the samples are kept when the measured terms are the same.
        if let Some((next, next_mailer)) = alerts.pending.lock().take() {
            let now = start.elapsed();
            let wall = crate::event::encode::now_secs();
            let old_status = alerts.status.lock().clone();
            let mut new_machines = Vec::new();
            let mut new_counts = Vec::new();
            let mut new_status = Vec::new();
            for (a, cond) in &next.alerts {
                let kept = parsed.alerts.iter().position(|(o, _)| o == a);
                match kept {
                    Some(i) => {
                        new_machines.push(machines[i].clone());
                        new_counts.push(counts[i]);
                        new_status
                            .push(old_status.get(i).cloned().unwrap_or_else(|| fresh_status(a, cond, wall)));
                    }
                    None => {
                        new_machines.push(Machine::new(a.for_.0, a.repeat.map(|r| r.0), now));
                        new_counts.push(0);
                        new_status.push(fresh_status(a, cond, wall));
                    }
                }
            }
            // The readings of the metrics the kept alerts read carry over, so their windows do
            // not restart.
            let mut next_samples =
                eval::Samples::new(next.alerts.iter().flat_map(|(_, c)| c.terms.iter()), interval);
            next_samples.carry_from(std::mem::take(&mut samples));
            samples = next_samples;
            filter = NameFilter::new(samples.names());
            machines = new_machines;
            counts = new_counts;
            *alerts.status.lock() = new_status;
            parsed = next;
            mailer = next_mailer;
        }
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        if parsed.alerts.is_empty() {
            continue;
        }
        let now = start.elapsed();
        samples.record(now, &hub.metric_values(&filter));
        let wall = crate::event::encode::now_secs();
        for (i, (a, cond)) in parsed.alerts.iter().enumerate() {
            let values: Vec<Option<f64>> = cond.terms.iter().map(|t| samples.value(t)).collect();
            let holds = cond.expr.eval(&values);
            let m = &mut machines[i];
            let before = m.state;
            let transition = m.step(holds, now);
            let terms: Vec<TermValue> = cond
                .terms
                .iter()
                .zip(&values)
                .map(|(t, v)| TermValue { term: t.text.clone(), value: *v })
                .collect();
            {
                let mut st = alerts.status.lock();
                if let Some(s) = st.get_mut(i) {
                    s.state = m.state;
                    if m.state != before {
                        s.since = rfc3339(wall);
                    }
                    s.values = terms.clone();
                    s.last_evaluated = Some(rfc3339(wall));
                    if transition.is_some() {
                        s.last_notified = Some(rfc3339(wall));
                        counts[i] += 1;
                        s.notifications = counts[i];
                    }
                }
            }
            if let Some(t) = transition {
                let n = Notification { alert: a, state: m.state, transition: t, terms: &terms, time: wall };
                tracing::warn!(alert = %a.name, state = m.state.as_str(), values = %n.values_text(), "alert {}", n.verb());
                deliver(&hub, notify.as_ref(), mailer.as_ref(), &alerts.mail, &n).await;
            }
        }
    }
}

/// What one notification says.
pub struct Notification<'a> {
    /// The alert.
    pub alert: &'a AlertConfig,
    /// Its state after the transition.
    pub state: State,
    /// Fire, repeat or resolve.
    pub transition: Transition,
    /// Each term's value.
    pub terms: &'a [TermValue],
    /// Unix time of the evaluation.
    pub time: i64,
}

impl Notification<'_> {
    /// `fired`, `still firing` or `resolved`.
    pub fn verb(&self) -> &'static str {
        match self.transition {
            Transition::Fire => "fired",
            Transition::Repeat => "still firing",
            Transition::Resolve => "resolved",
        }
    }

    /// `rate(auth.failed, 1m) = 3.5; queue.count = no data`.
    pub fn values_text(&self) -> String {
        let mut out = String::new();
        for (i, t) in self.terms.iter().enumerate() {
            if i > 0 {
                out.push_str("; ");
            }
            match t.value {
                Some(v) => out.push_str(&format!("{} = {}", t.term, round(v))),
                None => out.push_str(&format!("{} = no data", t.term)),
            }
        }
        out
    }

    /// The text: the alert's `message` with its placeholders replaced, or a standard one.
    pub fn text(&self) -> String {
        let time = rfc3339(self.time);
        match &self.alert.message {
            Some(m) => m
                .replace("{name}", &self.alert.name)
                .replace("{state}", self.state.as_str())
                .replace("{condition}", self.alert.condition.get_ref())
                .replace("{values}", &self.values_text())
                .replace("{time}", &time),
            None => format!(
                "Alert {} {} at {time}.\n\nCondition: {}\nValues: {}\nState: {}\n",
                self.alert.name,
                self.verb(),
                self.alert.condition.get_ref(),
                self.values_text(),
                self.state.as_str()
            ),
        }
    }

    /// The hub event: `telemetry.alert` or `telemetry.alert-resolved`, with the alert's name
    /// (`id`), condition (`details`), values (`value`), state (`state`) and what happened
    /// (`notification`: `fired`, `repeated` or `resolved`).
    pub fn event_json(&self) -> serde_json::Value {
        let kind = if self.transition == Transition::Resolve { RESOLVED_EVENT } else { ALERT_EVENT };
        serde_json::json!({
            "type": kind,
            "createdAt": self.time,
            "text": format!("Alert {} {}: {}", self.alert.name, self.verb(), self.values_text()),
            "data": {
                "id": self.alert.name,
                "details": self.alert.condition.get_ref(),
                "value": self.values_text(),
                "state": self.state.as_str(),
                "notification": match self.transition {
                    Transition::Fire => "fired",
                    Transition::Repeat => "repeated",
                    Transition::Resolve => "resolved",
                },
            }
        })
    }
}

/// Rounds a value for people (six significant digits are plenty for a threshold).
fn round(v: f64) -> f64 {
    if v == 0.0 || !v.is_finite() {
        return v;
    }
    let mag = 10f64.powi(5 - v.abs().log10().floor() as i32);
    (v * mag).round() / mag
}

/// Publishes the notification's event, hands it to the webhook and sends the email.
async fn deliver(
    hub: &Hub,
    notify: &dyn Notify,
    mailer: Option<&email::Mailer>,
    stats: &Arc<email::MailStats>,
    n: &Notification<'_>,
) {
    let json = n.event_json().to_string();
    let built = RawValue::parse_serde(json.as_bytes())
        .map_err(|e| e.to_string())
        .and_then(|raw| hub.builder().build(&raw, n.time).map_err(|e| e.to_string()));
    match built {
        Ok(ev) => {
            let event = Arc::new(ev);
            let mut batch = vec![event.clone()];
            match hub.publish(&mut batch, Some(Duration::from_secs(1))).await {
                Ok(seq) => {
                    if let Some(w) = &n.alert.webhook {
                        if !notify.notify(w, TapEvent { seq, event }) {
                            tracing::warn!(alert = %n.alert.name, webhook = %w, "the webhook did not take the alert");
                        }
                    }
                }
                Err(e) => tracing::warn!(alert = %n.alert.name, error = %e, "alert event not published"),
            }
        }
        Err(e) => tracing::warn!(alert = %n.alert.name, error = %e, "alert event not built"),
    }
    if let Some(m) = mailer {
        for to in &n.alert.email {
            m.send(to, n, stats.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(x: u64) -> Duration {
        Duration::from_secs(x)
    }

    #[test]
    fn fires_once_after_for_repeats_and_resolves() {
        let mut m = Machine::new(s(30), Some(s(60)), s(0));
        assert_eq!(m.step(false, s(0)), None);
        assert_eq!(m.state, State::Ok);
        assert_eq!(m.step(true, s(10)), None);
        assert_eq!(m.state, State::Pending);
        assert_eq!(m.step(true, s(20)), None);
        assert_eq!(m.step(true, s(40)), Some(Transition::Fire));
        assert_eq!((m.state, m.since), (State::Firing, s(40)));
        assert_eq!(m.step(true, s(50)), None, "fires once");
        assert_eq!(m.step(true, s(90)), None);
        assert_eq!(m.step(true, s(100)), Some(Transition::Repeat));
        assert_eq!(m.step(true, s(150)), None);
        assert_eq!(m.step(true, s(160)), Some(Transition::Repeat));
        assert_eq!(m.step(false, s(170)), Some(Transition::Resolve));
        assert_eq!(m.state, State::Resolved);
        assert_eq!(m.step(false, s(180)), None);
    }

    #[test]
    fn a_blip_shorter_than_for_never_fires() {
        let mut m = Machine::new(s(30), None, s(0));
        assert_eq!(m.step(true, s(0)), None);
        assert_eq!(m.step(true, s(20)), None);
        assert_eq!(m.step(false, s(25)), None);
        assert_eq!(m.state, State::Ok);
        // `for` counts again from the next time it holds.
        assert_eq!(m.step(true, s(30)), None);
        assert_eq!(m.step(true, s(59)), None);
        assert_eq!(m.step(true, s(60)), Some(Transition::Fire));
        // Without `repeat` it never notifies again while it holds.
        assert_eq!(m.step(true, s(10_000)), None);
    }

    #[test]
    fn for_zero_fires_at_the_first_evaluation_that_holds() {
        let mut m = Machine::new(Duration::ZERO, None, s(0));
        assert_eq!(m.step(true, s(0)), Some(Transition::Fire));
        assert_eq!(m.step(false, s(1)), Some(Transition::Resolve));
        assert_eq!(m.step(true, s(2)), Some(Transition::Fire));
    }

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("30s"), Some(s(30)));
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("1.5m"), Some(s(90)));
        assert_eq!(parse_duration("2h"), Some(s(7200)));
        assert_eq!(parse_duration("1d"), Some(s(86_400)));
        assert_eq!(parse_duration("30"), None);
        assert_eq!(parse_duration("5 parsecs"), None);
        assert_eq!(parse_duration("-1s"), None);
    }

    #[test]
    fn check_refuses_with_the_line_and_position() {
        let text =
            "alert-interval = \"1s\"\n\n[[alert]]\nname = \"a\"\ncondition = \"rate(auth.faild, 1m) > 1\"\n";
        let c = crate::config::Config::from_toml(text).unwrap();
        let kinds = CatalogueKinds::new(&Catalogue::embedded());
        let e = check(&c.alert, None, c.alert_interval.0, &kinds, Some(text)).unwrap_err();
        assert_eq!(e.to_string(), "alert `a` (line 5): condition at byte 5: unknown metric `auth.faild`");
        // Names are checked against the catalogue: event types are counters, the catalogue's
        // gauges and histograms keep their kinds, livetap's own samples are known.
        for ok in [
            "rate(auth.failed, 5m) > 50 or queue.count > 1000 or p99(delivery.total-time, 10m) > 60s",
            "livetap.ring-occupancy > 0.9 or rate(livetap.dropped, 1m) > 0",
        ] {
            let c =
                crate::config::Config::from_toml(&format!("[[alert]]\nname = \"b\"\ncondition = \"{ok}\"\n"))
                    .unwrap();
            check(&c.alert, None, DEFAULT_INTERVAL, &kinds, None).unwrap();
        }
        let c = crate::config::Config::from_toml(
            "[[alert]]\nname = \"b\"\ncondition = \"queue.count > 1\"\nemail = [\"ops@example.org\"]\n",
        )
        .unwrap();
        let e = check(&c.alert, None, DEFAULT_INTERVAL, &kinds, None).unwrap_err();
        assert!(e.to_string().contains("no [smtp] table"), "{e}");
    }

    #[test]
    fn notifications_say_what_and_why() {
        let c = crate::config::Config::from_toml(
            "[[alert]]\nname = \"auth\"\ncondition = \"rate(auth.failed, 1m) > 1\"\nmessage = \"{name} is {state}: {values}\"\n",
        )
        .unwrap();
        let terms = [TermValue { term: "rate(auth.failed, 1m)".into(), value: Some(2.0 / 3.0) }];
        let n = Notification {
            alert: &c.alert[0],
            state: State::Firing,
            transition: Transition::Fire,
            terms: &terms,
            time: 0,
        };
        assert_eq!(n.text(), "auth is firing: rate(auth.failed, 1m) = 0.666667");
        let j = n.event_json();
        assert_eq!(j["type"], "telemetry.alert");
        assert_eq!(j["data"]["id"], "auth");
        assert_eq!(j["data"]["state"], "firing");
        let r = Notification { transition: Transition::Resolve, state: State::Resolved, ..n };
        assert_eq!(r.event_json()["type"], "telemetry.alert-resolved");
    }
}
