//! Metric records pushed by producers in the ingest body, and how they are validated.
//!
//! A record is a JSON object with a `metric` member, on its own NDJSON line or as an element of
//! a JSON array body, beside events:
//!
//! ```json
//! {"metric":"queue.count","type":"gauge","value":12}
//! {"metric":"smtp.connection-start","type":"counter","value":3}
//! {"metric":"delivery.total-time","type":"histogram","values":[120,340,95]}
//! ```
//!
//! `type` is optional: a catalogue name keeps its catalogue kind, and any other name is a gauge
//! unless the record says otherwise. A gauge `value` replaces the gauge's value; a counter
//! `value` is added to the counter (a non-negative integer); a histogram takes one observation
//! (`value`) or several (`values`). `unit` is optional and only used when the record creates a
//! new name. Parsing here checks the record's shape; the registry then checks the name against
//! what it already knows (a kind conflict is reported on the record's line).

use super::model::Kind;
use crate::event::RawValue;
use smallvec::SmallVec;

/// Longest metric name accepted.
pub const MAX_NAME_BYTES: usize = 128;
/// Most observations in one histogram record.
pub const MAX_VALUES: usize = 10_000;

/// Why a metric record was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PushError {
    /// `metric` is missing, empty, too long or has characters outside `[A-Za-z0-9._-]`.
    #[error("invalid \"metric\": {0}")]
    BadName(&'static str),
    /// `type` is not `counter`, `gauge` or `histogram`.
    #[error("invalid \"type\": expected counter, gauge or histogram")]
    BadType,
    /// The value does not fit the kind.
    #[error("invalid value: {0}")]
    BadValue(&'static str),
    /// `unit` is not a short string.
    #[error("invalid \"unit\": expected a short string such as \"milliseconds\"")]
    BadUnit,
    /// The name exists with another kind.
    #[error("`{name}` is a {kind}, not a {wanted}")]
    KindConflict {
        /// The metric.
        name: String,
        /// Its kind in the registry.
        kind: &'static str,
        /// The kind the record asked for.
        wanted: &'static str,
    },
    /// `livetap.*` names are livetap's own.
    #[error("`{0}` is reserved for livetap's own metrics")]
    Reserved(String),
    /// The registry holds its maximum of names.
    #[error("too many metric names (at most {0} beyond the catalogue); the record was dropped")]
    Full(usize),
}

/// A validated metric record.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricRecord {
    /// The dotted name.
    pub name: String,
    /// The kind the record asked for, if it said.
    pub kind: Option<Kind>,
    /// One value (gauge, counter) or the observations (histogram).
    pub values: SmallVec<[f64; 1]>,
    /// The unit, for a name the record creates.
    pub unit: Option<String>,
}

/// Checks a metric name: 1 to 128 bytes of `[A-Za-z0-9._-]`, starting with a letter.
pub fn check_name(name: &str) -> Result<(), PushError> {
    if name.is_empty() {
        return Err(PushError::BadName("empty"));
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(PushError::BadName("longer than 128 bytes"));
    }
    if !name.starts_with(|c: char| c.is_ascii_alphabetic()) {
        return Err(PushError::BadName("must start with a letter"));
    }
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_')) {
        return Err(PushError::BadName("only letters, digits, '.', '-' and '_' are allowed"));
    }
    Ok(())
}

fn number(v: &RawValue<'_>) -> Option<f64> {
    match v {
        RawValue::Int(i) => Some(*i as f64),
        RawValue::UInt(u) => Some(*u as f64),
        RawValue::Float(f) if f.is_finite() => Some(*f),
        _ => None,
    }
}

