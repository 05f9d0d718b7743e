//! The read-only view of a parsed JSON value that the event builder walks.
//!
//! Ingest parses producer bytes into a flat [`Tape`](super::tape::Tape) (no tree, no
//! allocation per value); events read back from the history store, the demo generator and the
//! tests still hold [`RawValue`] trees. Both implement [`JsonRef`], so there is one event builder, one
//! serialiser and one match-view collector for both, and the differential tests can feed the
//! same bytes through serde_json's tree and the tape and demand identical events.

use super::raw::RawValue;
use std::borrow::Cow;

/// A string value or key, and whether its JSON form is exactly its bytes between quotes.
///
/// The tape knows that for free (a string the parser did not have to unescape has nothing to
/// escape either), and writing it then is one copy instead of a scan for escapes.
#[derive(Debug, Clone, Copy)]
pub struct Text<'t> {
    s: &'t str,
    clean: bool,
}

impl<'t> Text<'t> {
    /// A string whose JSON form is not known (it will be escaped when written).
    pub fn new(s: &'t str) -> Text<'t> {
        Text { s, clean: false }
    }

    /// A string the caller knows has no `"`, `\` or control character.
    pub(crate) fn clean(s: &'t str) -> Text<'t> {
        Text { s, clean: true }
    }

    /// The string.
    pub fn as_str(self) -> &'t str {
        self.s
    }

    /// True when the string can be written between quotes as it is.
    pub fn is_clean(self) -> bool {
        self.clean
    }
}

impl std::ops::Deref for Text<'_> {
    type Target = str;
    fn deref(&self) -> &str {
        self.s
    }
}

/// One JSON value, as the builder looks at it.
pub enum Node<'t, J: JsonRef<'t>> {
    /// `null`.
    Null,
    /// `true` or `false`.
    Bool(bool),
    /// A number that fits a signed 64-bit integer.
    Int(i64),
    /// A non-negative integer above `i64::MAX`.
    UInt(u64),
    /// Any other number.
    Float(f64),
    /// A string, unescaped.
    Str(Text<'t>),
    /// An array's elements, in order.
    Array(J::Items),
    /// An object's members, in input order (duplicates kept).
    Object(J::Members),
}

impl<'t, J: JsonRef<'t>> Node<'t, J> {
    /// True for the values Stalwart leaves out of `data`: null, empty strings, arrays and
    /// objects.
    pub fn is_empty_value(&self) -> bool {
        match self {
            Node::Null => true,
            Node::Str(s) => s.is_empty(),
            Node::Array(items) => items.len() == 0,
            Node::Object(members) => members.len() == 0,
            _ => false,
        }
    }
}

/// A cheap, copyable handle on one parsed JSON value.
pub trait JsonRef<'t>: Copy + 't {
    /// Iterator over an array's elements.
    type Items: ExactSizeIterator<Item = Self>;
    /// Iterator over an object's `(key, value)` members.
    type Members: ExactSizeIterator<Item = (Text<'t>, Self)>;

    /// What this value is.
    fn node(self) -> Node<'t, Self>;

    /// The string content, if this is a string.
    fn as_str(self) -> Option<&'t str> {
        match self.node() {
            Node::Str(s) => Some(s.as_str()),
            _ => None,
        }
    }

    /// The string with its JSON-cleanliness flag, if this is a string.
    fn as_text(self) -> Option<Text<'t>> {
        match self.node() {
            Node::Str(s) => Some(s),
            _ => None,
        }
    }

    /// True for JSON `null`.
    fn is_null(self) -> bool {
        matches!(self.node(), Node::Null)
    }

    /// True for the values Stalwart leaves out of `data`: null, empty strings, arrays and
    /// objects.
    fn is_empty_value(self) -> bool {
        self.node().is_empty_value()
    }

    /// The first member called `name`, if this is an object that has one.
    fn get(self, name: &str) -> Option<Self> {
        match self.node() {
            Node::Object(mut members) => members.find(|(k, _)| k.as_str() == name).map(|(_, v)| v),
            _ => None,
        }
    }

    /// An owned-tree copy, for the rare paths written against [`RawValue`] (metric records).
    fn to_raw(self) -> RawValue<'t> {
        match self.node() {
            Node::Null => RawValue::Null,
            Node::Bool(b) => RawValue::Bool(b),
            Node::Int(i) => RawValue::Int(i),
            Node::UInt(u) => RawValue::UInt(u),
            Node::Float(f) => RawValue::Float(f),
            Node::Str(s) => RawValue::Str(Cow::Borrowed(s.as_str())),
            Node::Array(items) => RawValue::Array(items.map(JsonRef::to_raw).collect()),
            Node::Object(members) => {
                RawValue::Object(members.map(|(k, v)| (Cow::Borrowed(k.as_str()), v.to_raw())).collect())
            }
        }
    }
}

/// The members of a [`RawValue::Object`], with keys as [`Text`].
#[derive(Clone)]
pub struct RawMembers<'t, 'a>(std::slice::Iter<'t, (Cow<'a, str>, RawValue<'a>)>);

impl<'t, 'a> Iterator for RawMembers<'t, 'a> {
    type Item = (Text<'t>, &'t RawValue<'a>);
    fn next(&mut self) -> Option<Self::Item> {
        self.0.next().map(|(k, v)| (Text::new(k.as_ref()), v))
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        self.0.size_hint()
    }
}

impl ExactSizeIterator for RawMembers<'_, '_> {}

impl<'t, 'a: 't> JsonRef<'t> for &'t RawValue<'a> {
    type Items = std::slice::Iter<'t, RawValue<'a>>;
    type Members = RawMembers<'t, 'a>;

    fn node(self) -> Node<'t, Self> {
        match self {
            RawValue::Null => Node::Null,
            RawValue::Bool(b) => Node::Bool(*b),
            RawValue::Int(i) => Node::Int(*i),
            RawValue::UInt(u) => Node::UInt(*u),
            RawValue::Float(f) => Node::Float(*f),
            RawValue::Str(s) => Node::Str(Text::new(s.as_ref())),
            RawValue::Array(items) => Node::Array(items.iter()),
            RawValue::Object(members) => Node::Object(RawMembers(members.iter())),
        }
    }
}
