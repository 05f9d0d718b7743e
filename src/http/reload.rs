//! Reloading the configuration without loss (SIGHUP): [`Server::reload`] reads the file
//! again, checks all of it, and puts what changed in force while every stream stays connected
//! and every accepted event reaches every subscriber once.
//!
//! What changes, and how:
//! - limits read per request or connection (body sizes, timeouts, connection caps, ping
//!   interval, stall timeout, query limits, the webhook key): the whole new configuration is
//!   stored in the hub ([`Hub::set_current`](crate::hub::Hub::set_current)) and the handlers load it once per request or
//!   connection, never per event;
//! - principals and permissions (and the admin token, if the file sets it): a new set is
//!   built and swapped in whole; every live stream whose principal is gone, or lacks the
//!   permission its endpoint needs, is closed with a last `event: error` frame saying why;
//!   a stream whose principal's forced filter changed is closed with a frame asking it to
//!   reconnect (an `EventSource` resumes after its `Last-Event-ID` under the new filter, so it
//!   misses nothing). Filters are not swapped in place: the index would have to be rebuilt
//!   anyway, and a stream's replay after a reconnect is the path that is already exact;
//! - sinks, webhooks, alerts and mail-log sources: diffed by their tables; what is unchanged
//!   keeps running untouched. Everything that can fail to start (a sink's file, a webhook's
//!   spool, a source's listener) is opened before the first swap (`tap::sink::prepare_reload`,
//!   `Webhooks::prepare_reload`, `Server::open_sources`), so such a failure changes nothing;
//!   then the swaps (`commit_reload`s, `alert::reload`, the sources started);
//! - TLS certificate and live-token key: read again, as before;
//! - settings that need a restart ([`RESTART_ONLY`]): a change is logged as a warning naming
//!   each, and the running value stays.
//!
//! Nothing here runs on ingest's or the matcher's path: taps are swapped by the index builder
//! in one index generation (`Registry::swap_tap`), and the reload only waits for the matchers
//! to pass a position, never the other way round.

use super::server::Server;
use crate::auth::Security;
use crate::config::{Config, Overrides};
use crate::ingest::logsource::{Shared, SourceConfig};
use crate::subscriber::Subscriber;
use std::path::Path;
use std::sync::Arc;
use tokio::task::JoinHandle;

/// Why a reload changed nothing (or, for a source that cannot start, not everything).
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The file does not read, parse or validate; nothing changed.
    #[error("{0}")]
    Config(#[from] crate::config::ConfigError),
    /// The TLS files or the live-token key could not be read; nothing changed.
    #[error("{0}")]
    Files(std::io::Error),
    /// The principals do not build; nothing changed.
    #[error("principals: {0}")]
    Principals(crate::config::ConfigError),
    /// The alerts do not check against the catalogue or the webhooks; nothing changed.
    #[error("alerts: {0}")]
    Alerts(crate::alert::AlertError),
    /// A new or changed sink, webhook or mail-log source could not open (a file, a spool, a
    /// listener's address); nothing changed.
    #[error("{0}")]
    Start(String),
    /// Putting an opened sink, webhook or alert set in force failed (the index refused a
    /// tap). What came before it in the reload is in force, and recorded as such; the rest of
    /// the old configuration keeps running.
    #[error("{0}")]
    Apply(String),
}

/// What a reload did (logged by `main`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reloaded {
    /// The TLS certificate and key were read again.
    pub tls: bool,
    /// The live-token key changed (every token issued before is now invalid).
    pub token_key_changed: bool,
    /// The principals (names, permissions, filters, credentials, caps) changed.
    pub principals_changed: bool,
    /// Live streams closed because their principal was removed or lost the permission.
    pub streams_closed: usize,
    /// Live streams asked to reconnect because their principal's filter changed.
    pub streams_reconnecting: usize,
    /// Limits and other settings applied per request or connection that changed, by name.
    pub limits: Vec<&'static str>,
    /// Sinks, webhooks, alerts and sources added, changed or removed (`added sink errors`).
    pub changes: Vec<String>,
    /// Settings that changed in the file but need a restart; their running values stay.
    pub restart_needed: Vec<&'static str>,
}

