//! Fuzz target `wire_forms`: whatever a producer sends, every event livetap builds from it is
//! written in each wire form as valid JSON. The v0.16 forms (`event::v016`, array and object
//! `keyValues`) and the classic contract (`event::classic`) are rewritten from the event's own
//! JSON, so a mistake in their scanners would reach every client of that dialect; the classic
//! form must also hold only the catalogue's keys and no `null`, or Stalwart's old web admin
//! drops the whole frame. The log sinks' text line (`tap::sink::text`), rewritten from the same
//! JSON, stays one line of printable text.
#![no_main]

use libfuzzer_sys::fuzz_target;
use livetap::event::classic::{self, is_classic_key};
use livetap::event::dialect::Encoder;
use livetap::event::v016::{KeyValues, V016};
use livetap::event::{Catalogue, EventBuilder, KeyRegistry, Tape};
use livetap::tap::sink::text;
use serde_json::Value;
use std::sync::OnceLock;

fn setup() -> &'static (Catalogue, KeyRegistry, V016, V016) {
    static SETUP: OnceLock<(Catalogue, KeyRegistry, V016, V016)> = OnceLock::new();
    SETUP.get_or_init(|| {
        let (catalogue, keys) = Catalogue::with_keys(1024);
        let array = V016::from_catalogue(KeyValues::Array, &catalogue);
        let object = V016::from_catalogue(KeyValues::Object, &catalogue);
        (catalogue, keys, array, object)
    })
}

/// The classic contract, as the old web admin decodes it: `data` holds catalogue keys only,
/// and no value anywhere is `null`; a nested object is a sub-event with a string `type`.
fn classic_value(v: &Value) {
    match v {
        Value::Null => panic!("null in a classic form"),
        Value::Array(items) => items.iter().for_each(classic_value),
        Value::Object(m) => {
            assert!(m.get("type").is_some_and(Value::is_string), "a nested object that is no sub-event: {v}");
            classic_data(m.get("data").expect("a sub-event has data"));
        }
        _ => {}
    }
}

fn classic_data(data: &Value) {
    let Value::Object(m) = data else { panic!("data is not an object: {data}") };
    for (k, v) in m {
        assert!(is_classic_key(k), "non-catalogue key {k:?} in a classic form");
        classic_value(v);
    }
}

fuzz_target!(|data: &[u8]| {
    let (catalogue, keys, array, object) = setup();
    let mut tape = Tape::new();
    let Ok(raw) = tape.parse(data) else { return };
    let Ok(ev) = EventBuilder::new(catalogue, keys).with_max_bytes(4096).build(raw, 7) else { return };
    for enc in [array, object] {
        let mut out = Vec::new();
        enc.encode(&ev, &mut out);
        let v: Value = serde_json::from_slice(&out)
            .unwrap_or_else(|e| panic!("v0.16 form is not JSON ({e}): {}", String::from_utf8_lossy(&out)));
        assert_eq!(v["event"].as_str(), Some(&*ev.kind));
    }
    let mut out = Vec::new();
    classic::encode(&ev, &mut out);
    let v: Value = serde_json::from_slice(&out)
        .unwrap_or_else(|e| panic!("classic form is not JSON ({e}): {}", String::from_utf8_lossy(&out)));
    assert_eq!(v["type"].as_str(), Some(&*ev.kind));
    classic_data(&v["data"]);
    // The log sinks' lines: an NDJSON line is the event's JSON, which must hold no line break;
    // a text line is one line of printable text that starts with the event's time.
    assert!(!ev.json.contains(&b'\n'), "a line break in an event's JSON");
    let mut line = Vec::new();
    text::write_line(&ev, &mut line, &mut Vec::new());
    let line = String::from_utf8(line).expect("a text line is UTF-8");
    assert!(
        !line.chars().any(|c| c.is_control() || (c.is_whitespace() && c != ' ')),
        "a control or line-breaking character in a text line: {line:?}"
    );
    let time = livetap::event::encode::format_timestamp(ev.created_at);
    assert!(line.as_bytes().starts_with(&time), "a text line that does not start with its time: {line:?}");
});
