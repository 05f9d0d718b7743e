//! Fuzz target `webhook_stream`: the webhook body splitter (`ingest::stream_split`) fed any
//! bytes in chunks of any size hands out the same elements, and ends with the same verdict, as
//! when it is fed the whole body at once; and for a body serde_json reads as a batch, every
//! element it hands out is the batch's element, in order.
#![no_main]

use libfuzzer_sys::fuzz_target;
use livetap::ingest::stream_split::{BatchSplitter, Piece};

/// Elements (`None` for one too long to keep) and the verdict.
fn split(body: &[u8], chunk: usize, max: usize) -> (Vec<Option<Vec<u8>>>, Result<(), String>) {
    let mut s = BatchSplitter::new(max);
    let mut got = Vec::new();
    for c in body.chunks(chunk.max(1)) {
        let r = s.feed(c, |p| match p {
            Piece::Element { bytes, .. } => got.push(Some(bytes.to_vec())),
            Piece::TooLong { .. } => got.push(None),
        });
        if let Err(e) = r {
            return (got, Err(e.to_string()));
        }
        assert!(s.carried() <= max, "the carry stays within one element");
    }
    let end = s.finish().map_err(|e| e.to_string());
    (got, end)
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, body)) = data.split_first() else { return };
    let chunk = usize::from(first % 64) + 1;
    let max = 64;
    let whole = split(body, body.len(), max);
    assert_eq!(split(body, chunk, max), whole, "chunked by {chunk}");
    // A body serde_json reads as one batch: the elements are its array's, in order.
    let Ok(serde_json::Value::Object(m)) = serde_json::from_slice::<serde_json::Value>(body) else { return };
    let (Some(serde_json::Value::Array(items)), Ok(())) = (m.get("events"), &whole.1) else { return };
    // serde_json keeps the last of repeated members; the splitter takes the first array.
    if body.windows(8).filter(|w| w == b"\"events\"").count() != 1 {
        return;
    }
    assert_eq!(whole.0.len(), items.len());
    for (got, want) in whole.0.iter().zip(items) {
        if let Some(bytes) = got {
            let v: serde_json::Value = serde_json::from_slice(bytes).expect("an element of a valid batch parses");
            assert_eq!(&v, want);
        }
    }
});