impl std::fmt::Display for Reloaded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts: Vec<String> = Vec::new();
        if self.tls {
            parts.push("TLS certificate re-read".into());
        }
        if self.token_key_changed {
            parts.push("live-token key changed".into());
        }
        if self.principals_changed {
            parts.push(format!(
                "principals changed ({} streams closed, {} asked to reconnect)",
                self.streams_closed, self.streams_reconnecting
            ));
        }
        if !self.limits.is_empty() {
            parts.push(format!("limits: {}", self.limits.join(", ")));
        }
        parts.extend(self.changes.iter().cloned());
        if !self.restart_needed.is_empty() {
            parts.push(format!("need a restart (kept): {}", self.restart_needed.join(", ")));
        }
        if parts.is_empty() {
            f.write_str("nothing changed")
        } else {
            f.write_str(&parts.join("; "))
        }
    }
}

/// What a reload compares against and replaces, held by the server behind one lock (one
/// reload at a time).
pub struct State {
    /// The configuration in force.
    config: Config,
    /// The admin token the server started with (kept when the file sets none).
    admin_token: String,
    /// Each running mail-log source with its table.
    sources: Vec<(SourceConfig, JoinHandle<()>)>,
    /// The correlator the mail-log sources share (made on first use).
    shared: Option<Shared>,
    /// Tasks a reload started (the alert evaluator, the correlator's expiry).
    tasks: Vec<JoinHandle<()>>,
}

impl State {
    /// The state of a server that just started.
    pub fn new(
        config: Config,
        admin_token: String,
        sources: Vec<(SourceConfig, JoinHandle<()>)>,
        shared: Option<Shared>,
    ) -> State {
        State { config, admin_token, sources, shared, tasks: Vec::new() }
    }

    /// Stops what the state runs (at shutdown, after the hub's drain).
    pub async fn stop(self) {
        for t in self.sources.into_iter().map(|(_, t)| t).chain(self.tasks) {
            t.abort();
            let _ = t.await;
        }
    }
}

/// Settings read once at start: a change needs a restart. `main` and the README name them.
pub const RESTART_ONLY: &[&str] = &[
    "listen",
    "data-dir",
    "ring-capacity",
    "subscriber-queue",
    "matcher-threads",
    "io-threads",
    "max-subscribers",
    "replay-bytes",
    "replay-age-secs",
    "max-spans",
    "span-ttl-secs",
    "max-metrics",
    "max-event-bytes",
    "max-line-bytes",
    "keys",
    "history",
    "tls",
    "ingest-socket",
    "demo",
    "scrape",
    "cors-origins",
    "max-concurrent-ingest",
    "max-ingest-bodies-per-source",
    "webhook-dedupe-secs",
    "token-key",
    "live-token-ttl-secs",
    "max-auth-failures",
    "alert-interval",
    "log-level",
    "log-utc-offset",
    "metrics-max-interval-secs",
    "drain-timeout-secs",
    "allow-plain-http",
    "per-ip-exempt",
];

/// Puts back the running value of every setting that needs a restart, and names those that
/// differed.
fn keep_restart_only(old: &Config, new: &mut Config) -> Vec<&'static str> {
    let mut changed = Vec::new();
    macro_rules! keep {
        ($($name:literal => $($field:ident),+);* $(;)?) => {$(
            if false $(|| old.$field != new.$field)+ {
                changed.push($name);
                $( new.$field = old.$field.clone(); )+
            }
        )*};
    }
    keep!(
        "listen" => listen;
        "data-dir" => data_dir;
        "ring-capacity" => ring_capacity;
        "subscriber-queue" => subscriber_queue;
        "matcher-threads" => matcher_threads;
        "io-threads" => io_threads;
        "max-subscribers" => max_subscribers;
        "replay-bytes" => replay_bytes;
        "replay-age-secs" => replay_age_secs;
        "max-spans" => max_spans;
        "span-ttl-secs" => span_ttl_secs;
        "max-metrics" => max_metrics;
        "max-event-bytes" => max_event_bytes;
        "max-line-bytes" => max_line_bytes;
        "keys" => keys;
        "history" => history;
        "tls" => tls;
        "ingest-socket" => ingest_socket;
        "demo" => demo, demo_rate, demo_generation, demo_traffic;
        "scrape" => scrape;
        "cors-origins" => cors_origins, cors_max_age_secs;
        "max-concurrent-ingest" => max_concurrent_ingest;
        "max-ingest-bodies-per-source" => max_ingest_bodies_per_source;
        "webhook-dedupe-secs" => webhook_dedupe_secs, webhook_dedupe_entries, webhook_sender_timeout_secs;
        "token-key" => token_key;
        "live-token-ttl-secs" => live_token_ttl_secs, live_token_grace_secs;
        "max-auth-failures" => max_auth_failures, auth_failure_window_secs;
        "alert-interval" => alert_interval;
        "log-level" => log_level;
        "log-utc-offset" => log_utc_offset;
        "metrics-max-interval-secs" => metrics_max_interval_secs;
        "drain-timeout-secs" => drain_timeout_secs;
        "allow-plain-http" => allow_plain_http;
        "per-ip-exempt" => per_ip_exempt;
    );
    changed
}

