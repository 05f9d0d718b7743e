//! `livetap check-config`: validates a config the way the server does at start-up, without
//! starting anything or binding a port, reports every error with its file and line, and lists
//! the effective settings with where each came from (default, file line, flag, environment),
//! secrets masked.
//!
//! **Every error.** The server stops at the first problem; this check goes on. A syntax error
//! is one error (nothing after it can be trusted). Otherwise each top-level key of the file is
//! deserialised on its own, and each table of an array of tables on its own, so an unknown key
//! or a wrong type in one does not hide the others; the keys that parse make the config that
//! [`Config::problems`] (the server's own validation, the one implementation) then checks in
//! full. Last come the checks the server makes when it opens things: principals' permissions
//! and filters, the TLS files, and the data directory (usable, and its format readable by this
//! build), all read-only.

use super::{Config, Overrides, Problem};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use toml::de::{DeTable, DeValue};
use toml::Spanned;

/// Where an effective setting came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// The built-in default.
    Default,
    /// The config file, at this line (from 1).
    File {
        /// The line.
        line: usize,
    },
    /// A command-line flag.
    Flag,
    /// An environment variable (the flag's `env`).
    Env,
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::Default => f.write_str("default"),
            Origin::File { line } => write!(f, "file:{line}"),
            Origin::Flag => f.write_str("flag"),
            Origin::Env => f.write_str("env"),
        }
    }
}

/// One effective setting: the key (`principal[0]` for a table of an array), its value as
/// TOML (secrets masked), and its origin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    /// The key.
    pub key: String,
    /// The value, masked where secret.
    pub value: String,
    /// Where it came from.
    pub origin: Origin,
}

/// One error: where (file and line when known), which setting, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckError {
    /// The config file, when the error is in it.
    pub file: Option<PathBuf>,
    /// The line in the file (from 1), when known.
    pub line: Option<usize>,
    /// The setting (`principal[1]`, `listen`, …), or `config` for the file as a whole.
    pub key: String,
    /// The reason and the fix.
    pub message: String,
}

impl std::fmt::Display for CheckError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.file, self.line) {
            (Some(p), Some(l)) => write!(f, "{}:{l}: ", p.display())?,
            (Some(p), None) => write!(f, "{}: ", p.display())?,
            _ => {}
        }
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// What [`check`] found.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// The file checked, if any.
    pub file: Option<PathBuf>,
    /// Every error, in the order of the file.
    pub errors: Vec<CheckError>,
    /// The effective settings (empty when the file could not be parsed at all).
    pub settings: Vec<Setting>,
    /// Facts worth knowing that are not errors (a data directory to be migrated, in use).
    pub notes: Vec<String>,
}

/// The text shown instead of a secret.
pub const MASK: &str = "\"********\"";

/// Keys whose values are secrets, wherever they appear (top level, `[[principal]]`,
/// `[[webhook]]` and its `auth`, `[smtp]`, `[[scrape]]`).
const SECRET_KEYS: [&str; 9] = [
    "admin-token",
    "webhook-key",
    "token-key",
    "api-key",
    "password-hash",
    "password",
    "token",
    "signature-key",
    "authorization",
];

/// True when a value under `key` must not be shown.
fn is_secret(key: &str) -> bool {
    SECRET_KEYS.contains(&key)
}

/// True when an HTTP header named `name` (a webhook's `headers`) may carry a credential.
fn is_secret_header(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    ["auth", "token", "key", "secret", "cookie", "signature", "password"].iter().any(|w| n.contains(w))
}

impl Report {
    /// True when there is no error.
    pub fn ok(&self) -> bool {
        self.errors.is_empty()
    }