/// Parses and checks one record (an object with a `metric` member).
pub fn parse_record(raw: &RawValue<'_>) -> Result<MetricRecord, PushError> {
    let name = raw.get("metric").and_then(RawValue::as_str).ok_or(PushError::BadName("expected a string"))?;
    check_name(name)?;
    let kind = match raw.get("type") {
        None | Some(RawValue::Null) => None,
        Some(v) => Some(v.as_str().and_then(Kind::parse).ok_or(PushError::BadType)?),
    };
    let unit = match raw.get("unit") {
        None | Some(RawValue::Null) => None,
        Some(RawValue::Str(u)) if !u.is_empty() && u.len() <= 32 => Some(u.to_string()),
        Some(_) => return Err(PushError::BadUnit),
    };
    let mut values = SmallVec::new();
    match (raw.get("value"), raw.get("values")) {
        (Some(v), None) => {
            values.push(number(v).ok_or(PushError::BadValue("\"value\" must be a finite number"))?)
        }
        (None, Some(RawValue::Array(list))) => {
            if list.is_empty() || list.len() > MAX_VALUES {
                return Err(PushError::BadValue("\"values\" must hold 1 to 10000 numbers"));
            }
            for v in list {
                values.push(number(v).ok_or(PushError::BadValue("\"values\" must hold finite numbers"))?);
            }
        }
        (None, Some(_)) => return Err(PushError::BadValue("\"values\" must be an array of numbers")),
        (Some(_), Some(_)) => return Err(PushError::BadValue("give \"value\" or \"values\", not both")),
        (None, None) => return Err(PushError::BadValue("missing \"value\"")),
    }
    if values.len() > 1 && kind != Some(Kind::Histogram) {
        return Err(PushError::BadValue("\"values\" is for histograms (\"type\":\"histogram\")"));
    }
    Ok(MetricRecord { name: name.to_string(), kind, values, unit })
}

/// Checks a value against the kind it is applied as.
pub fn check_value(kind: Kind, values: &[f64]) -> Result<(), PushError> {
    match kind {
        Kind::Gauge => Ok(()),
        Kind::Counter => match values {
            [v] if *v >= 0.0 && v.fract() == 0.0 && *v <= u64::MAX as f64 => Ok(()),
            _ => Err(PushError::BadValue("a counter takes one non-negative integer (added to it)")),
        },
        Kind::Histogram => {
            if values.iter().all(|v| *v >= 0.0) {
                Ok(())
            } else {
                Err(PushError::BadValue("histogram observations must not be negative"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<MetricRecord, PushError> {
        parse_record(&RawValue::parse_serde(text.as_bytes()).unwrap())
    }

    #[test]
    fn records() {
        let r = parse(r#"{"metric":"queue.count","type":"gauge","value":12}"#).unwrap();
        assert_eq!(
            (r.name.as_str(), r.kind, r.values.as_slice()),
            ("queue.count", Some(Kind::Gauge), &[12.0][..])
        );
        let r = parse(r#"{"metric":"x.y","value":-1.5,"unit":"degrees"}"#).unwrap();
        assert_eq!((r.kind, r.values[0], r.unit.as_deref()), (None, -1.5, Some("degrees")));
        let r = parse(r#"{"metric":"delivery.total-time","type":"histogram","values":[1,2,3]}"#).unwrap();
        assert_eq!(r.values.len(), 3);
    }

    #[test]
    fn bad_records() {
        let cases: &[(&str, PushError)] = &[
            (r#"{"metric":5,"value":1}"#, PushError::BadName("expected a string")),
            (r#"{"metric":"","value":1}"#, PushError::BadName("empty")),
            (r#"{"metric":"9x","value":1}"#, PushError::BadName("must start with a letter")),
            (
                r#"{"metric":"a b","value":1}"#,
                PushError::BadName("only letters, digits, '.', '-' and '_' are allowed"),
            ),
            (r#"{"metric":"a","type":"meter","value":1}"#, PushError::BadType),
            (r#"{"metric":"a","value":"12"}"#, PushError::BadValue("\"value\" must be a finite number")),
            (r#"{"metric":"a"}"#, PushError::BadValue("missing \"value\"")),
            (r#"{"metric":"a","values":[]}"#, PushError::BadValue("\"values\" must hold 1 to 10000 numbers")),
            (
                r#"{"metric":"a","values":[1,2]}"#,
                PushError::BadValue("\"values\" is for histograms (\"type\":\"histogram\")"),
            ),
            (r#"{"metric":"a","value":1,"unit":7}"#, PushError::BadUnit),
        ];
        for (text, want) in cases {
            assert_eq!(&parse(text).unwrap_err(), want, "{text}");
        }
        assert!(check_value(Kind::Counter, &[3.0]).is_ok());
        assert!(check_value(Kind::Counter, &[-3.0]).is_err());
        assert!(check_value(Kind::Counter, &[1.5]).is_err());
        assert!(check_value(Kind::Histogram, &[-1.0]).is_err());
        assert!(check_value(Kind::Gauge, &[-1.0]).is_ok());
    }
}