/// The limits applied per request or connection that differ.
fn changed_limits(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut changed = Vec::new();
    macro_rules! limits {
        ($($name:literal => $field:ident),* $(,)?) => {$(
            if old.$field != new.$field {
                changed.push($name);
            }
        )*};
    }
    limits!(
        "max-body-bytes" => max_body_bytes,
        "max-webhook-bytes" => max_webhook_bytes,
        "ingest-wait-ms" => ingest_wait_ms,
        "ping-interval-secs" => ping_interval_secs,
        "stall-timeout-secs" => stall_timeout_secs,
        "max-query-bytes" => max_query_bytes,
        "max-query-terms" => max_query_terms,
        "max-query-depth" => max_query_depth,
        "max-filter-text-bytes" => max_filter_text_bytes,
        "max-header-bytes" => max_header_bytes,
        "max-url-bytes" => max_url_bytes,
        "max-connections" => max_connections,
        "max-connections-per-ip" => max_connections_per_ip,
        "max-subscribers-per-principal" => max_subscribers_per_principal,
        "ingest-rate-per-principal" => ingest_rate_per_principal,
        "header-timeout-secs" => header_timeout_secs,
        "body-timeout-secs" => body_timeout_secs,
        "write-timeout-secs" => write_timeout_secs,
        "webhook-key" => webhook_key,
    );
    changed
}

use crate::sse::error_frame;

/// What a reload does to one live stream under the new principals.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    Keep,
    /// Closed: the principal is gone or lacks the permission.
    Forbidden(String),
    /// Closed, to reconnect under the principal's new filter.
    Reconnect(String),
}

/// Closes `sub` with its last frame if `principals` no longer allow it as it is, and says
/// what it did. A reload calls it for every registered stream after the swap; a new traces
/// stream calls it once it is registered with its owner, with the principals in force then,
/// since its request may have been authenticated against the set a reload has just replaced
/// after listing the streams. Either the reload's list holds the stream (with its owner,
/// recorded before it is registered) or the stream's own check sees the new set (the swap
/// comes before the list, the registration before the check, and the registry's lock orders
/// the list and the registration), so no stream escapes a swap.
pub(crate) fn judge(sub: &Subscriber, principals: &crate::auth::Principals) -> Verdict {
    let v = verdict(sub, principals);
    match &v {
        Verdict::Keep => {}
        Verdict::Forbidden(detail) => {
            tracing::info!(subscriber = sub.id, "{detail}: stream closed");
            sub.close_with(error_frame("forbidden", detail));
        }
        Verdict::Reconnect(detail) => {
            tracing::info!(subscriber = sub.id, "{detail}: stream asked to reconnect");
            sub.close_with(error_frame("reconnect", detail));
        }
    }
    v
}

/// Why `principals` no longer let principal `name` hold a stream that needs `permission`
/// (the principal is gone, or lacks the permission), or `None` when they still do. The one
/// rule for traces streams ([`judge`]) and live metrics streams alike.
pub(crate) fn forbidden(
    principals: &crate::auth::Principals,
    name: &str,
    permission: crate::auth::Permission,
) -> Option<String> {
    match principals.by_name(name) {
        None => Some(format!("principal `{name}` removed by a configuration reload")),
        Some(p) if !p.can(permission) => Some(format!(
            "principal `{name}` no longer has the `{}` permission after a configuration reload",
            permission.name()
        )),
        Some(_) => None,
    }
}

