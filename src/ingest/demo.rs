//! The demo source: a seedable generator of realistic mail traffic, and the source behind `livetap --demo`.
//!
//! [`DemoGenerator`] is pure and synchronous: it keeps several stateful "stories" in flight
//! and interleaves their events, the way a busy Stalwart server interleaves its sessions:
//!
//! 1. inbound SMTP sessions (`smtp.connection-start` … `smtp.connection-end`), on port 25 for
//!    mail to local users or on the submission port for mail that local users send out;
//! 2. outbound deliveries of the messages those submission sessions queued
//!    (`delivery.attempt-start` … `delivery.attempt-end`), with the occasional rejected
//!    recipient, refused connection or missing MX record;
//! 3. background noise: any other catalogue event, with its keys filled by kind, weighted so
//!    that a few percent of all events are at `warn` or `error` level.
//!
//! It speaks one generation of Stalwart's catalogue ([`Generation`], `demo-generation`): v0.15
//! by default, or v0.16, where the stories use the v0.16 names of the types Stalwart renamed
//! (`queue.message-queued`) and v0.16's keys, and the noise is drawn from the v0.16 event-keys
//! file, a quarter of it from the types v0.16 added or renamed, so they are seen often.
//!
//! Every value comes from a small bounded pool (addresses, domains, IPs such as `10.0.0.5`),
//! so the filters a newcomer types while trying livetap out find something. Events come out
//! in the JSON shape producers send, so the demo exercises exactly the ingest path real
//! traffic takes. [`DemoSource`] paces the generator to a fixed rate and publishes through the
//! hub until shutdown.

use super::Source;
use crate::event::catalogue::{self, Generation};
use crate::event::{encode, Catalogue, Event, Level, RawValue};
use crate::hub::Hub;
use crate::hub::IngestStats;
use crate::metrics::push::MetricRecord;
use std::borrow::Cow;
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::time::{Instant, MissedTickBehavior};

/// A producer value that owns or statically borrows all its strings.
type Raw = RawValue<'static>;
/// The members of one event's `data` object.
type Members = Vec<(Cow<'static, str>, Raw)>;

/// The domain the demo server hosts; inbound mail on port 25 is addressed to it.
const LOCAL_DOMAIN: &str = "example.org";
/// The demo server's own host name, as it appears in DSNs.
const SERVER_HOSTNAME: &str = "mx1.example.org";
/// Remote domains that send mail in and receive mail out.
const EXTERNAL_DOMAINS: &[&str] =
    &["example.com", "example.net", "mail.test", "bank.example", "shop.example", "lists.example.com"];
/// Local accounts; the account id of a user is its position here plus one, so that
/// `account-id=3` and `account-name=carol` always find the same person.
const USERS: &[&str] = &[
    "alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy", "mallory", "niaj",
    "olivia", "peggy", "rupert", "sybil",
];
/// Local parts of remote correspondents.
const CONTACTS: &[&str] =
    &["info", "support", "john.doe", "jane", "billing", "noreply", "newsletter", "sales", "hr", "it"];
/// Public-looking remote addresses (documentation ranges), including two IPv6 ones.
const EXTERNAL_IPS: &[&str] =
    &["203.0.113.7", "203.0.113.25", "203.0.113.42", "203.0.113.199", "2001:db8::25", "2001:db8::1:7"];
/// The demo server's own addresses.
const LOCAL_IPS: &[&str] = &["192.0.2.10", "192.0.2.11"];
/// The address the README's example filters on; it is picked far more often than its peers.
const FAVOURITE_IP: &str = "10.0.0.5";

const DETAILS: &[&str] = &[
    "Operation completed",
    "Invalid credentials",
    "Connection reset by peer",
    "Temporary lookup failure",
    "Rate limit exceeded",
    "Message accepted",
    "Policy not found",
    "Certificate expired",
    "Resource temporarily unavailable",
];
const CAUSES: &[&str] = &[
    "Connection refused (os error 111)",
    "Connection timed out",
    "No route to host (os error 113)",
    "Broken pipe (os error 32)",
    "DNS lookup failed: NXDOMAIN",
    "TLS handshake failed",
];
const REASONS: &[&str] = &[
    "Connection refused",
    "Mailbox full",
    "Quota exceeded",
    "Too many connections",
    "Message too large",
    "Relay access denied",
];
const LISTENERS: &[&str] =
    &["smtp", "submission", "submissions", "imap", "imaptls", "pop3", "https", "sieve"];
const LOCAL_PORTS: &[i64] = &[25, 587, 465, 143, 993, 110, 995, 443, 4190];
const SMTP_CODES: &[i64] = &[250, 421, 450, 451, 452, 535, 550, 552, 554];
const LIMITS: &[i64] = &[10, 25, 100, 500, 1000];
const MAILBOXES: &[&str] = &["Inbox", "Sent Items", "Junk Mail", "Drafts", "Archive", "Deleted Items"];
const COLLECTIONS: &[&str] = &["email", "mailbox", "thread", "identity", "calendar", "addressbook"];
const RESULTS: &[&str] = &["pass", "fail", "neutral", "softfail", "none", "temperror", "permerror"];
const POLICIES: &[&str] = &["reject", "quarantine", "none", "enforce", "testing"];
const AUTH_MECHANISMS: &[&str] = &["plain", "login", "oauthbearer", "xoauth2"];
const TLS_VERSIONS: &[&str] = &["TLSv1.3", "TLSv1.2"];
const PATHS: &[&str] = &[
    "/opt/stalwart/etc/config.toml",
    "/opt/stalwart/data",
    "/opt/stalwart/logs",
    "/var/spool/stalwart/queue",
];
const URLS: &[&str] = &[
    "https://mail.example.org/.well-known/jmap",
    "https://mta-sts.example.com/.well-known/mta-sts.txt",
    "https://acme-v02.api.letsencrypt.org/directory",
    "https://bank.example/.well-known/openpgpkey/policy",
];
const SETTING_KEYS: &[&str] =
    &["queue.outbound.limits", "session.throttle", "report.dmarc.send", "server.listener.smtp.bind"];
const CONTENTS: &[&str] = &[
    "EHLO mail.example.com\r\n",
    "MAIL FROM:<info@example.com> SIZE=24512\r\n",
    "250-mx1.example.org at your service\r\n",
    "A1 LOGIN alice ****\r\n",
];
const TOKENS: &[&str] = &["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel"];

/// Event types the stories emit (their v0.15 names; [`story_type`] gives a generation's), in
/// no particular order; noise never picks these, so that a story's type always means what its
/// story says.
const STORY_TYPES: &[&str] = &[
    "smtp.connection-start",
    "smtp.ehlo",
    "auth.success",
    "auth.failed",
    "smtp.mail-from",
    "smtp.rcpt-to",
    "message-ingest.ham",
    "message-ingest.spam",
    "queue.queue-message",
    "smtp.connection-end",
    "delivery.attempt-start",
    "delivery.domain-delivery-start",
    "delivery.mx-lookup",
    "delivery.mx-lookup-failed",
    "delivery.connect",
    "delivery.connect-error",
    "delivery.start-tls",
    "delivery.delivered",
    "delivery.rcpt-to-rejected",
    "delivery.dsn-perm-fail",
    "delivery.failed",
    "delivery.completed",
    "delivery.attempt-end",
];

/// Percentage of events that are background noise rather than story steps.
const NOISE_PERCENT: u32 = 10;
/// Percentage of noise events drawn from the warn/error types. With 10% noise this makes
/// about 4% of all events warn or error, since no story step is at those levels.
const LOUD_PERCENT: u32 = 40;
/// In v0.16 mode, the percentage of noise events drawn from the types v0.16 added or renamed
/// (whatever their level), so that the new names show up in a short demo.
const FRESH_PERCENT: u32 = 25;
/// Stories kept in flight at least, so that events of different spans always interleave.
const MIN_STORIES: usize = 4;
/// Stories kept in flight at most, which bounds the generator's memory.
const MAX_STORIES: usize = 12;
/// Chance, in percent, of opening one more story instead of advancing one in flight.
const START_PERCENT: u32 = 12;
/// Queued messages waiting for an outbound delivery story, at most; older ones are forgotten.
const MAX_OUTBOX: usize = 64;
/// First span id handed out; span ids only grow from there.
const FIRST_SPAN: u64 = 1_000;
/// First queue id handed out; queue ids only grow from there.
const FIRST_QUEUE_ID: u64 = 100_000;
/// The largest Unix time `createdAt` may carry as a number (year 9999, as the builder checks).
const MAX_CREATED_AT: i64 = 253_402_300_799;

/// The value kind of a catalogue key, as named in `data/stalwart-event-keys.json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Ip,
    Integer,
    Duration,
    Text,
    Timestamp,
    Bool,
}

