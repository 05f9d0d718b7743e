//! The history writer as a tap: every event, in order, handed to `store::HistoryWriter`.
//!
//! The writer keeps Stalwart's selection (spans that carry a queue id) on its own thread, so
//! this tap wants every event and leaves choosing to it. The writer's queue never blocks
//! either: an event it cannot take is counted in its `dropped`, as before taps existed.

use super::{Tap, TapEvent};
use crate::store::writer::HistoryWriter;
use std::sync::Arc;

/// Feeds the history writer.
pub struct HistoryTap {
    writer: Arc<HistoryWriter>,
}

impl HistoryTap {
    /// A tap feeding `writer`.
    pub fn new(writer: Arc<HistoryWriter>) -> HistoryTap {
        HistoryTap { writer }
    }
}

impl Tap for HistoryTap {
    fn name(&self) -> &str {
        "history"
    }

    fn query(&self) -> &str {
        ""
    }

    fn deliver(&mut self, events: &[TapEvent]) {
        for e in events {
            self.writer.submit(e.seq, e.event.clone());
        }
    }
}