fn verdict(sub: &Subscriber, principals: &crate::auth::Principals) -> Verdict {
    let Some(owner) = sub.owner() else { return Verdict::Keep };
    let name = &owner.principal;
    if let Some(detail) = forbidden(principals, name, owner.permission) {
        return Verdict::Forbidden(detail);
    }
    match principals.by_name(name) {
        Some(p) if p.filter.as_ref().map(|f| f.to_string()) != owner.filter => Verdict::Reconnect(format!(
            "the filter of principal `{name}` changed in a configuration reload: reconnect (Last-Event-ID \
             resumes after the last event sent)"
        )),
        _ => Verdict::Keep,
    }
}

impl Server {
    /// Reads the configuration file `path` again with the same command-line `overrides` the
    /// server started with, and puts what changed in force (see the module docs). A file that
    /// does not parse or validate changes nothing; the error is logged and returned.
    pub async fn reload(&self, path: Option<&Path>, overrides: Overrides) -> Result<Reloaded, ReloadError> {
        let config = match Config::load(path, overrides) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "reload refused: the configuration does not load; nothing changed");
                return Err(e.into());
            }
        };
        self.reload_config(config).await
    }

    /// Puts `config` (already loaded and validated) in force, as [`Server::reload`] does.
    pub async fn reload_config(&self, mut config: Config) -> Result<Reloaded, ReloadError> {
        let r = self.apply(&mut config).await;
        if let Err(e) = &r {
            tracing::error!(error = %e, "reload failed");
        }
        r
    }

    async fn apply(&self, new: &mut Config) -> Result<Reloaded, ReloadError> {
        let hub = &self.hub;
        let mut state = self.state.lock().await;
        let old = state.config.clone();
        let mut r = Reloaded { restart_needed: keep_restart_only(&old, new), ..Reloaded::default() };
        for name in &r.restart_needed {
            tracing::warn!(
                setting = name,
                "reload: `{name}` changed but needs a restart; the running value stays"
            );
        }
        // Everything that can be refused is checked before anything changes.
        let admin_token = new.admin_token.clone().unwrap_or_else(|| state.admin_token.clone());
        let mut principals =
            Security::principals_of(new, &admin_token, &hub.keys).map_err(ReloadError::Principals)?;
        crate::alert::validate(hub, new).map_err(ReloadError::Alerts)?;
        // The files (TLS certificate, live-token key) are read, and sinks, webhooks and new
        // mail-log sources opened (files, spools, listeners), now: one that cannot be read or
        // start leaves everything as it was, and only the swaps below remain.
        let certificate = match &self.tls {
            Some(tls) => Some(tls.load_again().map_err(|e| ReloadError::Files(std::io::Error::other(e)))?),
            None => None,
        };
        let token_key = self.security.tokens.read_key().map_err(ReloadError::Files)?;
        let sinks = crate::tap::sink::prepare_reload(hub, &old.sink, &new.sink)
            .map_err(|e| ReloadError::Start(e.to_string()))?;
        let webhooks =
            self.webhooks.prepare_reload(hub, &new.webhook).map_err(|e| ReloadError::Start(e.to_string()))?;
        let sources = self.open_sources(&mut state, new).await?;
        if let (Some(tls), Some(certificate)) = (&self.tls, certificate) {
            tls.install(certificate);
            r.tls = true;
        }
        r.token_key_changed = self.security.tokens.install_key(token_key);
        // Limits: the whole configuration, for every request and connection from now on.
        r.limits = changed_limits(&old, new);
        hub.set_current(new.clone());
        // Principals: swapped whole, then the streams they no longer allow are closed.
        let running = self.security.principals.load_full();
        r.principals_changed = !principals.same_as(&running);
        if r.principals_changed {
            principals.carry_stream_counts(&running);
            let principals = Arc::new(principals);
            self.security.principals.store(principals.clone());
            // Live metrics streams check their principal themselves when told.
            hub.principals_changed();
            for sub in hub.registry.snapshot() {
                match judge(&sub, &principals) {
                    Verdict::Keep => {}
                    Verdict::Forbidden(_) => r.streams_closed += 1,
                    Verdict::Reconnect(_) => r.streams_reconnecting += 1,
                }
            }
        }
        state.admin_token = admin_token;
        // From here on the configuration in force is the new one but for the parts not
        // swapped yet, each recorded as it is, so that a later reload compares with what runs.
        let mut in_force = new.clone();
        in_force.sink = old.sink.clone();
        in_force.webhook = old.webhook.clone();
        in_force.alert = old.alert.clone();
        in_force.smtp = old.smtp.clone();
        in_force.source = old.source.clone();
        state.config = in_force;
        // Sinks, webhooks, alerts, sources: what is unchanged keeps running.
        let apply = |e: String| ReloadError::Apply(e);
        r.changes
            .extend(crate::tap::sink::commit_reload(hub, sinks).await.map_err(|e| apply(e.to_string()))?);
        state.config.sink = new.sink.clone();
        let changed = self.webhooks.commit_reload(hub, webhooks).await.map_err(|e| apply(e.to_string()))?;
        r.changes.extend(changed);
        state.config.webhook = new.webhook.clone();
        if old.alert != new.alert || old.smtp != new.smtp {
            let notify: Arc<dyn crate::tap::Notify> = self.webhooks.clone();
            let task =
                crate::alert::reload(hub, notify, &self.alerts, new).map_err(|e| apply(e.to_string()))?;
            state.tasks.extend(task);
            r.changes.push(format!("alerts: {} in force", new.alert.len()));
        }
        state.config.alert = new.alert.clone();
        state.config.smtp = new.smtp.clone();
        self.reload_sources(&mut state, sources, new, &mut r).await;
        state.config = new.clone();
        Ok(r)
    }

    /// Opens (binds, follows, spawns) every mail-log source of `new` that is not running,
    /// without starting it: a source that cannot open stops the reload before anything
    /// changed. A listener whose address a running source holds fails here (a restart
    /// moves it); a source's table is its identity, so a changed source is a new one.
    async fn open_sources(&self, state: &mut State, new: &Config) -> Result<Vec<NewSource>, ReloadError> {
        let mut opened = Vec::new();
        for config in &new.source {
            if state.sources.iter().any(|(c, _)| c == config) {
                continue;
            }
            // The correlator the mail-log sources share, made on first use (its expiry task
            // costs nothing while no source feeds it, should the reload stop below).
            if let Some(expiry) = Shared::ensure(&mut state.shared, new) {
                state.tasks.push(tokio::spawn(expiry.run(self.hub.clone())));
            }
            let Some(shared) = &state.shared else { continue };
            let (source, description) =
                shared.open(config).await.map_err(|e| ReloadError::Start(e.to_string()))?;
            opened.push(NewSource { config: config.clone(), source, description });
        }
        Ok(opened)
    }

    /// Stops the mail-log sources whose table is gone or changed and starts the ones
    /// [`Server::open_sources`] opened; an unchanged source keeps running (its file position,
    /// its listener, its journal child).
    async fn reload_sources(
        &self,
        state: &mut State,
        opened: Vec<NewSource>,
        new: &Config,
        r: &mut Reloaded,
    ) {
        let running = std::mem::take(&mut state.sources);
        let mut kept = Vec::new();
        for (config, task) in running {
            if new.source.contains(&config) {
                kept.push((config, task));
            } else {
                // The source's task ends here; the tasks it spawned end with their pipe or
                // socket (a journal child is killed on drop).
                task.abort();
                let _ = task.await;
                r.changes.push(format!("stopped source {}", describe(&config)));
            }
        }
        state.sources = kept;
        for NewSource { config, source, description } in opened {
            tracing::info!(source = %description, "starting event source");
            let task = tokio::spawn(source.run(self.hub.clone()));
            state.sources.push((config, task));
            r.changes.push(format!("started source {description}"));
        }
    }
}