impl Kind {
    fn from_name(name: &str) -> Kind {
        match name {
            "ip" => Kind::Ip,
            "integer" => Kind::Integer,
            "duration-ms" => Kind::Duration,
            "timestamp" => Kind::Timestamp,
            "bool" => Kind::Bool,
            _ => Kind::Text,
        }
    }
}

/// A catalogue event type the noise story may emit, with the keys it is emitted with.
#[derive(Clone)]
struct NoiseType {
    name: String,
    keys: Vec<(String, Kind)>,
}

/// The name a story type has in `generation`: its v0.16 name when Stalwart renamed it.
fn story_type(v015: &'static str, generation: Generation) -> &'static str {
    match generation {
        Generation::V015 => v015,
        Generation::V016 => catalogue::counterpart(v015).unwrap_or(v015),
    }
}

/// The noise candidates of one generation, split by level so that warn and error can be
/// weighted separately; `fresh` are the types only the generation has (v0.16's added and
/// renamed types; empty for v0.15), also found in `calm` or `loud`.
struct NoisePool {
    calm: Vec<NoiseType>,
    loud: Vec<NoiseType>,
    fresh: Vec<NoiseType>,
    has_spam: bool,
}

impl NoisePool {
    fn from_catalogue(cat: &Catalogue, generation: Generation) -> NoisePool {
        let mut pool = NoisePool { calm: Vec::new(), loud: Vec::new(), fresh: Vec::new(), has_spam: false };
        let stories: Vec<&str> = STORY_TYPES.iter().map(|t| story_type(t, generation)).collect();
        for e in cat.event_keys_of(generation) {
            if e.name == "message-ingest.spam" {
                pool.has_spam = true;
            }
            // Span openers and closers stay out of the noise: a lone opener would leave a span
            // that never closes in the matcher's span-follow table.
            if e.span_start || e.span_end || stories.contains(&e.name.as_str()) {
                continue;
            }
            // Noise events stand alone, so they carry no spanId; giving them one would make
            // them look like the first and last event of a span that has no other events.
            let keys = e
                .keys
                .iter()
                .filter(|k| k.as_str() != "spanId")
                .map(|k| (k.clone(), Kind::from_name(cat.key_kinds.get(k).map_or("string", String::as_str))))
                .collect();
            let t = NoiseType { name: e.name.clone(), keys };
            if generation == Generation::V016 && cat.type_info(&e.name).generations.only() == Some(generation)
            {
                pool.fresh.push(t.clone());
            }
            if Level::parse(&e.level).unwrap_or(Level::Info) >= Level::Warn {
                pool.loud.push(t);
            } else {
                pool.calm.push(t);
            }
        }
        pool
    }
}

/// The noise pool of a generation, parsed from the embedded catalogue once per process,
/// because generators are created per benchmark and per test and the catalogue costs a JSON
/// parse.
fn noise_pool(generation: Generation) -> &'static NoisePool {
    static POOLS: [OnceLock<NoisePool>; 2] = [OnceLock::new(), OnceLock::new()];
    let i = match generation {
        Generation::V015 => 0,
        Generation::V016 => 1,
    };
    POOLS[i].get_or_init(|| NoisePool::from_catalogue(&Catalogue::embedded(), generation))
}

/// A message accepted by a submission session and waiting for its outbound delivery.
#[derive(Debug, Clone)]
struct Queued {
    queue_id: u64,
    from: String,
    to: Vec<String>,
    size: i64,
}

/// One prepared event of a story.
struct Step {
    ty: &'static str,
    data: Members,
    /// Set on `queue.queue-message` (v0.16: `queue.message-queued`) of a submission session:
    /// once that event is out, the message becomes available to an outbound delivery story
    /// (and not before, so a delivery never precedes the queueing it depends on).
    queued: Option<Queued>,
}

/// Collects the steps of one story, stamping its span id, naming its types in the
/// generator's generation and keeping its simulated clock.
struct Script {
    span: u64,
    generation: Generation,
    clock_ms: i64,
    steps: VecDeque<Step>,
}

impl Script {
    fn new(span: u64, generation: Generation) -> Script {
        Script { span, generation, clock_ms: 0, steps: VecDeque::new() }
    }

    /// Advances the story's clock, so that `elapsed` values add up across the span.
    fn wait(&mut self, ms: i64) {
        self.clock_ms = self.clock_ms.saturating_add(ms);
    }

    /// Adds a step of type `ty` (its v0.15 name).
    fn push(&mut self, ty: &'static str, mut data: Members) {
        data.push(m("spanId", uint(self.span)));
        self.steps.push_back(Step { ty: story_type(ty, self.generation), data, queued: None });
    }
}

/// A seedable, deterministic generator of realistic Stalwart-shaped events.
///
/// It does no I/O and keeps only bounded state: the stories in flight and a short queue of
/// messages waiting for outbound delivery. The same seed and the same `now` values always
/// produce the same events.
pub struct DemoGenerator {
    rng: fastrand::Rng,
    generation: Generation,
    stories: Vec<VecDeque<Step>>,
    outbox: VecDeque<Queued>,
    next_span: u64,
    next_queue_id: u64,
    next_message_id: u64,
    ndjson: Vec<u8>,
}