    /// The readable form: errors first, then the settings, then a summary line.
    pub fn to_text(&self) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        let file = self
            .file
            .as_ref()
            .map_or("(no config file: defaults and flags)".into(), |p| p.display().to_string());
        let _ = writeln!(out, "livetap check-config: {file}");
        for e in &self.errors {
            let _ = writeln!(out, "error: {e}");
        }
        if !self.settings.is_empty() {
            let _ = writeln!(out, "\neffective settings (origin: default, file:LINE, flag, env):");
            let width = self.settings.iter().map(|s| s.key.len()).max().unwrap_or(0);
            for s in &self.settings {
                let _ = writeln!(out, "  {:<width$} = {}    # {}", s.key, s.value, s.origin);
            }
        }
        for n in &self.notes {
            let _ = writeln!(out, "note: {n}");
        }
        if self.ok() {
            let from_file = self.settings.iter().filter(|s| matches!(s.origin, Origin::File { .. })).count();
            let from_flags =
                self.settings.iter().filter(|s| matches!(s.origin, Origin::Flag | Origin::Env)).count();
            let _ = writeln!(
                out,
                "config OK: {} settings ({from_file} from the file, {from_flags} from flags or the environment)",
                self.settings.len()
            );
        } else {
            let n = self.errors.len();
            let _ = writeln!(out, "config has {n} error{}", if n == 1 { "" } else { "s" });
        }
        out
    }

    /// The JSON form, for scripts.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::json;
        json!({
            "ok": self.ok(),
            "file": self.file.as_ref().map(|p| p.display().to_string()),
            "errors": self.errors.iter().map(|e| json!({
                "file": e.file.as_ref().map(|p| p.display().to_string()),
                "line": e.line,
                "key": e.key,
                "message": e.message,
            })).collect::<Vec<_>>(),
            "settings": self.settings.iter().map(|s| {
                let (origin, line) = match &s.origin {
                    Origin::File { line } => ("file", Some(*line)),
                    o => (match o { Origin::Flag => "flag", Origin::Env => "env", _ => "default" }, None),
                };
                json!({ "key": s.key, "value": s.value, "origin": origin, "line": line })
            }).collect::<Vec<_>>(),
            "notes": self.notes,
        })
    }
}

/// Line (from 1) of byte `offset` in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset.min(text.len())).map_or(1, |b| b.matches('\n').count() + 1)
}

/// A step of a path into a TOML document.
#[derive(Debug, Clone, PartialEq)]
enum Step {
    Key(String),
    Index(usize),
}

/// True when `value`, or anything inside it, spans `offset` (an array of tables' span is its
/// first header's, not its body's, so the children are asked too).
fn spans(value: &Spanned<DeValue<'_>>, offset: usize) -> bool {
    value.span().contains(&offset)
        || match value.get_ref() {
            DeValue::Table(t) => t.iter().any(|(k, v)| k.span().contains(&offset) || spans(v, offset)),
            DeValue::Array(a) => a.iter().any(|v| spans(v, offset)),
            _ => false,
        }
}

/// The deepest path in `value` whose span contains `offset`.
fn path_at(value: &Spanned<DeValue<'_>>, offset: usize, path: &mut Vec<Step>) {
    match value.get_ref() {
        DeValue::Table(t) => {
            for (k, v) in t.iter() {
                if k.span().contains(&offset) || spans(v, offset) {
                    path.push(Step::Key(k.get_ref().to_string()));
                    path_at(v, offset, path);
                    return;
                }
            }
        }
        DeValue::Array(a) => {
            for (i, v) in a.iter().enumerate() {
                if spans(v, offset) {
                    path.push(Step::Index(i));
                    path_at(v, offset, path);
                    return;
                }
            }
        }
        _ => {}
    }
}

/// The start of the key (or element) at `path` in `table`, as far down as it exists.
fn offset_of(table: &DeTable<'_>, path: &[Step]) -> Option<usize> {
    let Some(Step::Key(first)) = path.first() else { return None };
    let (k, mut v) = table.iter().find(|(k, _)| k.get_ref() == first)?;
    let mut at = k.span().start;
    for step in &path[1..] {
        let next = match (step, v.get_ref()) {
            (Step::Key(name), DeValue::Table(t)) => {
                t.iter().find(|(k, _)| k.get_ref() == name).map(|(k, v)| (k.span().start, v))
            }
            (Step::Index(i), DeValue::Array(a)) => a.get(*i).map(|v| (v.span().start, v)),
            _ => None,
        };
        match next {
            Some((o, nv)) => {
                at = o;
                v = nv;
            }
            None => break,
        }
    }
    Some(at)
}

/// The first key of the table at `path` (other than `name`, which every message quotes the
/// value of) that `message` names as a word, such as `api-key` in "api-key must be …".
fn named_key(doc: &DeTable<'_>, path: &[Step], message: &str) -> Option<String> {
    let Some(Step::Key(first)) = path.first() else { return None };
    let (_, mut v) = doc.iter().find(|(k, _)| k.get_ref() == first)?;
    for step in &path[1..] {
        v = match (step, v.get_ref()) {
            (Step::Index(i), DeValue::Array(a)) => a.get(*i)?,
            (Step::Key(n), DeValue::Table(t)) => t.iter().find(|(k, _)| k.get_ref() == n)?.1,
            _ => return None,
        };
    }
    let DeValue::Table(t) = v.get_ref() else { return None };
    let word = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric() || c == '-');
    t.iter().map(|(k, _)| k.get_ref().to_string()).filter(|k| k != "name").find(|k| {
        message.match_indices(k.as_str()).any(|(at, _)| {
            !word(message[..at].chars().next_back()) && !word(message[at + k.len()..].chars().next())
        })
    })
}

