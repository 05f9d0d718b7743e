//! Wire dialects: the JSON form an event takes in a live stream (livetap's full form,
//! Stalwart's classic form, Stalwart v0.16's next), encoded at most once per dialect in use.
//!
//! Every event is serialised once at ingest in livetap's full form ([`Event::wire`]), with
//! every key the producer sent. For nearly every event that is also the classic form (the
//! builder marks it, [`Event::is_classic`]); the classic form of any other event is rewritten
//! once, on first use, into a slot of the same table the other dialects use
//! ([`Event::classic_wire`], `event/classic.rs`). Another dialect is an [`Encoder`] registered with the hub's
//! [`Dialects`]; a stream that speaks it holds the encoder, and the first time a matcher queues
//! an event to such a stream, the event is encoded in that dialect and the bytes are kept in
//! the event beside the classic ones ([`Event::wire_in`]). Every other stream of the same
//! dialect then shares them: one encoding per event per dialect in use, never one per
//! subscriber, and none at all for a dialect no stream uses. An event carries one pointer for
//! this (the table of other forms is allocated on first use).
//!
//! The frame around the events (`id:`, `event: trace`, the array brackets) is `sse/`'s: an
//! encoder writes one JSON object and nothing else.

use super::Event;
use bytes::Bytes;
use parking_lot::Mutex;
use std::sync::{Arc, OnceLock};

/// Writes events in one wire dialect. Encoders run on matcher threads: no I/O, no waiting.
pub trait Encoder: Send + Sync + 'static {
    /// The dialect's name, for logs and errors (`classic`, `v016`).
    fn name(&self) -> &str;

    /// Appends the event's JSON object in this dialect to `out` (no separator before it).
    fn encode(&self, event: &Event, out: &mut Vec<u8>);
}

thread_local! {
    /// The buffer a thread encodes other dialects' forms into (matcher threads, mostly): grown
    /// once to the largest form it wrote, so an encoding allocates only its result, at its exact
    /// size, as `EventBuilder` does for the classic form.
    static SCRATCH: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(Vec::with_capacity(4096));
}

/// The scratch buffer is given back to the allocator when a form this large passed through.
const SCRATCH_KEEP: usize = 1 << 20;

/// `event`'s wire bytes in `enc`'s dialect: a comma, then the JSON object, in one allocation
/// of exactly their size. What [`Event::wire_in`] keeps in the event.
pub fn encode_wire(enc: &dyn Encoder, event: &Event) -> Bytes {
    let write = |out: &mut Vec<u8>| {
        out.clear();
        out.push(b',');
        enc.encode(event, out);
        Bytes::copy_from_slice(out)
    };
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut out) => {
            let b = write(&mut out);
            if out.capacity() > SCRATCH_KEEP {
                *out = Vec::with_capacity(4096);
            }
            b
        }
        // An encoder that encodes another event's form inside its own (none does): a buffer
        // of its own.
        Err(_) => write(&mut Vec::new()),
    })
}

/// Dialects an event can carry besides the classic form.
pub const MAX_OTHER_DIALECTS: usize = 7;

/// A registered dialect: its slot in an event's table of other forms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Dialect(u8);

/// How a stream's events are written: the classic form, the full form built at ingest, or
/// another dialect.
#[derive(Clone, Default)]
pub enum WireForm {
    /// Stalwart's classic live-tracing JSON, limited to what classic clients decode
    /// ([`Event::classic_wire`]: the ingest bytes themselves for nearly every event).
    #[default]
    Classic,
    /// livetap's own form: the classic shape with every key the producer sent
    /// ([`Event::wire`]); `/api/livetap/live` and the dashboard use it.
    Full,
    /// A registered dialect and its encoder.
    Other(Dialect, Arc<dyn Encoder>),
}

impl std::fmt::Debug for WireForm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WireForm::Classic => f.write_str("Classic"),
            WireForm::Full => f.write_str("Full"),
            WireForm::Other(d, e) => write!(f, "Other({}, {})", d.0, e.name()),
        }
    }
}