impl DemoGenerator {
    /// A generator of v0.15 names whose whole output is determined by `seed`.
    pub fn new(seed: u64) -> DemoGenerator {
        DemoGenerator::with_generation(seed, Generation::V015)
    }

    /// A generator speaking `generation`'s event names and keys, whose whole output is
    /// determined by `seed` and `generation`.
    pub fn with_generation(seed: u64, generation: Generation) -> DemoGenerator {
        DemoGenerator {
            rng: fastrand::Rng::with_seed(seed),
            generation,
            stories: Vec::with_capacity(MAX_STORIES + 1),
            outbox: VecDeque::new(),
            next_span: FIRST_SPAN,
            next_queue_id: FIRST_QUEUE_ID,
            next_message_id: 1,
            ndjson: Vec::with_capacity(512),
        }
    }

    /// The next event, as a producer object `{"type", "createdAt", "data"}`. `now` (Unix
    /// seconds) becomes `createdAt` and anchors the timestamps inside `data`; a `now` beyond
    /// year 9999 or before 1970 leaves `createdAt` out, so the event stays valid.
    pub fn next_event(&mut self, now: i64) -> RawValue<'static> {
        let (ty, data) = self.next_step(now);
        let mut event: Members = Vec::with_capacity(3);
        event.push(m("type", s(ty)));
        if (0..=MAX_CREATED_AT).contains(&now) {
            event.push(m("createdAt", RawValue::Int(now)));
        }
        // An empty `data` is left out entirely, as the JSON writer would drop it anyway and
        // the event must read back equal to itself after `ndjson_line`.
        if !data.is_empty() {
            event.push(m("data", RawValue::Object(data)));
        }
        RawValue::Object(event)
    }

    /// What the simulated server would report as gauges now: `(queue.count,
    /// smtp.active-connections)`. Messages count as queued until their delivery story ends;
    /// a session is open until its `smtp.connection-end` is out.
    pub fn gauges(&self) -> (usize, usize) {
        let pending = |story: &VecDeque<Step>, prefix: &str| story.iter().any(|st| st.ty.starts_with(prefix));
        let delivering = self.stories.iter().filter(|st| pending(st, "delivery.")).count();
        let sessions = self.stories.iter().filter(|st| pending(st, "smtp.connection-end")).count();
        (self.outbox.len() + delivering, sessions)
    }

    /// Appends `n` events to `out`.
    pub fn fill(&mut self, n: usize, now: i64, out: &mut Vec<RawValue<'static>>) {
        out.reserve(n);
        for _ in 0..n {
            out.push(self.next_event(now));
        }
    }

    /// The next event serialised as one JSON line (without the newline), exactly as a
    /// producer would send it over NDJSON.
    pub fn ndjson_line(&mut self, now: i64) -> String {
        let event = self.next_event(now);
        self.ndjson.clear();
        encode::write_value(&mut self.ndjson, &event);
        // The writer only emits valid UTF-8, so the lossy branch is never taken; it is there
        // so that this function cannot panic.
        match std::str::from_utf8(&self.ndjson) {
            Ok(text) => text.to_owned(),
            Err(_) => String::from_utf8_lossy(&self.ndjson).into_owned(),
        }
    }

    /// Picks the next step: noise now and then, otherwise one step of a story in flight,
    /// opening a new story when few are in flight.
    fn next_step(&mut self, now: i64) -> (&'static str, Members) {
        if self.percent(NOISE_PERCENT) {
            if let Some(noise) = self.noise(now) {
                return noise;
            }
        }
        loop {
            let n = self.stories.len();
            let idx = if n < MIN_STORIES || (n < MAX_STORIES && self.percent(START_PERCENT)) {
                let story = self.new_story(now);
                self.stories.push(story);
                n
            } else {
                self.rng.usize(..n)
            };
            // A story is removed as soon as its last step is out, so this always yields a
            // step; the loop only guards against an empty story without panicking.
            match self.stories[idx].pop_front() {
                Some(step) => {
                    if self.stories[idx].is_empty() {
                        self.stories.swap_remove(idx);
                    }
                    if let Some(q) = step.queued {
                        if self.outbox.len() >= MAX_OUTBOX {
                            self.outbox.pop_front();
                        }
                        self.outbox.push_back(q);
                    }
                    return (step.ty, step.data);
                }
                None => {
                    self.stories.swap_remove(idx);
                }
            }
        }
    }

    /// Opens a story: an outbound delivery when a queued message waits (half of the time),
    /// otherwise mostly an inbound session and now and then a delivery of a message queued
    /// by something other than SMTP (a forward, a Sieve redirect, a JMAP submission).
    fn new_story(&mut self, now: i64) -> VecDeque<Step> {
        let outbound = if self.outbox.is_empty() { self.percent(8) } else { self.percent(50) };
        if outbound {
            let q = match self.outbox.pop_front() {
                Some(q) => q,
                None => self.synthetic_message(),
            };
            self.outbound(q, now)
        } else {
            self.inbound(now)
        }
    }

    /// An inbound SMTP session, on port 25 (mail for local users) or on the submission port
    /// (local users sending mail out, which is queued for an outbound delivery story).
    fn inbound(&mut self, now: i64) -> VecDeque<Step> {
        let mut sc = Script::new(self.span(), self.generation);
        let submission = self.percent(35);
        let remote_ip = self.remote_ip();
        let sender_domain = self.choose(EXTERNAL_DOMAINS);
        sc.push(
            "smtp.connection-start",
            vec![
                m("listenerId", s(if submission { "submission" } else { "smtp" })),
                m("localPort", RawValue::Int(if submission { 587 } else { 25 })),
                m("remoteIp", remote_ip.clone()),
                m("remotePort", RawValue::Int(self.rng.i64(1024..=65535))),
            ],
        );
        sc.wait(self.rng.i64(20..=200));
        let helo = if submission {
            format!("ws{}.{LOCAL_DOMAIN}", self.rng.u32(1..=20))
        } else {
            format!("mail.{sender_domain}")
        };
        sc.push("smtp.ehlo", vec![m("domain", owned(helo))]);

        // Port 25 sees its share of scanners that say EHLO and leave.
        let scanner = !submission && self.percent(5);
        let mut user = 0;
        let mut proceed = !scanner;
        if submission {
            user = self.rng.usize(..USERS.len());
            sc.wait(self.rng.i64(5..=80));
            if self.percent(15) {
                // v0.16 reports a failed login with a reason instead of the client's address
                // and the SMTP code.
                let data = match self.generation {
                    Generation::V015 => vec![
                        m("accountName", s(USERS[user])),
                        m("remoteIp", remote_ip.clone()),
                        m("code", RawValue::Int(535)),
                        m("details", s("Invalid credentials")),
                        m("causedBy", s("Password mismatch")),
                    ],
                    Generation::V016 => vec![
                        m("accountName", s(USERS[user])),
                        m("details", s("Invalid credentials")),
                        m("reason", s("Password mismatch")),
                        m("causedBy", s("Password mismatch")),
                    ],
                };
                sc.push("auth.failed", data);
                // Half of those who mistype their password get it right on the second try.
                proceed = self.rng.bool();
                sc.wait(self.rng.i64(200..=2000));
            }
            if proceed {
                // v0.16 names the mechanism in `details` rather than `type`.
                let mechanism = match self.generation {
                    Generation::V015 => m("type", s("plain")),
                    Generation::V016 => m("details", s("plain")),
                };
                sc.push(
                    "auth.success",
                    vec![
                        m("accountName", s(USERS[user])),
                        m("accountId", RawValue::Int(user as i64 + 1)),
                        mechanism,
                    ],
                );
            }
        }

        if proceed {
            let messages = if self.percent(10) { 2 } else { 1 };
            for _ in 0..messages {
                self.inbound_message(&mut sc, submission, user, sender_domain, now);
            }
        }
        sc.wait(self.rng.i64(1..=20));
        let elapsed = sc.clock_ms;
        sc.push("smtp.connection-end", vec![m("elapsed", RawValue::Int(elapsed))]);
        sc.steps
    }

    /// One message of an inbound session: envelope, local ingest (port 25 only), queueing.
    fn inbound_message(
        &mut self,
        sc: &mut Script,
        submission: bool,
        user: usize,
        sender_domain: &'static str,
        now: i64,
    ) {
        let from = if submission {
            format!("{}@{LOCAL_DOMAIN}", USERS.get(user).copied().unwrap_or("alice"))
        } else {
            format!("{}@{sender_domain}", self.choose(CONTACTS))
        };
        sc.wait(self.rng.i64(5..=50));
        sc.push("smtp.mail-from", vec![m("from", owned(from.clone()))]);

        let count = self.rng.usize(1..=3);
        let mut to: Vec<String> = Vec::with_capacity(count);
        let mut accounts: Vec<i64> = Vec::with_capacity(count);
        for _ in 0..count {
            let (addr, account) = if submission {
                (format!("{}@{}", self.choose(CONTACTS), self.choose(EXTERNAL_DOMAINS)), None)
            } else {
                let u = self.rng.usize(..USERS.len());
                (format!("{}@{LOCAL_DOMAIN}", USERS[u]), Some(u as i64 + 1))
            };
            // A client naming the same recipient twice gets it once, as the server dedupes.
            if to.contains(&addr) {
                continue;
            }
            accounts.extend(account);
            sc.wait(self.rng.i64(2..=40));
            sc.push("smtp.rcpt-to", vec![m("to", owned(addr.clone()))]);
            to.push(addr);
        }

        let size = self.rng.i64(1_200..=250_000);
        sc.wait(self.rng.i64(20..=900));
        if !submission {
            let spam = noise_pool(self.generation).has_spam && self.percent(18);
            for &account in &accounts {
                let id = self.message_id();
                let elapsed = self.rng.i64(3..=120);
                sc.wait(elapsed);
                sc.push(
                    if spam { "message-ingest.spam" } else { "message-ingest.ham" },
                    vec![
                        m("accountId", RawValue::Int(account)),
                        m("blobId", owned(self.blob_id())),
                        m("changeId", uint(id)),
                        m("documentId", uint(id)),
                        m("elapsed", RawValue::Int(elapsed)),
                        // Mailbox 0 is the Inbox, 2 the Junk folder, as on a fresh account.
                        m("mailboxId", RawValue::Int(if spam { 2 } else { 0 })),
                        m("messageId", uint(id)),
                        m("size", RawValue::Int(size)),
                    ],
                );
            }
        }

        let queue_id = self.queue_id();
        sc.wait(self.rng.i64(1..=10));
        sc.push(
            "queue.queue-message",
            vec![
                m("expires", ts(now, 5 * 86_400)),
                m("from", owned(from.clone())),
                m("nextDsn", ts(now, 86_400)),
                m("nextRetry", ts(now, 0)),
                m("queueId", uint(queue_id)),
                m("size", RawValue::Int(size)),
                m("to", RawValue::Array(to.iter().cloned().map(owned).collect())),
            ],
        );
        if submission {
            if let Some(last) = sc.steps.back_mut() {
                last.queued = Some(Queued { queue_id, from, to, size });
            }
        }
    }

    /// An outbound delivery attempt of one queued message, one domain after the other.
    fn outbound(&mut self, q: Queued, now: i64) -> VecDeque<Step> {
        let mut sc = Script::new(self.span(), self.generation);
        let to_list = || RawValue::Array(q.to.iter().cloned().map(owned).collect());
        sc.push(
            "delivery.attempt-start",
            vec![
                m("from", owned(q.from.clone())),
                m("queueId", uint(q.queue_id)),
                m("queueName", s("default")),
                m("size", RawValue::Int(q.size)),
                m("to", to_list()),
                m("total", RawValue::Int(q.to.len() as i64)),
            ],
        );

        // Recipients grouped by domain, in order of first appearance, as the queue delivers.
        let mut domains: Vec<(&str, Vec<&String>)> = Vec::new();
        for addr in &q.to {
            let domain = addr.rsplit_once('@').map_or(addr.as_str(), |(_, d)| d);
            match domains.iter_mut().find(|(d, _)| *d == domain) {
                Some((_, list)) => list.push(addr),
                None => domains.push((domain, vec![addr])),
            }
        }

        let mut rejected: Vec<String> = Vec::new();
        let mut deferred: Vec<String> = Vec::new();
        let mut last_host = SERVER_HOSTNAME.to_owned();
        for (domain, rcpts) in domains {
            sc.push("delivery.domain-delivery-start", vec![m("domain", owned(domain.to_owned()))]);
            let roll = self.rng.u32(..100);
            let lookup_ms = self.rng.i64(1..=80);
            sc.wait(lookup_ms);
            if roll < 4 {
                // No MX and no A record: a permanent failure for every recipient there.
                sc.push(
                    "delivery.mx-lookup-failed",
                    vec![
                        m("domain", owned(domain.to_owned())),
                        m("elapsed", RawValue::Int(lookup_ms)),
                        m("causedBy", s("DNS lookup failed: NXDOMAIN")),
                        m("details", s("No MX or A records found")),
                    ],
                );
                rejected.extend(rcpts.into_iter().cloned());
                continue;
            }
            let host = format!("mx{}.{domain}", self.rng.u32(1..=2));
            sc.push(
                "delivery.mx-lookup",
                vec![
                    m("details", owned(format!("mx1.{domain} (10), mx2.{domain} (20)"))),
                    m("domain", owned(domain.to_owned())),
                    m("elapsed", RawValue::Int(lookup_ms)),
                ],
            );
            let connect_ms = self.rng.i64(10..=400);
            sc.wait(connect_ms);
            let connection = vec![
                m("domain", owned(domain.to_owned())),
                m("elapsed", RawValue::Int(connect_ms)),
                m("hostname", owned(host.clone())),
                m("localIp", s(self.choose(LOCAL_IPS))),
                m("remoteIp", s(mx_ip(domain))),
                m("remotePort", RawValue::Int(25)),
            ];
            if roll < 11 {
                // The MX is down: the recipients stay queued for a later retry.
                let mut data = connection;
                data.push(m("causedBy", s(self.choose(&CAUSES[..3]))));
                sc.push("delivery.connect-error", data);
                deferred.extend(rcpts.into_iter().cloned());
                continue;
            }
            sc.push("delivery.connect", connection);
            if self.percent(85) {
                let tls_ms = self.rng.i64(15..=120);
                sc.wait(tls_ms);
                sc.push(
                    "delivery.start-tls",
                    vec![
                        m("details", s("TLS_AES_256_GCM_SHA384")),
                        m("domain", owned(domain.to_owned())),
                        m("elapsed", RawValue::Int(tls_ms)),
                        m("hostname", owned(host.clone())),
                        m("version", s(self.choose(TLS_VERSIONS))),
                    ],
                );
            }
            for rcpt in rcpts {
                let ms = self.rng.i64(50..=1500);
                sc.wait(ms);
                if self.percent(8) {
                    sc.push(
                        "delivery.rcpt-to-rejected",
                        vec![
                            m("code", RawValue::Int(550)),
                            m(
                                "details",
                                owned(format!("5.1.1 <{rcpt}>: Recipient address rejected: User unknown")),
                            ),
                            m("elapsed", RawValue::Int(ms)),
                            m("hostname", owned(host.clone())),
                            m("to", owned(rcpt.clone())),
                        ],
                    );
                    rejected.push(rcpt.clone());
                } else {
                    sc.push(
                        "delivery.delivered",
                        vec![
                            m("code", RawValue::Int(250)),
                            m("details", owned(format!("2.0.0 Ok: queued as {:08X}", self.rng.u32(..)))),
                            m("elapsed", RawValue::Int(ms)),
                            m("hostname", owned(host.clone())),
                            m("to", owned(rcpt.clone())),
                        ],
                    );
                }
            }
            last_host = host;
        }

        if !rejected.is_empty() {
            // The sender learns about permanent failures through a delivery status notification.
            sc.push(
                "delivery.dsn-perm-fail",
                vec![
                    m("details", s("Permanent failure: recipient address rejected")),
                    m("hostname", owned(last_host)),
                    m("to", owned(q.from.clone())),
                    m("total", RawValue::Int(rejected.len() as i64)),
                ],
            );
        }
        if !deferred.is_empty() {
            sc.push(
                "delivery.failed",
                vec![
                    m("details", s("Temporary failure, will retry")),
                    m("expires", ts(now, 5 * 86_400)),
                    m("nextDsn", ts(now, 86_400)),
                    m("nextRetry", ts(now, self.rng.i64(300..=1800))),
                    m("queueId", uint(q.queue_id)),
                    m("queueName", s("default")),
                    m("reason", s("Connection refused")),
                    m("to", RawValue::Array(deferred.into_iter().map(owned).collect())),
                ],
            );
        }
        let total = sc.clock_ms;
        sc.push("delivery.completed", vec![m("elapsed", RawValue::Int(total))]);
        sc.wait(self.rng.i64(1..=5));
        let total = sc.clock_ms;
        sc.push("delivery.attempt-end", vec![m("elapsed", RawValue::Int(total))]);
        sc.steps
    }

    /// A message for an outbound story when no submission session has queued one.
    fn synthetic_message(&mut self) -> Queued {
        let from = format!("{}@{LOCAL_DOMAIN}", self.choose(USERS));
        let mut to = Vec::new();
        for _ in 0..self.rng.usize(1..=2) {
            let addr = format!("{}@{}", self.choose(CONTACTS), self.choose(EXTERNAL_DOMAINS));
            if !to.contains(&addr) {
                to.push(addr);
            }
        }
        Queued { queue_id: self.queue_id(), from, to, size: self.rng.i64(1_200..=250_000) }
    }

    /// One background event: any other catalogue type of the generation, its keys filled by
    /// kind.
    fn noise(&mut self, now: i64) -> Option<(&'static str, Members)> {
        let pool = noise_pool(self.generation);
        // Only v0.16 has fresh types, so the v0.15 draw sequence is what it always was.
        let fresh = !pool.fresh.is_empty() && self.percent(FRESH_PERCENT);
        let loud = self.percent(LOUD_PERCENT);
        let list = if fresh {
            &pool.fresh
        } else if (loud && !pool.loud.is_empty()) || pool.calm.is_empty() {
            &pool.loud
        } else {
            &pool.calm
        };
        let t = self.pick(list)?;
        let data =
            t.keys.iter().map(|(k, kind)| (Cow::Borrowed(k.as_str()), self.value(k, *kind, now))).collect();
        Some((t.name.as_str(), data))
    }

    /// A plausible value for one key, by name where the name says more than the kind.
    fn value(&mut self, key: &str, kind: Kind, now: i64) -> Raw {
        let int = RawValue::Int;
        match key {
            "remoteIp" => return self.remote_ip(),
            "localIp" => return s(self.choose(LOCAL_IPS)),
            "localPort" => return int(self.choose_int(LOCAL_PORTS)),
            "remotePort" => return int(self.rng.i64(1024..=65535)),
            "accountId" => return int(self.rng.i64(1..=USERS.len() as i64)),
            "accountName" => return s(self.choose(USERS)),
            "domain" => return s(self.domain()),
            "hostname" => return owned(format!("mx{}.{}", self.rng.u32(1..=2), self.domain())),
            "from" | "to" => return owned(self.address()),
            "queueId" => {
                let back = self.rng.u64(..20);
                return uint(self.next_queue_id.saturating_sub(back).max(FIRST_QUEUE_ID));
            }
            "queueName" => return s("default"),
            "size" => return int(self.rng.i64(300..=250_000)),
            "limit" => return int(self.choose_int(LIMITS)),
            "code" => return int(self.choose_int(SMTP_CODES)),
            "listenerId" => return s(self.choose(LISTENERS)),
            "details" => return s(self.choose(DETAILS)),
            "causedBy" => return s(self.choose(CAUSES)),
            "reason" => return s(self.choose(REASONS)),
            "type" => return s(self.choose(AUTH_MECHANISMS)),
            "result" => return s(self.choose(RESULTS)),
            "policy" => return s(self.choose(POLICIES)),
            "mailboxName" => return s(self.choose(MAILBOXES)),
            "collection" => return s(self.choose(COLLECTIONS)),
            "path" => return s(self.choose(PATHS)),
            "url" => return s(self.choose(URLS)),
            "version" => return s(self.choose(TLS_VERSIONS)),
            "key" => return s(self.choose(SETTING_KEYS)),
            "contents" => return s(self.choose(CONTENTS)),
            "blobId" => return owned(self.blob_id()),
            "id" => return owned(format!("{}-{}", self.choose(TOKENS), self.rng.u32(1..=99))),
            "rangeFrom" | "validFrom" => return ts(now, -self.rng.i64(3_600..=30 * 86_400)),
            "rangeTo" => return ts(now, 0),
            _ => {}
        }
        match kind {
            Kind::Ip => self.remote_ip(),
            Kind::Integer => int(self.rng.i64(0..=1_000)),
            Kind::Duration => int(self.rng.i64(1..=1_500)),
            Kind::Timestamp => ts(now, self.rng.i64(60..=7 * 86_400)),
            Kind::Bool => RawValue::Bool(self.rng.bool()),
            Kind::Text => s(self.choose(TOKENS)),
        }
    }

    /// A remote address: `10.0.0.5` about one time in eight, a public-looking address (IPv4
    /// or IPv6) about one time in eight, otherwise one of `10.0.0.1`..`10.0.0.50`.
    fn remote_ip(&mut self) -> Raw {
        match self.rng.u32(..100) {
            0..=11 => s(FAVOURITE_IP),
            12..=23 => s(self.choose(EXTERNAL_IPS)),
            _ => owned(format!("10.0.0.{}", self.rng.u32(1..=50))),
        }
    }

    fn domain(&mut self) -> &'static str {
        if self.percent(30) {
            LOCAL_DOMAIN
        } else {
            self.choose(EXTERNAL_DOMAINS)
        }
    }

    fn address(&mut self) -> String {
        if self.rng.bool() {
            format!("{}@{LOCAL_DOMAIN}", self.choose(USERS))
        } else {
            format!("{}@{}", self.choose(CONTACTS), self.choose(EXTERNAL_DOMAINS))
        }
    }

    fn blob_id(&mut self) -> String {
        format!("{:016x}{:08x}", self.rng.u64(..), self.rng.u32(..))
    }

    fn span(&mut self) -> u64 {
        let id = self.next_span;
        self.next_span = self.next_span.saturating_add(1);
        id
    }

    fn queue_id(&mut self) -> u64 {
        let id = self.next_queue_id;
        self.next_queue_id = self.next_queue_id.saturating_add(1);
        id
    }

    fn message_id(&mut self) -> u64 {
        let id = self.next_message_id;
        self.next_message_id = self.next_message_id.saturating_add(1);
        id
    }

    fn percent(&mut self, p: u32) -> bool {
        self.rng.u32(..100) < p
    }

    /// A random element, or `None` for an empty slice (instead of a panicking empty range).
    fn pick<'a, T>(&mut self, items: &'a [T]) -> Option<&'a T> {
        if items.is_empty() {
            return None;
        }
        items.get(self.rng.usize(..items.len()))
    }

    fn choose(&mut self, items: &[&'static str]) -> &'static str {
        self.pick(items).copied().unwrap_or("unknown")
    }

    fn choose_int(&mut self, items: &[i64]) -> i64 {
        self.pick(items).copied().unwrap_or(0)
    }
}

/// The MX address of a remote domain; stable, so that a domain always resolves the same way.
fn mx_ip(domain: &str) -> &'static str {
    let i = EXTERNAL_DOMAINS.iter().position(|d| *d == domain).unwrap_or(0);
    EXTERNAL_IPS[i % EXTERNAL_IPS.len()]
}

