//! Span correlation for mail logs: sessions, messages and the links between them.
//! (Being written: issue 24.)