/// Renders `value` as inline TOML, masking secrets under their keys.
fn render(key: &str, value: &toml::Value) -> String {
    if is_secret(key) && !matches!(value, toml::Value::Table(_) | toml::Value::Array(_)) {
        return MASK.into();
    }
    match value {
        toml::Value::String(s) => format!("{s:?}"),
        toml::Value::Array(a) => {
            let items: Vec<String> = a.iter().map(|v| render(key, v)).collect();
            format!("[{}]", items.join(", "))
        }
        toml::Value::Table(t) => {
            let item = |k: &String, v| match key == "headers" && is_secret_header(k) {
                true => format!("{k} = {MASK}"),
                false => format!("{k} = {}", render(k, v)),
            };
            let items: Vec<String> = t.iter().map(|(k, v)| item(k, v)).collect();
            format!("{{ {} }}", items.join(", "))
        }
        other => other.to_string(),
    }
}

/// Checks the config at `path` (or none) with `overrides` applied, as the server would at
/// start-up. `origins` says, for each override given, whether it came from a flag or the
/// environment (by config key, such as `admin-token`); an override not in it counts as a flag.
pub fn check(path: Option<&Path>, overrides: Overrides, origins: &BTreeMap<String, Origin>) -> Report {
    let mut report = Report { file: path.map(Path::to_path_buf), ..Report::default() };
    let text = match path {
        Some(p) => match std::fs::read_to_string(p) {
            Ok(t) => t,
            Err(e) => {
                report.errors.push(CheckError {
                    file: Some(p.into()),
                    line: None,
                    key: "config".into(),
                    message: format!("cannot read the file: {e}"),
                });
                return report;
            }
        },
        None => String::new(),
    };
    let file_error = |line: Option<usize>, key: String, message: String| CheckError {
        file: path.map(Path::to_path_buf),
        line,
        key,
        message,
    };
    // Syntax: one error, and nothing more can be said.
    let doc = match DeTable::parse(&text) {
        Ok(d) => d,
        Err(e) => {
            let line = e.span().map(|s| line_of(&text, s.start));
            report.errors.push(file_error(
                line,
                "config".into(),
                format!("TOML syntax: {}", e.message().trim()),
            ));
            return report;
        }
    };
    let table: toml::Table = match text.parse() {
        Ok(t) => t,
        Err(e) => {
            report.errors.push(file_error(None, "config".into(), format!("TOML: {e}")));
            return report;
        }
    };
    // Each key, and each table of an array of tables, deserialised alone.
    let mut good = toml::Table::new();
    // For each array of tables: the file's index of each element kept.
    let mut kept: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    let mut parse_errors = false;
    for (key, value) in &table {
        let elements: Vec<(Option<usize>, toml::Value)> = match value {
            toml::Value::Array(a) if !a.is_empty() && a.iter().all(toml::Value::is_table) => {
                a.iter().cloned().enumerate().map(|(i, v)| (Some(i), v)).collect()
            }
            v => vec![(None, v.clone())],
        };
        for (index, element) in elements {
            let mut mini = toml::Table::new();
            let wrapped = match index {
                Some(_) => toml::Value::Array(vec![element.clone()]),
                None => element.clone(),
            };
            mini.insert(key.clone(), wrapped.clone());
            let mini_text = toml::to_string(&mini).unwrap_or_default();
            match toml::from_str::<Config>(&mini_text) {
                Ok(_) => match index {
                    Some(i) => {
                        kept.entry(key.clone()).or_default().push(i);
                        let slot = good.entry(key.clone()).or_insert_with(|| toml::Value::Array(Vec::new()));
                        if let toml::Value::Array(a) = slot {
                            a.push(element);
                        }
                    }
                    None => {
                        good.insert(key.clone(), element);
                    }
                },
                Err(e) => {
                    parse_errors = true;
                    // The path of the error in the small document, mapped onto the file.
                    let mut path = Vec::new();
                    if let (Some(span), Ok(m)) = (e.span(), DeTable::parse(&mini_text)) {
                        let m = Spanned::new(m.span(), DeValue::Table(m.get_ref().clone()));
                        path_at(&m, span.start, &mut path);
                    }
                    if path.is_empty() {
                        path.push(Step::Key(key.clone()));
                    }
                    if let (Some(i), Some(Step::Index(_))) = (index, path.get(1)) {
                        path[1] = Step::Index(i);
                    } else if let Some(i) = index {
                        path.truncate(1);
                        path.push(Step::Index(i));
                    }
                    let line = offset_of(doc.get_ref(), &path).map(|o| line_of(&text, o));
                    let shown = match index {
                        Some(i) => format!("{key}[{i}]"),
                        None => key.clone(),
                    };
                    report.errors.push(file_error(line, shown, e.message().trim().to_string()));
                }
            }
        }
    }
    let parsed = if parse_errors {
        toml::to_string(&good).ok().and_then(|t| toml::from_str::<Config>(&t).ok())
    } else {
        Config::from_toml(&text).ok()
    };
    let Some(mut config) = parsed else {
        report.errors.push(file_error(None, "config".into(), "the file does not make a config".into()));
        return report;
    };
    let given = given_overrides(&overrides);
    let file_sources = config.source.len();
    config.apply(overrides);

    // Where a problem is: its table's line, or the key's, or the flag that set it.
    let locate =
        |key: &str, index: Option<usize>, message: &str| -> (Option<PathBuf>, Option<usize>, String) {
            let shown = match index {
                Some(i) => format!("{key}[{}]", kept.get(key).and_then(|k| k.get(i)).copied().unwrap_or(i)),
                None => key.to_string(),
            };
            if key == "source" && index.is_some_and(|i| i >= file_sources) {
                return (None, None, format!("{shown} (from a flag)"));
            }
            if index.is_none() && given.contains(&key.to_string()) {
                return (None, None, format!("{key} (from a flag)"));
            }
            let mut p = vec![Step::Key(key.into())];
            if let Some(i) = index {
                p.push(Step::Index(kept.get(key).and_then(|k| k.get(i)).copied().unwrap_or(i)));
                // The key of the table the message is about, when it names one.
                if let Some(k) = named_key(doc.get_ref(), &p, message) {
                    p.push(Step::Key(k));
                }
            }
            let line = offset_of(doc.get_ref(), &p).map(|o| line_of(&text, o));
            (line.and(path.map(Path::to_path_buf)), line, shown)
        };
    let mut push = |key: &str, index: Option<usize>, message: String| {
        let (file, line, key) = locate(key, index, &message);
        report.errors.push(CheckError { file, line, key, message });
    };
    for Problem { key, index, message } in config.problems() {
        push(key, index, message);
    }
    opened_checks(&config, &mut push, &mut report.notes);
    report.errors.sort_by_key(|e| (e.line.is_none(), e.line));
    report.settings = settings(&config, &table, doc.get_ref(), &text, &given, origins, &kept, file_sources);
    report
}