fn m(key: &'static str, value: Raw) -> (Cow<'static, str>, Raw) {
    (Cow::Borrowed(key), value)
}

fn s(v: &'static str) -> Raw {
    RawValue::Str(Cow::Borrowed(v))
}

fn owned(v: String) -> Raw {
    RawValue::Str(Cow::Owned(v))
}

/// An unsigned id as JSON parsers read it back: `Int` while it fits, `UInt` beyond.
fn uint(v: u64) -> Raw {
    i64::try_from(v).map_or(RawValue::UInt(v), RawValue::Int)
}

/// `now + offset_secs` as an RFC 3339 string; out-of-range times come out as the epoch rather
/// than failing, because the formatter clamps.
fn ts(now: i64, offset_secs: i64) -> Raw {
    let b = encode::format_timestamp(now.saturating_add(offset_secs));
    owned(String::from_utf8_lossy(&b).into_owned())
}

/// Turns elapsed time into a number of events due, so that the long-run rate is exact.
///
/// The count is derived from the time since start rather than added up per tick, so late
/// ticks (a busy runtime, a full ring) are made up for and a rate that is not a multiple of
/// the tick frequency (150 events/s is 1.5 per 10 ms tick) comes out exact with no drift.
/// After a long stall only a quarter second's worth is caught up at once; the rest is
/// skipped, because a burst of stale demo traffic helps no one.
pub(crate) struct Pacer {
    rate: u64,
    emitted: u64,
}