/// A mail-log source a reload opened, to start once the reload commits.
struct NewSource {
    config: SourceConfig,
    source: Box<dyn crate::ingest::Source>,
    description: String,
}

fn describe(c: &SourceConfig) -> String {
    match c {
        SourceConfig::File(f) => format!("file {}", f.path.display()),
        SourceConfig::Journal(_) => "journal".into(),
        SourceConfig::Syslog(s) => format!("syslog {:?}", s.listen),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restart_only_settings_keep_their_running_values_and_are_named() {
        let old = Config::default();
        let mut new = Config {
            ring_capacity: old.ring_capacity * 2,
            listen: "127.0.0.1:9".parse().unwrap(),
            max_body_bytes: old.max_body_bytes + 1,
            ..Config::default()
        };
        let changed = keep_restart_only(&old, &mut new);
        assert_eq!(changed, vec!["listen", "ring-capacity"]);
        assert_eq!(new.ring_capacity, old.ring_capacity);
        assert_eq!(new.listen, old.listen);
        assert_eq!(changed_limits(&old, &new), vec!["max-body-bytes"]);
        for name in changed {
            assert!(RESTART_ONLY.contains(&name), "{name} is documented");
        }
    }

    #[test]
    fn the_last_frame_is_an_sse_error_event_with_a_json_body() {
        let f = error_frame("forbidden", "principal `x` removed");
        let text = std::str::from_utf8(&f).unwrap();
        let data = text.strip_prefix("event: error\ndata: ").unwrap().strip_suffix("\n\n").unwrap();
        let v: serde_json::Value = serde_json::from_str(data).unwrap();
        assert_eq!(v["error"], "forbidden");
        assert_eq!(v["detail"], "principal `x` removed");
    }

    #[test]
    fn streams_are_judged_by_their_principal_permission_and_filter() {
        use crate::auth::{Permission, Principals};
        use crate::config::PrincipalConfig;
        use crate::subscriber::StreamOwner;
        let (_, keys) = crate::event::Catalogue::with_keys(64);
        let limits = Config::default().query_limits();
        let principal = |name: &str, perms: &[&str], filter: Option<&str>| PrincipalConfig {
            name: name.into(),
            permissions: perms.iter().map(|p| p.to_string()).collect(),
            filter: filter.map(str::to_string),
            api_key: Some(format!("{name}-key")),
            ..PrincipalConfig::default()
        };
        let set = Principals::build(
            "admin-token",
            &[
                principal("a", &["tracing-live"], None),
                principal("b", &["metrics-live"], Some("level=error")),
            ],
            &keys,
            &limits,
            10,
            0,
        )
        .unwrap();
        let stream = |name: &str, filter: Option<&str>| {
            let s = Subscriber::new(1, crate::query::Expr::True, false, 4, None);
            s.set_owner(StreamOwner {
                principal: name.into(),
                permission: Permission::TracingLive,
                filter: filter.map(str::to_string),
            });
            s
        };
        assert_eq!(verdict(&stream("a", None), &set), Verdict::Keep);
        assert!(
            matches!(verdict(&stream("gone", None), &set), Verdict::Forbidden(d) if d.contains("`gone` removed"))
        );
        assert!(
            matches!(verdict(&stream("b", None), &set), Verdict::Forbidden(d) if d.contains("tracing-live"))
        );
        assert!(matches!(verdict(&stream("a", Some("level=error")), &set), Verdict::Reconnect(_)));
        // A stream without an owner (none recorded) is left alone.
        let anonymous = Subscriber::new(2, crate::query::Expr::True, false, 4, None);
        assert_eq!(verdict(&anonymous, &set), Verdict::Keep);
        // `judge` closes what it does not keep, with the frame that says why, and only that.
        let kept = stream("a", None);
        assert_eq!(judge(&kept, &set), Verdict::Keep);
        assert!(!kept.is_closed() && kept.farewell().is_none());
        let gone = stream("gone", None);
        assert!(matches!(judge(&gone, &set), Verdict::Forbidden(_)));
        let frame = String::from_utf8(gone.farewell().expect("a last frame").to_vec()).unwrap();
        assert!(frame.starts_with("event: error\n") && frame.contains("forbidden"), "{frame}");
        let refiltered = stream("a", Some("level=error"));
        assert!(matches!(judge(&refiltered, &set), Verdict::Reconnect(_)));
        let frame = String::from_utf8(refiltered.farewell().expect("a last frame").to_vec()).unwrap();
        assert!(frame.contains("reconnect"), "{frame}");
    }
}