/// The config keys the overrides set.
fn given_overrides(o: &Overrides) -> Vec<String> {
    let mut out = Vec::new();
    let mut add = |set: bool, key: &str| {
        if set {
            out.push(key.to_string());
        }
    };
    add(o.listen.is_some(), "listen");
    add(o.admin_token.is_some(), "admin-token");
    add(o.webhook_key.is_some(), "webhook-key");
    add(o.ingest_socket.is_some(), "ingest-socket");
    add(o.data_dir.is_some(), "data-dir");
    add(o.demo.is_some(), "demo");
    add(o.demo_rate.is_some(), "demo-rate");
    add(o.demo_generation.is_some(), "demo-generation");
    add(o.demo_traffic.is_some(), "demo-traffic");
    add(o.ring_capacity.is_some(), "ring-capacity");
    add(o.subscriber_queue.is_some(), "subscriber-queue");
    add(o.matcher_threads.is_some(), "matcher-threads");
    add(o.io_threads.is_some(), "io-threads");
    add(o.max_body_bytes.is_some(), "max-body-bytes");
    add(o.ping_interval_secs.is_some(), "ping-interval-secs");
    add(o.stall_timeout_secs.is_some(), "stall-timeout-secs");
    add(o.log_level.is_some(), "log-level");
    add(o.log_format.is_some(), "log-format");
    add(o.allow_plain_http.is_some(), "allow-plain-http");
    add(o.log_utc_offset.is_some(), "log-utc-offset");
    out
}