impl Pacer {
    pub(crate) fn new(rate: u32) -> Pacer {
        Pacer { rate: u64::from(rate), emitted: 0 }
    }

    pub(crate) fn due(&mut self, since_start: Duration) -> u64 {
        let target = u128::from(self.rate) * since_start.as_nanos() / 1_000_000_000;
        let target = u64::try_from(target).unwrap_or(u64::MAX);
        let cap = (self.rate / 4).max(1);
        let mut owed = target.saturating_sub(self.emitted);
        if owed > cap {
            owed = cap;
            self.emitted = target - cap;
        }
        self.emitted += owed;
        owed
    }
}

/// How often the demo source wakes up to publish what is due.
pub(crate) const TICK: Duration = Duration::from_millis(10);
/// Most events in one published batch, so that a high rate never asks for more ring slots
/// than a modest ring has.
const MAX_BATCH: u64 = 1024;

/// Generates demo events at a fixed rate (`--demo`, `--demo-rate`), in one catalogue
/// generation (`--demo-generation`).
pub struct DemoSource {
    rate: u32,
    generation: Generation,
}

impl DemoSource {
    /// A source producing `rate` events per second, with v0.15 names.
    pub fn new(rate: u32) -> DemoSource {
        DemoSource { rate, generation: Generation::V015 }
    }

