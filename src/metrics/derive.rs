//! Which events feed which of the catalogue's 17 histograms, and with which key.
//!
//! Stalwart measures its histograms inside the server; livetap sees only the events, so a
//! histogram is derived where an event carries the measure: the `elapsed` milliseconds of a
//! command or lookup, the `size` in bytes of a queued message. The table is looked up once per
//! event type (when a matcher thread first meets the type), never per event. Histograms that no
//! event carries a measure for are fed by producers (metric records) or by scraping.
//! `stalwart-event-keys.json` lists which events carry `elapsed` and `size`; the README shows
//! this table to users.
//!
//! The table names v0.15 types. A type Stalwart renamed in v0.16 feeds the same histogram
//! under its new name: [`rule_for`] falls back to the rule of the type's counterpart in the
//! other catalogue generation (`queue.message-queued` feeds `message.size` as
//! `queue.queue-message` does), so every rule keyed on a renamed type fires for both names.

/// One row: events whose type matches `events` (and none of `except`) feed `histogram` with
/// the value of their `key`.
#[derive(Debug, Clone, Copy)]
pub struct Rule {
    /// The catalogue histogram.
    pub histogram: &'static str,
    /// The event key carrying the measure (`elapsed` or `size`).
    pub key: &'static str,
    /// Event types: exact names, or `family.*` for every type of a family.
    pub events: &'static [&'static str],
    /// Exact types excluded from a `family.*` pattern.
    pub except: &'static [&'static str],
}

/// Session-level events that carry `elapsed` but measure a whole connection or an idle
/// period, not a request.
const NOT_REQUESTS: &[&str] = &[
    "imap.connection-end",
    "imap.idle-start",
    "imap.idle-stop",
    "pop3.connection-end",
    "manage-sieve.connection-end",
];

/// The mapping table. Every catalogue histogram has a row; an empty `events` list means no
/// event carries its measure.
pub const RULES: &[Rule] = &[
    Rule {
        histogram: "message-ingest.time",
        key: "elapsed",
        events: &[
            "message-ingest.ham",
            "message-ingest.spam",
            "message-ingest.imap-append",
            "message-ingest.jmap-append",
        ],
        except: &[],
    },
    Rule { histogram: "message-ingest.index-time", key: "elapsed", events: &[], except: &[] },
    Rule { histogram: "delivery.total-time", key: "elapsed", events: &["delivery.completed"], except: &[] },
    Rule {
        histogram: "delivery.attempt-time",
        key: "elapsed",
        events: &["delivery.attempt-end"],
        except: &[],
    },
    Rule { histogram: "message.size", key: "size", events: &["queue.queue-message"], except: &[] },
    Rule {
        histogram: "message.authenticated-size",
        key: "size",
        events: &["queue.queue-message-authenticated"],
        except: &[],
    },
    Rule { histogram: "outgoing-report.size", key: "size", events: &["queue.queue-report"], except: &[] },
    Rule { histogram: "store.data-read-time", key: "elapsed", events: &["store.data-iterate"], except: &[] },
    Rule { histogram: "store.data-write-time", key: "elapsed", events: &["store.data-write"], except: &[] },
    Rule { histogram: "store.blob-read-time", key: "elapsed", events: &["store.blob-read"], except: &[] },
    Rule { histogram: "store.blob-write-time", key: "elapsed", events: &["store.blob-write"], except: &[] },
    Rule {
        histogram: "dns.lookup-time",
        key: "elapsed",
        events: &[
            "delivery.mx-lookup",
            "delivery.mx-lookup-failed",
            "delivery.ip-lookup",
            "delivery.ip-lookup-failed",
            "delivery.null-mx",
            "dane.*",
            "tls-rpt.*",
        ],
        except: &[],
    },
    Rule {
        histogram: "http.request-time",
        key: "elapsed",
        events: &["web-dav.*", "jmap.method-call"],
        except: &[],
    },
    Rule { histogram: "imap.request-time", key: "elapsed", events: &["imap.*"], except: NOT_REQUESTS },
    Rule { histogram: "pop3.request-time", key: "elapsed", events: &["pop3.*"], except: NOT_REQUESTS },
    Rule { histogram: "smtp.request-time", key: "elapsed", events: &[], except: &[] },
    Rule {
        histogram: "sieve.request-time",
        key: "elapsed",
        events: &["manage-sieve.*"],
        except: NOT_REQUESTS,
    },
];