/// What the server checks when it opens things, done read-only: principals' permissions and
/// filters, the TLS files, the log filter, and the data directory.
fn opened_checks(
    config: &Config,
    push: &mut impl FnMut(&str, Option<usize>, String),
    notes: &mut Vec<String>,
) {
    let (_, keys) = crate::event::Catalogue::with_keys(1024);
    for k in &config.keys {
        keys.register(
            &k.name,
            crate::event::KeyKind::from_name(&k.kind).unwrap_or(crate::event::KeyKind::String),
        );
    }
    for i in 0..config.principal.len() {
        let built = crate::auth::principal::Principals::build(
            "check-config-placeholder-admin-token",
            &config.principal[i..=i],
            &keys,
            &config.query_limits(),
            config.max_subscribers_per_principal,
            config.ingest_rate_per_principal,
        );
        if let Err(e) = built {
            let message = match e {
                super::ConfigError::Invalid { message, .. } => message,
                other => other.to_string(),
            };
            push("principal", Some(i), message);
        }
    }
    // Followed files are opened for reading, as the server opens them before it starts (a
    // missing one is fine: it is read when it appears). The journal is probed and syslog
    // addresses bound only by the server: that would start a process or take a port.
    let format = crate::ingest::maillog::format::MailLog::new(
        crate::ingest::maillog::format::Framing::Text,
        config.log_utc_offset.offset(),
    );
    let catching_up = std::sync::Arc::new(crate::ingest::logsource::CatchingUp::default());
    for (i, s) in config.source.iter().enumerate() {
        if let crate::ingest::logsource::SourceConfig::File(f) = s {
            let opened = crate::ingest::tail::TailSource::open(
                &f.path,
                false,
                format.sharing(crate::ingest::maillog::format::Framing::Text),
                catching_up.clone(),
            );
            if let Err(e) = opened {
                push("source", Some(i), e.to_string());
            }
        }
    }
    if let Some(tls) = &config.tls {
        if let Err(e) = crate::http::tls::TlsReloader::new(tls) {
            push("tls", None, format!("{e} (the files must be readable by livetap's user)"));
        }
    }
    if tracing_subscriber::EnvFilter::try_new(&config.log_level).is_err() {
        push(
            "log-level",
            None,
            format!("`{}` is not a log filter (warn, info, debug, or a tracing filter)", config.log_level),
        );
    }
    if let Some(dir) = &config.data_dir {
        data_dir_checks(dir, push, notes);
    }
}

/// The data directory: usable (a writable directory, or one that can be created), and in a
/// format this build reads; notes whether it will be created or migrated, and whether a
/// livetap holds it now. Nothing in it is written.
fn data_dir_checks(dir: &Path, push: &mut impl FnMut(&str, Option<usize>, String), notes: &mut Vec<String>) {
    use crate::store::datadir::{in_use, inspect, FORMAT};
    use std::os::unix::ffi::OsStrExt;
    let writable = |p: &Path| {
        let Ok(c) = std::ffi::CString::new(p.as_os_str().as_bytes()) else { return false };
        // SAFETY: `access` reads the NUL-terminated path it is given, nothing else.
        unsafe { libc::access(c.as_ptr(), libc::W_OK | libc::X_OK) == 0 }
    };
    if dir.exists() {
        if !dir.is_dir() {
            push("data-dir", None, format!("{} is not a directory", dir.display()));
            return;
        }
        if !writable(dir) {
            push(
                "data-dir",
                None,
                format!("{} is not writable by this user: chown it to livetap's user", dir.display()),
            );
        }
    } else {
        let parent = dir.ancestors().skip(1).find(|a| a.exists());
        if !parent.is_some_and(|p| p.is_dir() && writable(p)) {
            push(
                "data-dir",
                None,
                format!(
                    "{} does not exist and cannot be created: create it, owned by livetap's user",
                    dir.display()
                ),
            );
            return;
        }
    }
    match inspect(dir) {
        Ok(None) => {
            notes.push(format!("data directory {} will be created in format {FORMAT}", dir.display()))
        }
        Ok(Some(f)) if f < FORMAT => notes.push(format!(
            "data directory {} is in format {f}: livetap will migrate it to format {FORMAT} at start",
            dir.display()
        )),
        Ok(Some(_)) => {}
        Err(e) => push("data-dir", None, e.to_string()),
    }
    if in_use(dir) {
        notes.push(format!("data directory {} is in use by a running livetap", dir.display()));
    }
}

/// A scalar setting's value as TOML.
trait Show {
    fn show(&self) -> Option<String>;
}

macro_rules! show_display {
    ($($t:ty),*) => { $( impl Show for $t { fn show(&self) -> Option<String> { Some(self.to_string()) } } )* };
}
show_display!(bool, u32, u64, usize);