    /// The same source speaking `generation`'s event names.
    pub fn with_generation(self, generation: Generation) -> DemoSource {
        DemoSource { generation, ..self }
    }
}

impl Source for DemoSource {
    fn name(&self) -> &'static str {
        "demo"
    }

    fn run(self: Box<Self>, hub: Arc<Hub>) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        let (rate, generation) = (self.rate, self.generation);
        Box::pin(async move {
            let mut shutdown = hub.shutdown_signal();
            // Each run tells a different story; determinism matters for tests, not the demo.
            let mut generator = DemoGenerator::with_generation(fastrand::u64(..), generation);
            let mut pacer = Pacer::new(rate);
            let chunk = (hub.ring.capacity() / 2).clamp(1, MAX_BATCH);
            let mut raw: Vec<RawValue<'static>> = Vec::new();
            let mut tick = tokio::time::interval(TICK);
            tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
            let start = Instant::now();
            let mut last_gauges = start;
            loop {
                if *shutdown.borrow() {
                    return;
                }
                tokio::select! {
                    _ = tick.tick() => {}
                    changed = shutdown.changed() => {
                        // A dropped sender means the hub is gone: nothing left to publish to.
                        if changed.is_err() {
                            return;
                        }
                        continue;
                    }
                }
                // Once a second, the gauges a real server would report beside its events, so
                // the dashboard's metric charts have something to draw.
                if last_gauges.elapsed() >= Duration::from_secs(1) {
                    last_gauges = Instant::now();
                    let (queued, sessions) = generator.gauges();
                    for (name, v) in [("queue.count", queued), ("smtp.active-connections", sessions)] {
                        let rec = MetricRecord {
                            name: name.to_string(),
                            kind: None,
                            values: smallvec::smallvec![v as f64],
                            unit: None,
                        };
                        let _ = hub.metrics.apply(&rec);
                    }
                }
                let mut due = pacer.due(start.elapsed());
                while due > 0 {
                    let n = due.min(chunk);
                    due -= n;
                    // The builder borrows the hub and must not live across the await below.
                    let mut events: Vec<Arc<Event>> = {
                        let now = encode::now_secs();
                        raw.clear();
                        generator.fill(n as usize, now, &mut raw);
                        let mut builder = hub.builder();
                        let mut events = Vec::with_capacity(raw.len());
                        let mut failed = 0;
                        for r in &raw {
                            match builder.build(r, now) {
                                Ok(ev) => events.push(Arc::new(ev)),
                                Err(_) => failed += 1,
                            }
                        }
                        if failed > 0 {
                            IngestStats::add(&hub.ingest.rejected, failed);
                        }
                        events
                    };
                    if hub.publish(&mut events, None).await.is_err() {
                        return;
                    }
                    if due > 0 {
                        // At very high rates, give the other tasks on this thread a turn
                        // between batches.
                        tokio::task::yield_now().await;
                    }
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{EventBuilder, KeyRegistry};
    use std::collections::{HashMap, HashSet};

    const NOW: i64 = 1_767_225_600;

    fn setup() -> (Catalogue, KeyRegistry) {
        let c = Catalogue::embedded();
        let k = KeyRegistry::new(1024);
        c.register_keys(&k);
        (c, k)
    }

    fn ty(e: &RawValue<'_>) -> String {
        e.get("type").and_then(RawValue::as_str).unwrap_or_default().to_owned()
    }

    fn span(e: &RawValue<'_>) -> Option<i64> {
        match e.get("data").and_then(|d| d.get("spanId")) {
            Some(RawValue::Int(i)) => Some(*i),
            _ => None,
        }
    }

    fn events(seed: u64, n: usize) -> Vec<RawValue<'static>> {
        events_in(seed, n, Generation::V015)
    }

    fn events_in(seed: u64, n: usize, generation: Generation) -> Vec<RawValue<'static>> {
        let mut g = DemoGenerator::with_generation(seed, generation);
        let mut out = Vec::new();
        g.fill(n, NOW, &mut out);
        out
    }

    /// The story types of a generation.
    fn stories(generation: Generation) -> Vec<&'static str> {
        STORY_TYPES.iter().map(|t| story_type(t, generation)).collect()
    }

    #[test]
    fn every_story_type_appears() {
        for generation in Generation::ALL {
            for seed in [7, 42, 1234] {
                let evs = events_in(seed, 5_000, generation);
                let seen: HashSet<String> = evs.iter().map(ty).collect();
                for t in stories(generation) {
                    assert!(seen.contains(t), "{generation}, seed {seed}: {t} never generated");
                }
            }
        }
        assert!(stories(Generation::V016).contains(&"queue.message-queued"));
        assert!(!stories(Generation::V016).contains(&"queue.queue-message"));
    }

    #[test]
    fn every_event_builds_and_levels_are_mixed() {
        let (c, k) = setup();
        let mut b = EventBuilder::new(&c, &k);
        for generation in Generation::ALL {
            let evs = events_in(42, 5_000, generation);
            let mut loud = 0;
            for e in &evs {
                let ev = b.build(e, NOW).unwrap_or_else(|err| panic!("{err}: {e:?}"));
                let t = c.type_info(&ev.kind);
                assert!(t.known, "{} not in the catalogue", ev.kind);
                assert!(t.generations.contains(generation), "{} is not a {generation} type", ev.kind);
                if ev.level >= Level::Warn {
                    loud += 1;
                }
            }
            let share = loud as f64 / evs.len() as f64;
            assert!((0.01..=0.15).contains(&share), "{generation}: warn+error share {share}");
        }
    }

    #[test]
    fn v016_mode_speaks_v016_names() {
        let c = Catalogue::embedded();
        let only = |t: &str| c.type_info(t).generations.only();
        let evs = events_in(8, 20_000, Generation::V016);
        let types: Vec<String> = evs.iter().map(ty).collect();
        assert!(types.iter().all(|t| only(t) != Some(Generation::V015)), "a v0.15-only name in v0.16 mode");
        let fresh: HashSet<&str> =
            types.iter().map(String::as_str).filter(|t| only(t) == Some(Generation::V016)).collect();
        // The queueing story's renamed type, and many types v0.16 added or renamed.
        assert!(fresh.contains("queue.message-queued"));
        let added = fresh.iter().filter(|t| c.type_info(t).counterpart.is_none()).count();
        let renamed = fresh.iter().filter(|t| c.type_info(t).counterpart.is_some()).count();
        assert!(added >= 40 && renamed >= 10, "{added} added and {renamed} renamed types seen");
        // And v0.15 mode never uses a v0.16-only name.
        let old = events_in(8, 20_000, Generation::V015);
        assert!(old.iter().map(ty).all(|t| only(&t) != Some(Generation::V016)));
        // The default is v0.15, unchanged.
        assert_eq!(events(8, 500), events_in(8, 500, Generation::V015));
        assert_ne!(events_in(8, 500, Generation::V016), events(8, 500));
    }

    #[test]
    fn story_keys_are_the_catalogue_keys() {
        let c = Catalogue::embedded();
        for generation in Generation::ALL {
            let listed: HashMap<&str, &Vec<String>> =
                c.event_keys_of(generation).iter().map(|e| (e.name.as_str(), &e.keys)).collect();
            for e in events_in(3, 5_000, generation) {
                let t = ty(&e);
                let keys =
                    listed.get(t.as_str()).unwrap_or_else(|| panic!("{t} has no {generation} key list"));
                if let Some(RawValue::Object(data)) = e.get("data") {
                    for (k, _) in data {
                        // Every story event carries its session's span, even the few (such as
                        // `auth.failed` in v0.15) whose Stalwart call site leaves it out.
                        assert!(
                            k == "spanId" || keys.contains(&k.to_string()),
                            "{generation}: {t} has unlisted key {k}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn sessions_share_a_span_and_are_bracketed() {
        for generation in Generation::ALL {
            sessions_bracketed(generation);
        }
    }

    fn sessions_bracketed(generation: Generation) {
        let evs = events_in(11, 5_000, generation);
        let story = stories(generation);
        let mut spans: HashMap<i64, Vec<String>> = HashMap::new();
        for e in &evs {
            let t = ty(e);
            if story.contains(&t.as_str()) {
                let id = span(e).unwrap_or_else(|| panic!("{t} without spanId"));
                spans.entry(id).or_default().push(t);
            }
        }
        let mut complete = 0;
        let mut ids: Vec<_> = spans.keys().copied().collect();
        ids.sort_unstable();
        for id in ids {
            let types = &spans[&id];
            let first = types[0].as_str();
            let (start, end) = match first {
                "smtp.connection-start" => ("smtp.connection-start", "smtp.connection-end"),
                "delivery.attempt-start" => ("delivery.attempt-start", "delivery.attempt-end"),
                other => panic!("span {id} starts with {other}"),
            };
            assert_eq!(types.iter().filter(|t| *t == start).count(), 1, "span {id}: {types:?}");
            if let Some(pos) = types.iter().position(|t| t == end) {
                assert_eq!(pos, types.len() - 1, "span {id} continues after its end: {types:?}");
                complete += 1;
            }
            let family = if start.starts_with("smtp.") { "delivery." } else { "smtp." };
            assert!(types.iter().all(|t| !t.starts_with(family)), "span {id} mixes stories: {types:?}");
        }
        assert!(complete > 300, "only {complete} complete stories");
        // Stories interleave: some span is interrupted by another span's event.
        let mut interleaved = false;
        let mut last = None;
        let mut closed = HashSet::new();
        for e in &evs {
            if let Some(id) = span(e) {
                if last.is_some_and(|l| l != id) && last.is_some_and(|l| !closed.contains(&l)) {
                    interleaved = true;
                }
                if ty(e).ends_with("-end") {
                    closed.insert(id);
                }
                last = Some(id);
            }
        }
        assert!(interleaved);
    }

    #[test]
    fn queued_messages_are_delivered_under_their_queue_id() {
        for generation in Generation::ALL {
            let evs = events_in(5, 5_000, generation);
            let queued = story_type("queue.queue-message", generation);
            let queue_id = |e: &RawValue<'_>| match e.get("data").and_then(|d| d.get("queueId")) {
                Some(RawValue::Int(i)) => Some(*i),
                _ => None,
            };
            let mut queued_at = HashMap::new();
            let mut linked = 0;
            for (i, e) in evs.iter().enumerate() {
                let t = ty(e);
                if t == queued {
                    queued_at.insert(queue_id(e).unwrap(), i);
                } else if t == "delivery.attempt-start" {
                    if let Some(&at) = queued_at.get(&queue_id(e).unwrap()) {
                        assert!(at < i);
                        linked += 1;
                    }
                }
            }
            assert!(linked > 50, "{generation}: only {linked} deliveries of queued messages");
        }
    }

    #[test]
    fn pools_are_bounded_and_the_readme_ip_appears() {
        let evs = events(99, 5_000);
        let mut favourite = 0;
        let mut v6 = 0;
        for e in &evs {
            if let Some(RawValue::Str(ip)) = e.get("data").and_then(|d| d.get("remoteIp")) {
                if ip == FAVOURITE_IP {
                    favourite += 1;
                }
                if ip.starts_with("2001:db8::") {
                    v6 += 1;
                }
                assert!(ip.parse::<std::net::IpAddr>().is_ok(), "{ip}");
            }
        }
        assert!(favourite >= 20, "10.0.0.5 appeared {favourite} times");
        assert!(v6 > 0);
    }

    #[test]
    fn deterministic_per_seed() {
        assert_eq!(events(17, 2_000), events(17, 2_000));
        assert_ne!(events(17, 200), events(18, 200));
    }

    #[test]
    fn ndjson_line_reads_back_as_the_event() {
        let mut a = DemoGenerator::new(23);
        let mut b = DemoGenerator::new(23);
        for i in 0..5_000 {
            let line = a.ndjson_line(NOW + i);
            assert!(!line.contains('\n'));
            let parsed = RawValue::parse_serde(line.as_bytes()).unwrap();
            assert_eq!(parsed, b.next_event(NOW + i), "{line}");
        }
    }

    #[test]
    fn never_panics_and_always_builds() {
        let (c, k) = setup();
        let mut b = EventBuilder::new(&c, &k);
        for generation in Generation::ALL {
            for seed in [0, 1, u64::MAX, 0x5555_5555_5555_5555] {
                for now in [0, -1, i64::MIN, i64::MAX, MAX_CREATED_AT + 1, NOW] {
                    let mut g = DemoGenerator::with_generation(seed, generation);
                    for _ in 0..500 {
                        let e = g.next_event(now);
                        b.build(&e, NOW).unwrap_or_else(|err| panic!("{err}: {e:?}"));
                    }
                }
            }
        }
    }

    #[test]
    fn pacer_keeps_the_long_run_rate() {
        let mut p = Pacer::new(150);
        let total: u64 = (1..=1_000).map(|i| p.due(TICK * i)).sum();
        assert_eq!(total, 1_500);
        let mut p = Pacer::new(1);
        let total: u64 = (1..=1_000).map(|i| p.due(TICK * i)).sum();
        assert_eq!(total, 10);
        // A long stall is caught up only by a quarter second's worth.
        let mut p = Pacer::new(1_000);
        assert_eq!(p.due(Duration::from_secs(10)), 250);
        assert_eq!(p.due(Duration::from_secs(10) + TICK), 10);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn source_publishes_at_its_rate_and_stops_at_shutdown() {
        let config = crate::Config { matcher_threads: 1, ring_capacity: 4096, ..Default::default() };
        let hub = Hub::start(config, "token".into()).unwrap();
        let task = tokio::spawn(Box::new(DemoSource::new(2_000)).run(hub.clone()));
        tokio::time::sleep(Duration::from_millis(500)).await;
        let stats = hub.stats();
        // 1,000 events are due; the bounds leave room for a slow or busy test machine.
        assert!((500..=1_100).contains(&stats.accepted), "accepted {}", stats.accepted);
        assert_eq!(stats.rejected, 0);
        hub.shutdown().await;
        tokio::time::timeout(Duration::from_secs(2), task).await.expect("source stopped").unwrap();
    }

    #[test]
    fn gauges_follow_open_sessions_and_queued_messages() {
        let mut g = DemoGenerator::new(5);
        let mut out = Vec::new();
        let mut seen = (0, 0);
        for _ in 0..200 {
            out.clear();
            g.fill(10, 1_700_000_000, &mut out);
            let (queued, sessions) = g.gauges();
            assert!(sessions <= MAX_STORIES + 1);
            seen = (seen.0.max(queued), seen.1.max(sessions));
        }
        assert!(seen.0 > 0 && seen.1 > 0, "both gauges moved: {seen:?}");
    }
}
