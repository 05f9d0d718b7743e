//! The mail-log line format: frame, parse, correlate and build, for each line in order.
//! (Being written: issue 24.)