impl Show for String {
    fn show(&self) -> Option<String> {
        Some(format!("{self:?}"))
    }
}
impl Show for std::net::SocketAddr {
    fn show(&self) -> Option<String> {
        Some(format!("\"{self}\""))
    }
}
impl Show for PathBuf {
    fn show(&self) -> Option<String> {
        Some(format!("{:?}", self.display().to_string()))
    }
}
impl<T: Show> Show for Option<T> {
    fn show(&self) -> Option<String> {
        self.as_ref().and_then(Show::show)
    }
}
impl Show for Vec<String> {
    fn show(&self) -> Option<String> {
        Some(format!("[{}]", self.iter().map(|s| format!("{s:?}")).collect::<Vec<_>>().join(", ")))
    }
}
impl Show for crate::event::catalogue::Generation {
    fn show(&self) -> Option<String> {
        Some(format!("\"{self}\""))
    }
}
impl Show for super::LogFormat {
    fn show(&self) -> Option<String> {
        Some(match self {
            super::LogFormat::Text => "\"text\"".into(),
            super::LogFormat::Json => "\"json\"".into(),
        })
    }
}
impl Show for super::DemoTraffic {
    fn show(&self) -> Option<String> {
        Some(match self {
            super::DemoTraffic::Stalwart => "\"stalwart\"".into(),
            super::DemoTraffic::Postfix => "\"postfix\"".into(),
        })
    }
}
impl Show for crate::ingest::logsource::LogZone {
    fn show(&self) -> Option<String> {
        use crate::ingest::logsource::LogZone;
        Some(match self {
            LogZone::Local => "\"local\"".into(),
            LogZone::Fixed(s) => {
                let sign = if *s < 0 { '-' } else { '+' };
                let a = s.unsigned_abs();
                format!("\"{sign}{:02}:{:02}\"", a / 3600, a % 3600 / 60)
            }
        })
    }
}
impl Show for crate::alert::DurationSetting {
    fn show(&self) -> Option<String> {
        Some(format!("\"{}ms\"", self.0.as_millis()))
    }
}

/// The keys whose values are tables or arrays of tables, shown from the file (masked) or,
/// for `[history]`, from the effective settings.
const TABLE_KEYS: [&str; 10] =
    ["keys", "scrape", "principal", "tls", "history", "source", "alert", "smtp", "sink", "webhook"];