/// The rule an event type feeds, if any (every type feeds at most one histogram): its own
/// row, or else the row of its other name when Stalwart renamed it between v0.15 and v0.16.
pub fn rule_for(event_type: &str) -> Option<&'static Rule> {
    own_rule(event_type).or_else(|| crate::event::catalogue::counterpart(event_type).and_then(own_rule))
}

/// The rule whose patterns name `event_type` itself.
fn own_rule(event_type: &str) -> Option<&'static Rule> {
    RULES.iter().find(|r| {
        !r.except.contains(&event_type)
            && r.events.iter().any(|p| match p.strip_suffix('*') {
                Some(prefix) => event_type.starts_with(prefix),
                None => *p == event_type,
            })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Catalogue;

    #[test]
    fn table_covers_the_catalogue_histograms() {
        let c = Catalogue::embedded();
        let hists: Vec<&str> =
            c.metrics.iter().filter(|m| m.kind == "histogram").map(|m| m.name.as_str()).collect();
        assert_eq!(hists.len(), 17);
        assert_eq!(RULES.len(), 17);
        for h in &hists {
            assert!(RULES.iter().any(|r| r.histogram == *h), "{h} has no row");
        }
        // Every event named in the table exists and carries the key; at most one rule each, in
        // either generation, counting the rule a renamed type takes from its other name.
        for e in c.event_keys.iter().chain(&c.event_keys_v016) {
            let own: Vec<_> = RULES
                .iter()
                .filter(|r| {
                    !r.except.contains(&e.name.as_str())
                        && r.events.iter().any(|p| match p.strip_suffix('*') {
                            Some(prefix) => e.name.starts_with(prefix),
                            None => *p == e.name,
                        })
                })
                .collect();
            assert!(own.len() <= 1, "{} feeds several histograms", e.name);
            let twin = crate::event::catalogue::counterpart(&e.name).and_then(own_rule);
            if let (Some(a), Some(b)) = (own.first(), twin) {
                assert!(std::ptr::eq(*a, b), "{} and its other name feed different histograms", e.name);
            }
            if let Some(r) = rule_for(&e.name) {
                // Family patterns may include events without the key; they simply feed nothing.
                let named = |n: &str| r.events.contains(&n);
                if named(&e.name) || crate::event::catalogue::counterpart(&e.name).is_some_and(named) {
                    assert!(e.keys.iter().any(|k| k == r.key), "{} lacks {}", e.name, r.key);
                }
            }
        }
        for r in RULES {
            for p in r.events.iter().filter(|p| !p.ends_with('*')) {
                assert!(c.event_keys.iter().any(|e| e.name == *p), "unknown event {p}");
            }
        }
    }

    #[test]
    fn renamed_types_feed_what_their_other_name_feeds() {
        let c = Catalogue::embedded();
        let mut fed = 0;
        for r in c.renamed() {
            let (old, new) = (rule_for(r.v015), rule_for(r.v016));
            assert_eq!(old.map(|x| x.histogram), new.map(|x| x.histogram), "{} / {}", r.v015, r.v016);
            fed += usize::from(old.is_some());
        }
        // The three queue sizes.
        assert_eq!(fed, 3);
        assert_eq!(rule_for("queue.message-queued").unwrap().histogram, "message.size");
        assert_eq!(
            rule_for("queue.authenticated-message-queued").unwrap().histogram,
            "message.authenticated-size"
        );
        assert_eq!(rule_for("queue.report-queued").unwrap().histogram, "outgoing-report.size");
        // v0.16-only types in a family with a rule feed it too.
        assert_eq!(rule_for("imap.uid-batches").unwrap().histogram, "imap.request-time");
        assert_eq!(rule_for("dane.bogus-dnssec-record").unwrap().histogram, "dns.lookup-time");
    }

    #[test]
    fn lookups() {
        assert_eq!(rule_for("imap.fetch").unwrap().histogram, "imap.request-time");
        assert!(rule_for("imap.connection-end").is_none());
        assert_eq!(rule_for("queue.queue-message").unwrap().key, "size");
        assert_eq!(rule_for("dane.tlsa-record-fetch").unwrap().histogram, "dns.lookup-time");
        assert!(rule_for("smtp.connection-start").is_none());
        assert!(rule_for("custom.thing").is_none());
    }
}