impl WireForm {
    /// `event`'s wire bytes in this form (a comma, then the JSON object), encoding them the
    /// first time any stream asks for this dialect. For a classic stream and a clean event
    /// this costs one branch more than the full form, and nothing else.
    #[inline]
    pub fn wire<'e>(&self, event: &'e Event) -> &'e Bytes {
        match self {
            WireForm::Classic => event.classic_wire(),
            WireForm::Full => &event.wire,
            WireForm::Other(d, enc) => event.wire_in(*d, enc.as_ref()),
        }
    }
}

/// Why a dialect could not be registered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DialectError {
    /// Every slot is taken.
    #[error("at most {MAX_OTHER_DIALECTS} dialects besides the classic one")]
    Full,
    /// Another dialect has that name.
    #[error("a dialect named `{0}` is already registered")]
    Duplicate(String),
}

/// The hub's registered dialects.
#[derive(Default)]
pub struct Dialects {
    /// Written when a dialect is registered (at start-up), read when a stream picks one.
    list: Mutex<Vec<Arc<dyn Encoder>>>,
}

impl Dialects {
    /// Registers `encoder` and returns the form streams use to speak it.
    pub fn register(&self, encoder: Arc<dyn Encoder>) -> Result<WireForm, DialectError> {
        let mut list = self.list.lock();
        if matches!(encoder.name(), "classic" | "full") || list.iter().any(|e| e.name() == encoder.name()) {
            return Err(DialectError::Duplicate(encoder.name().to_string()));
        }
        if list.len() >= MAX_OTHER_DIALECTS {
            return Err(DialectError::Full);
        }
        let d = Dialect(list.len() as u8);
        list.push(encoder.clone());
        Ok(WireForm::Other(d, encoder))
    }

    /// The form of the dialect named `name` (`classic` and `full` are always there).
    pub fn get(&self, name: &str) -> Option<WireForm> {
        match name {
            "classic" => return Some(WireForm::Classic),
            "full" => return Some(WireForm::Full),
            _ => {}
        }
        let list = self.list.lock();
        list.iter().position(|e| e.name() == name).map(|i| WireForm::Other(Dialect(i as u8), list[i].clone()))
    }
}

/// The slot of an event's rewritten classic form, after the registered dialects' slots.
const CLASSIC_SLOT: usize = MAX_OTHER_DIALECTS;

/// An event's forms in the other dialects, and its rewritten classic form when it needs one,
/// allocated the first time one is asked for.
#[derive(Debug, Default)]
pub struct OtherForms(OnceLock<Box<[OnceLock<Bytes>; MAX_OTHER_DIALECTS + 1]>>);

impl OtherForms {
    fn table(&self) -> &[OnceLock<Bytes>; MAX_OTHER_DIALECTS + 1] {
        self.0.get_or_init(|| Box::new(std::array::from_fn(|_| OnceLock::new())))
    }

    /// The form in dialect `d`, encoded by `enc` if no stream asked for it before. Matcher
    /// threads of different shards may ask at once; `OnceLock` lets exactly one encode and
    /// the others wait for its bytes, so the event is still encoded once.
    fn get(&self, d: Dialect, event: &Event, enc: &dyn Encoder) -> &Bytes {
        self.table()[d.0 as usize].get_or_init(|| encode_wire(enc, event))
    }

    /// The classic form of an event that is not [`Event::is_classic`], rewritten once like a
    /// dialect's. When the rewrite changes nothing (an event whose nested objects were
    /// already nested events), the ingest bytes are shared instead of a copy.
    fn classic(&self, event: &Event) -> &Bytes {
        self.table()[CLASSIC_SLOT].get_or_init(|| {
            let mut out = Vec::with_capacity(event.wire.len());
            out.push(b',');
            super::classic::encode(event, &mut out);
            if out[..] == event.wire[..] {
                event.wire.clone()
            } else {
                Bytes::from(out)
            }
        })
    }
}

impl Event {
    /// This event's wire bytes in the classic form (a comma, then the JSON object): the ingest
    /// bytes when the event [`is_classic`](Event::is_classic), else its rewrite, made the
    /// first time a classic stream asks and shared by all of them.
    #[inline]
    pub fn classic_wire(&self) -> &Bytes {
        if self.classic {
            &self.wire
        } else {
            self.other_forms.classic(self)
        }
    }

