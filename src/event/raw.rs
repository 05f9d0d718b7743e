//! The untyped JSON value producers send, borrowed from the input buffer where possible.
//!
//! Both simd-json and serde_json deserialise into [`RawValue`] through the same
//! `Deserialize` impl, so the parse benchmark compares the two parsers on identical work.
//! Nesting depth is bounded during deserialisation, so hostile input such as ten million
//! `[` characters is rejected with an error instead of overflowing the stack.

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde::Deserializer;
use std::borrow::Cow;
use std::fmt;

/// Deepest nesting accepted inside one event (objects and arrays count one level each).
pub const MAX_DEPTH: u8 = 16;

/// A JSON value whose strings borrow from the input buffer when they need no unescaping.
#[derive(Debug, Clone, PartialEq)]
pub enum RawValue<'a> {
    /// JSON `null`.
    Null,
    /// JSON `true` or `false`.
    Bool(bool),
    /// A number that fits a signed 64-bit integer.
    Int(i64),
    /// A non-negative number above `i64::MAX`.
    UInt(u64),
    /// Any other number.
    Float(f64),
    /// A string.
    Str(Cow<'a, str>),
    /// An array.
    Array(Vec<RawValue<'a>>),
    /// An object, with its members in input order.
    Object(Vec<(Cow<'a, str>, RawValue<'a>)>),
}

impl<'a> RawValue<'a> {
    /// Returns the member `name` of an object, if this is an object that has it.
    pub fn get(&self, name: &str) -> Option<&RawValue<'a>> {
        match self {
            RawValue::Object(members) => members.iter().find(|(k, _)| k == name).map(|(_, v)| v),
            _ => None,
        }
    }

    /// Returns the string content, if this is a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            RawValue::Str(s) => Some(s),
            _ => None,
        }
    }

    /// Parses `buf` with simd-json (which unescapes in place, hence `&mut`).
    pub fn parse_simd(buf: &'a mut [u8]) -> Result<RawValue<'a>, String> {
        simd_json::serde::from_slice::<RawValue<'a>>(buf).map_err(|e| e.to_string())
    }

    /// Parses `buf` with serde_json; kept for the side-by-side parser benchmark.
    pub fn parse_serde(buf: &'a [u8]) -> Result<RawValue<'a>, String> {
        // Validating the whole input once is cheaper than serde_json validating every string
        // separately (`from_slice`); `from_str` then trusts it.
        match std::str::from_utf8(buf) {
            Ok(text) => serde_json::from_str::<RawValue<'a>>(text).map_err(|e| e.to_string()),
            Err(e) => Err(format!("invalid UTF-8 at byte {}", e.valid_up_to())),
        }
    }
}

impl<'de> serde::Deserialize<'de> for RawValue<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Depth(0).deserialize(deserializer)
    }
}

/// A seed that carries the current nesting depth into the visitor.
struct Depth(u8);

impl<'de> DeserializeSeed<'de> for Depth {
    type Value = RawValue<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(ValueVisitor(self.0))
    }
}

struct ValueVisitor(u8);

impl<'de> Visitor<'de> for ValueVisitor {
    type Value = RawValue<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(RawValue::Null)
    }
    fn visit_none<E>(self) -> Result<Self::Value, E> {
        Ok(RawValue::Null)
    }
    fn visit_bool<E>(self, v: bool) -> Result<Self::Value, E> {
        Ok(RawValue::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
        Ok(RawValue::Int(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
        Ok(i64::try_from(v).map_or(RawValue::UInt(v), RawValue::Int))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
        Ok(RawValue::Float(v))
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(RawValue::Str(Cow::Borrowed(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(RawValue::Str(Cow::Owned(v.to_owned())))
    }
    fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
        Ok(RawValue::Str(Cow::Owned(v)))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        if self.0 >= MAX_DEPTH {
            return Err(de::Error::custom("nesting too deep"));
        }
        // JSON gives no length up front; starting at 8 avoids the 0 -> 4 -> 8 regrowths that
        // cost more than the parse of a short array (a parsed value lives only until built).
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(8).min(64));
        while let Some(v) = seq.next_element_seed(Depth(self.0 + 1))? {
            out.push(v);
        }
        Ok(RawValue::Array(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        if self.0 >= MAX_DEPTH {
            return Err(de::Error::custom("nesting too deep"));
        }
        // Event `data` objects have about 5 to 15 members: one allocation of 16 instead of four
        // regrowths (measured with callgrind: ~800 instructions per event).
        let mut out = Vec::with_capacity(map.size_hint().unwrap_or(16).min(64));
        while let Some(k) = map.next_key_seed(KeySeed)? {
            let v = map.next_value_seed(Depth(self.0 + 1))?;
            out.push((k, v));
        }
        Ok(RawValue::Object(out))
    }
}

/// Deserialises an object key, borrowing it when the parser allows.
struct KeySeed;

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = Cow<'de, str>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(KeyVisitor)
    }
}

struct KeyVisitor;

impl<'de> Visitor<'de> for KeyVisitor {
    type Value = Cow<'de, str>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string key")
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_parsers_agree() {
        let text = br#"{"type":"smtp.connection-start","data":{"remoteIp":"10.0.0.5","remotePort":4242,"x":[1,2.5,true,null],"esc":"a\"b"}}"#;
        let a = RawValue::parse_serde(text).unwrap();
        let mut buf = text.to_vec();
        let b = RawValue::parse_simd(&mut buf).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.get("type").and_then(|v| v.as_str()), Some("smtp.connection-start"));
        let data = a.get("data").unwrap();
        assert_eq!(data.get("remotePort"), Some(&RawValue::Int(4242)));
        assert_eq!(data.get("esc").and_then(|v| v.as_str()), Some("a\"b"));
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        let deep = "[".repeat(100_000) + &"]".repeat(100_000);
        assert!(RawValue::parse_serde(deep.as_bytes()).is_err());
        let mut buf = deep.into_bytes();
        assert!(RawValue::parse_simd(&mut buf).is_err());
    }

    #[test]
    fn garbage_is_an_error() {
        let mut b = b"{\"type\": ".to_vec();
        assert!(RawValue::parse_simd(&mut b).is_err());
        let mut b = vec![0xff, 0xfe, b'{'];
        assert!(RawValue::parse_simd(&mut b).is_err());
    }
}