/// The effective settings, one per scalar key and one per table.
#[allow(clippy::too_many_arguments)]
fn settings(
    c: &Config,
    table: &toml::Table,
    doc: &DeTable<'_>,
    text: &str,
    given: &[String],
    origins: &BTreeMap<String, Origin>,
    kept: &BTreeMap<String, Vec<usize>>,
    file_sources: usize,
) -> Vec<Setting> {
    let mut out = Vec::new();
    let origin_of = |key: &str, path: &[Step]| -> Origin {
        if given.iter().any(|g| g == key) {
            return origins.get(key).cloned().unwrap_or(Origin::Flag);
        }
        match offset_of(doc, path) {
            Some(o) if table.contains_key(key) => Origin::File { line: line_of(text, o) },
            _ => Origin::Default,
        }
    };
    macro_rules! scalars {
        ($($f:ident),* $(,)?) => { $( {
            let key = stringify!($f).replace('_', "-");
            let origin = origin_of(&key, &[Step::Key(key.clone())]);
            let value = match c.$f.show() {
                Some(_) if is_secret(&key) => MASK.to_string(),
                Some(v) => v,
                None => "(not set)".to_string(),
            };
            out.push(Setting { key, value, origin });
        } )* };
    }
    scalars!(
        listen,
        admin_token,
        webhook_key,
        ingest_socket,
        data_dir,
        demo,
        demo_rate,
        demo_generation,
        demo_traffic,
        ring_capacity,
        subscriber_queue,
        replay_bytes,
        replay_age_secs,
        matcher_threads,
        io_threads,
        max_subscribers,
        max_body_bytes,
        max_webhook_bytes,
        webhook_dedupe_secs,
        webhook_dedupe_entries,
        webhook_sender_timeout_secs,
        max_line_bytes,
        max_event_bytes,
        ingest_wait_ms,
        ping_interval_secs,
        stall_timeout_secs,
        span_ttl_secs,
        max_spans,
        drain_timeout_secs,
        log_level,
        log_format,
        max_query_bytes,
        max_query_terms,
        max_query_depth,
        max_filter_text_bytes,
        metrics_max_interval_secs,
        max_metrics,
        allow_plain_http,
        token_key,
        live_token_ttl_secs,
        live_token_grace_secs,
        cors_origins,
        cors_max_age_secs,
        max_header_bytes,
        max_url_bytes,
        max_connections,
        max_connections_per_ip,
        per_ip_exempt,
        max_subscribers_per_principal,
        ingest_rate_per_principal,
        max_concurrent_ingest,
        max_ingest_bodies_per_source,
        max_auth_failures,
        auth_failure_window_secs,
        header_timeout_secs,
        body_timeout_secs,
        write_timeout_secs,
        alert_interval,
        log_utc_offset,
    );
    for key in TABLE_KEYS {
        match table.get(key) {
            Some(toml::Value::Array(a)) => {
                let indexes = kept.get(key).cloned().unwrap_or_default();
                for i in indexes {
                    let Some(v) = a.get(i) else { continue };
                    let origin = origin_of(key, &[Step::Key(key.into()), Step::Index(i)]);
                    out.push(Setting { key: format!("{key}[{i}]"), value: render(key, v), origin });
                }
            }
            Some(v) => {
                let value = if key == "history" {
                    toml::Value::try_from(&c.history)
                        .map(|h| render(key, &h))
                        .unwrap_or_else(|_| render(key, v))
                } else {
                    render(key, v)
                };
                out.push(Setting {
                    key: key.into(),
                    value,
                    origin: origin_of(key, &[Step::Key(key.into())]),
                });
            }
            None if key == "history" => {
                let value = toml::Value::try_from(&c.history).map(|h| render(key, &h)).unwrap_or_default();
                out.push(Setting { key: key.into(), value, origin: Origin::Default });
            }
            None => {}
        }
    }
    // Sources the flags added (`--postfix-log`, `--journal`, `--syslog-listen`).
    for (i, s) in c.source.iter().enumerate().skip(file_sources) {
        use crate::ingest::logsource::SourceConfig;
        let value = match s {
            SourceConfig::File(f) => {
                format!("{{ file = {:?}, from-start = {} }}", f.path.display().to_string(), f.from_start)
            }
            SourceConfig::Journal(j) => format!("{{ journal = true, from-start = {} }}", j.from_start),
            SourceConfig::Syslog(l) => format!("{{ listen = \"{}\" }}", l.listen),
        };
        out.push(Setting { key: format!("source[{i}]"), value, origin: Origin::Flag });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(text: &str, overrides: Overrides) -> (Report, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("livetap.toml");
        std::fs::write(&p, text).unwrap();
        (check(Some(&p), overrides, &BTreeMap::new()), dir)
    }

    fn setting<'a>(r: &'a Report, key: &str) -> &'a Setting {
        r.settings.iter().find(|s| s.key == key).unwrap_or_else(|| panic!("no {key} in {:?}", r.settings))
    }

    #[test]
    fn a_good_file_lists_sources_and_masks_secrets() {
        let text = "listen = \"127.0.0.1:9000\"\nadmin-token = \"a-secret-admin-token-1234\"\n\n\
                    [[principal]]\nname = \"ops\"\napi-key = \"ops-key-0123456789abcdef\"\npermissions = [\"tracing-live\"]\n";
        let (r, _d) = run(text, Overrides { ring_capacity: Some(1024), ..Default::default() });
        assert!(r.ok(), "{:?}", r.errors);
        assert_eq!(setting(&r, "listen").origin, Origin::File { line: 1 });
        assert_eq!(setting(&r, "admin-token").value, MASK);
        assert_eq!(
            setting(&r, "ring-capacity"),
            &Setting { key: "ring-capacity".into(), value: "1024".into(), origin: Origin::Flag }
        );
        assert_eq!(setting(&r, "subscriber-queue").origin, Origin::Default);
        let p = setting(&r, "principal[0]");
        assert_eq!(p.origin, Origin::File { line: 4 });
        assert!(p.value.contains("name = \"ops\"") && !p.value.contains("ops-key"), "{}", p.value);
        let text_out = r.to_text();
        assert!(text_out.contains("config OK") && !text_out.contains("a-secret-admin"), "{text_out}");
        assert_eq!(r.to_json()["ok"], true);
    }

    #[test]
    fn every_error_is_reported_with_its_line() {
        let text = "ring-capacity = 1\nnope = 3\nsubscriber-queue = \"big\"\n\n\
                    [[principal]]\nname = \"a\"\napi-key = \"short\"\npermissions = []\n\n\
                    [[principal]]\nname = \"b\"\npassword-hash = \"x\"\ncolour = 1\n\n\
                    [[alert]]\nname = \"q\"\ncondition = \"no.such.metric > 3\"\n";
        let (r, _d) = run(text, Overrides::default());
        let lines: Vec<(Option<usize>, &str)> = r.errors.iter().map(|e| (e.line, e.key.as_str())).collect();
        assert!(lines.contains(&(Some(1), "ring-capacity")), "{lines:?}");
        assert!(lines.contains(&(Some(2), "nope")), "{lines:?}");
        assert!(lines.contains(&(Some(3), "subscriber-queue")), "{lines:?}");
        assert!(lines.contains(&(Some(7), "principal[0]")), "the api-key line: {lines:?}");
        assert!(lines.iter().any(|(l, k)| *k == "principal[1]" && *l == Some(13)), "{lines:?}");
        assert!(lines.contains(&(Some(17), "alert[0]")), "the condition line: {lines:?}");
        assert!(!r.ok());
        assert!(r.to_text().contains(&format!("config has {} errors", r.errors.len())));
    }

    #[test]
    fn a_syntax_error_is_one_error() {
        let (r, _d) = run("listen = \"x\nring-capacity = 4\n", Overrides::default());
        assert_eq!(r.errors.len(), 1, "{:?}", r.errors);
        assert_eq!(r.errors[0].line, Some(1));
        assert!(r.settings.is_empty());
    }

    #[test]
    fn a_flag_error_names_the_flag_and_the_data_dir_is_checked() {
        let (r, d) = run("", Overrides { ring_capacity: Some(1), ..Default::default() });
        assert_eq!(r.errors[0].key, "ring-capacity (from a flag)");
        assert_eq!(r.errors[0].line, None);
        // A data directory in a newer format is an error; one to migrate is a note.
        let data = d.path().join("data");
        std::fs::create_dir(&data).unwrap();
        let (r, _e) = run("", Overrides { data_dir: Some(data.clone()), ..Default::default() });
        assert!(r.ok() && r.notes.iter().any(|n| n.contains("migrate")), "{:?} {:?}", r.errors, r.notes);
        std::fs::write(data.join(crate::store::datadir::STAMP_FILE), "format = 99\n").unwrap();
        let (r, _e) = run("", Overrides { data_dir: Some(data.clone()), ..Default::default() });
        assert!(
            r.errors.iter().any(|e| e.key == "data-dir (from a flag)" && e.message.contains("format 99")),
            "{:?}",
            r.errors
        );
        let missing_tls = "[tls]\ncert = \"/nonexistent/c.pem\"\nkey = \"/nonexistent/k.pem\"\n";
        let (r, _e) = run(missing_tls, Overrides::default());
        assert!(r.errors.iter().any(|e| e.key == "tls" && e.line == Some(1)), "{:?}", r.errors);
    }

    #[test]
    fn followed_files_are_opened_read_only() {
        let d = tempfile::tempdir().unwrap();
        let text = format!(
            "[[source]]\nkind = \"file\"\npath = \"{}\"\n\n[[source]]\nkind = \"file\"\npath = \"{}\"\n",
            d.path().display(),
            d.path().join("not-yet.log").display()
        );
        let (r, _e) = run(&text, Overrides::default());
        assert_eq!(r.errors.len(), 1, "{:?}", r.errors);
        assert_eq!((r.errors[0].key.as_str(), r.errors[0].line), ("source[0]", Some(1)), "{:?}", r.errors);
        assert!(r.errors[0].message.contains("is a directory"), "{:?}", r.errors);
        assert!(!d.path().join("not-yet.log").exists());
    }

    #[test]
    fn the_listed_scalars_cover_every_key() {
        // serde's list of the fields, from the error an unknown key gets.
        let e = Config::from_toml("not-a-key = 1").unwrap_err();
        let listed = settings(
            &Config::default(),
            &toml::Table::new(),
            &DeTable::new(),
            "",
            &[],
            &BTreeMap::new(),
            &BTreeMap::new(),
            0,
        );
        let fields: Vec<&str> = e.split('`').skip(3).step_by(2).collect();
        assert!(fields.len() > 60 && fields.contains(&"listen") && fields.contains(&"webhook"), "{e}");
        for field in fields {
            let shown = listed.iter().any(|s| s.key == field) || TABLE_KEYS.contains(&field);
            assert!(shown, "`{field}` is not listed by check-config");
        }
    }
}
