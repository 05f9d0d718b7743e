//! Fuzz target `event_parse`: the ingest parser (`event::Tape`) against serde_json, on raw
//! bytes. The tape must accept exactly the documents serde_json accepts and read the same
//! values, and an event built from either must be the same event: the same JSON bytes, match
//! view, span, level and time, or the same rejection.
#![no_main]

use libfuzzer_sys::fuzz_target;
use livetap::event::{BuildError, Catalogue, EventBuilder, JsonRef, KeyRegistry, RawValue, Tape};
use std::sync::OnceLock;

/// One catalogue and two registries per process: each side registers the unknown keys it
/// meets in its own, so the two stay comparable input after input.
fn setup() -> &'static (Catalogue, KeyRegistry, KeyRegistry) {
    static SETUP: OnceLock<(Catalogue, KeyRegistry, KeyRegistry)> = OnceLock::new();
    SETUP.get_or_init(|| {
        let (catalogue, a) = Catalogue::with_keys(1024);
        let b = Catalogue::with_keys(1024).1;
        (catalogue, a, b)
    })
}

/// Value equality that tells -0.0 from 0.0.
fn same(a: &RawValue<'_>, b: &RawValue<'_>) -> bool {
    match (a, b) {
        (RawValue::Float(x), RawValue::Float(y)) => x.to_bits() == y.to_bits(),
        (RawValue::Array(x), RawValue::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same(a, b)),
        (RawValue::Object(x), RawValue::Object(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|((ka, a), (kb, b))| ka == kb && same(a, b))
        }
        _ => a == b,
    }
}

fuzz_target!(|data: &[u8]| {
    let (catalogue, keys_a, keys_b) = setup();
    let mut tape = Tape::new();
    let ours = tape.parse(data);
    let theirs = RawValue::parse_serde(data);
    match (&ours, &theirs) {
        (Ok(a), Ok(b)) => assert!(same(&a.to_raw(), b), "tape {:?} vs serde_json {b:?}", a.to_raw()),
        (Err(_), Err(_)) => return,
        _ => panic!("tape {:?} vs serde_json {theirs:?}", ours.map(|r| r.to_raw())),
    }
    let (Ok(a), Ok(b)) = (ours, theirs) else { return };
    let via_tape = EventBuilder::new(catalogue, keys_a).with_max_bytes(4096).build(a, 7);
    let via_tree = EventBuilder::new(catalogue, keys_b).with_max_bytes(4096).build(&b, 7);
    match (via_tape, via_tree) {
        (Ok(x), Ok(y)) => {
            assert_eq!((&x.kind, x.level, x.span_id, x.span_end, x.created_at), (&y.kind, y.level, y.span_id, y.span_end, y.created_at));
            assert_eq!(x.json, y.json);
            assert_eq!(x.wire, y.wire);
            assert!(x.fields().eq(y.fields()));
            assert_eq!(x.search_text(), y.search_text());
        }
        (Err(BuildError::Json(_)), Err(BuildError::Json(_))) => {}
        (x, y) => assert_eq!(x.map(|e| e.json).err(), y.map(|e| e.json).err()),
    }
    assert_eq!(keys_a.len(), keys_b.len());
});