    /// This event's wire bytes in dialect `d` (a comma, then the JSON object), encoded by
    /// `enc` the first time any stream asks.
    pub fn wire_in(&self, d: Dialect, enc: &dyn Encoder) -> &Bytes {
        self.other_forms.get(d, self, enc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Catalogue, EventBuilder, RawValue};
    use std::sync::atomic::{AtomicUsize, Ordering};

    struct Upper(AtomicUsize);
    impl Encoder for Upper {
        fn name(&self) -> &str {
            "upper"
        }
        fn encode(&self, event: &Event, out: &mut Vec<u8>) {
            self.0.fetch_add(1, Ordering::Relaxed);
            out.extend(event.json.to_ascii_uppercase());
        }
    }

    #[test]
    fn an_event_is_encoded_once_per_dialect_and_only_when_asked() {
        let (c, k) = Catalogue::with_keys(64);
        let raw = RawValue::parse_serde(br#"{"type":"auth.success","data":{"accountName":"x"}}"#).unwrap();
        let ev = EventBuilder::new(&c, &k).build(&raw, 0).unwrap();
        let dialects = Dialects::default();
        let upper = Arc::new(Upper(AtomicUsize::new(0)));
        let form = dialects.register(upper.clone()).unwrap();
        assert!(ev.other_forms.0.get().is_none(), "nothing allocated before a stream asks");
        assert_eq!(WireForm::Classic.wire(&ev).as_ptr(), ev.wire.as_ptr(), "a clean event's own bytes");
        assert_eq!(WireForm::Full.wire(&ev).as_ptr(), ev.wire.as_ptr());
        assert!(ev.other_forms.0.get().is_none(), "a clean event needs no classic rewrite");
        let a = form.wire(&ev).clone();
        let b = form.wire(&ev).clone();
        assert_eq!(upper.0.load(Ordering::Relaxed), 1);
        assert_eq!(a.as_ptr(), b.as_ptr(), "shared, not copied");
        assert!(a.starts_with(b",{\"TEXT\""), "{a:?}");
        // Names are unique and the classic form is built in.
        assert!(matches!(dialects.get("classic"), Some(WireForm::Classic)));
        assert!(matches!(dialects.get("full"), Some(WireForm::Full)));
        assert!(matches!(dialects.get("upper"), Some(WireForm::Other(..))));
        assert_eq!(dialects.register(upper).unwrap_err(), DialectError::Duplicate("upper".into()));
    }

    #[test]
    fn an_event_outside_the_classic_contract_is_rewritten_once_for_classic_streams() {
        let (c, k) = Catalogue::with_keys(64);
        let raw =
            RawValue::parse_serde(br#"{"type":"postfix.qmgr","data":{"clientName":"mx","to":["a@x",null]}}"#)
                .unwrap();
        let ev = EventBuilder::new(&c, &k).build(&raw, 0).unwrap();
        assert!(!ev.is_classic());
        assert_eq!(WireForm::Full.wire(&ev).as_ptr(), ev.wire.as_ptr(), "the full form is the ingest bytes");
        let a = WireForm::Classic.wire(&ev).clone();
        let b = WireForm::Classic.wire(&ev).clone();
        assert_eq!(a.as_ptr(), b.as_ptr(), "rewritten once, then shared");
        let v: serde_json::Value = serde_json::from_slice(&a[1..]).unwrap();
        assert_eq!(v["data"], serde_json::json!({"to": ["a@x"]}));
        // An event whose only oddity is an object that already is a nested event keeps its
        // ingest bytes, shared rather than copied.
        let raw =
            RawValue::parse_serde(br#"{"type":"a.b","data":{"causedBy":{"type":"x","data":{"code":"1"}}}}"#)
                .unwrap();
        let ev = EventBuilder::new(&c, &k).build(&raw, 0).unwrap();
        assert!(!ev.is_classic());
        assert_eq!(WireForm::Classic.wire(&ev).as_ptr(), ev.wire.as_ptr());
    }
}
