//! A key's application metadata: [`Metadata`], a bounded JSON object, and
//! [`MetadataError`], the error of one that does not fit.
//!
//! Metadata is the application's own data about a key (a CI system's
//! pipeline id, a ticket number, who asked for it): keyward stores it,
//! returns it in views ([`KeyView::metadata`](crate::key::KeyView::metadata))
//! and on checks ([`CompiledKey::metadata`](crate::verify::CompiledKey::metadata)),
//! and never reads it. It is shown to whoever can list the key: never put
//! a secret in it.
//!
//! Like [`ids`](crate::ids), this module imports nothing from the rest of
//! the crate.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};
use thiserror::Error;

/// Why a value is not acceptable metadata. The field is always `metadata`
/// ([`MetadataError::FIELD`]); the message names it.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum MetadataError {
    /// The text is not JSON. `line` and `column` say where parsing stopped.
    #[error("metadata is not JSON (line {line}, column {column})")]
    NotJson {
        /// The line (1-based) where parsing stopped.
        line: usize,
        /// The column (1-based) where parsing stopped.
        column: usize,
    },
    /// The JSON is not an object (`{...}`).
    #[error("metadata must be a JSON object, not {found}")]
    NotObject {
        /// What it is: `null`, `a boolean`, `a number`, `a string`, `an array`.
        found: &'static str,
    },
    /// The serialized object is larger than [`Metadata::MAX_BYTES`].
    #[error("metadata is {len} bytes as JSON or more, the maximum is {max}")]
    TooLarge {
        /// Its size in bytes (at least this; counting stops past the bound).
        len: usize,
        /// The maximum.
        max: usize,
    },
    /// Objects and arrays are nested deeper than [`Metadata::MAX_DEPTH`].
    #[error("metadata is nested deeper than {max} levels")]
    TooDeep {
        /// The maximum depth (the top-level object is depth 1).
        max: usize,
    },
}

impl MetadataError {
    /// The field these errors are about.
    pub const FIELD: &'static str = "metadata";

    /// The field these errors are about: `"metadata"`.
    pub fn field(&self) -> &'static str {
        Self::FIELD
    }
}

/// A key's metadata: a JSON object of at most [`Metadata::MAX_BYTES`]
/// bytes (serialized compactly) nested at most [`Metadata::MAX_DEPTH`]
/// levels deep. The default is the empty object.
///
/// Cheap to clone (the object is behind an [`Arc`]; the empty object
/// allocates nothing), so a cached key carries it for one pointer.
/// `Serialize` writes the object; `Deserialize` checks it as
/// [`Metadata::from_value`] does.
///
/// ```
/// use keyward::metadata::{Metadata, MetadataError};
/// let m = Metadata::parse(r#"{"pipeline": "release", "ticket": 4211}"#).unwrap();
/// assert_eq!(m.get("ticket"), Some(&serde_json::json!(4211)));
/// assert!(matches!(Metadata::parse("not json"), Err(MetadataError::NotJson { .. })));
/// assert!(matches!(Metadata::parse("[1, 2]"), Err(MetadataError::NotObject { .. })));
/// let big = format!(r#"{{"x": "{}"}}"#, "a".repeat(Metadata::MAX_BYTES));
/// assert!(matches!(Metadata::parse(&big), Err(MetadataError::TooLarge { .. })));
/// assert!(Metadata::default().is_empty());
/// ```
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Metadata(Option<Arc<Map<String, Value>>>);

impl Metadata {
    /// Largest metadata, in bytes of compact JSON.
    pub const MAX_BYTES: usize = 4096;
    /// Deepest nesting of objects and arrays (the top-level object is 1).
    pub const MAX_DEPTH: usize = 8;

    /// The empty object.
    pub const EMPTY: Metadata = Metadata(None);

    /// Checks and wraps a JSON value.
    ///
    /// # Errors
    ///
    /// [`MetadataError::NotObject`] unless `value` is an object;
    /// [`MetadataError::TooDeep`] past [`Metadata::MAX_DEPTH`];
    /// [`MetadataError::TooLarge`] past [`Metadata::MAX_BYTES`].
    pub fn from_value(value: Value) -> Result<Self, MetadataError> {
        let map = match value {
            Value::Object(map) => map,
            other => {
                return Err(MetadataError::NotObject {
                    found: kind_of(&other),
                });
            }
        };
        if depth_exceeds(&map, Self::MAX_DEPTH) {
            return Err(MetadataError::TooDeep {
                max: Self::MAX_DEPTH,
            });
        }
        let mut counter = BoundedCounter {
            len: 0,
            max: Self::MAX_BYTES,
        };
        // Writing stops with an error at the bound, so a huge value is
        // never serialized whole.
        if serde_json::to_writer(&mut counter, &map).is_err() || counter.len > Self::MAX_BYTES {
            return Err(MetadataError::TooLarge {
                len: counter.len,
                max: Self::MAX_BYTES,
            });
        }
        Ok(if map.is_empty() {
            Self(None)
        } else {
            Self(Some(Arc::new(map)))
        })
    }

    /// Parses and checks JSON text.
    ///
    /// # Errors
    ///
    /// [`MetadataError::TooLarge`] for text longer than 4 times
    /// [`Metadata::MAX_BYTES`] (before parsing: whitespace may shrink, but
    /// not that much); [`MetadataError::NotJson`] for text that does not
    /// parse (nested past serde_json's own limit included); then as
    /// [`Metadata::from_value`].
    pub fn parse(text: &str) -> Result<Self, MetadataError> {
        if text.len() > 4 * Self::MAX_BYTES {
            return Err(MetadataError::TooLarge {
                len: text.len(),
                max: Self::MAX_BYTES,
            });
        }
        let value: Value = serde_json::from_str(text).map_err(|e| MetadataError::NotJson {
            line: e.line(),
            column: e.column(),
        })?;
        Self::from_value(value)
    }

    /// The object (empty for the default).
    pub fn as_map(&self) -> &Map<String, Value> {
        static EMPTY: std::sync::OnceLock<Map<String, Value>> = std::sync::OnceLock::new();
        match &self.0 {
            Some(map) => map,
            None => EMPTY.get_or_init(Map::new),
        }
    }

    /// The value of one member.
    pub fn get(&self, member: &str) -> Option<&Value> {
        self.0.as_ref().and_then(|m| m.get(member))
    }

    /// Whether the object is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_none()
    }

    /// The object as a JSON value (a copy).
    pub fn to_value(&self) -> Value {
        Value::Object(self.as_map().clone())
    }

    /// The compact JSON text (`{}` when empty).
    pub fn to_json(&self) -> String {
        // Serializing a map of JSON values cannot fail.
        serde_json::to_string(self.as_map()).unwrap_or_else(|_| "{}".to_owned())
    }
}

impl fmt::Debug for Metadata {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_map(), f)
    }
}

impl TryFrom<Value> for Metadata {
    type Error = MetadataError;
    fn try_from(value: Value) -> Result<Self, MetadataError> {
        Self::from_value(value)
    }
}

impl std::str::FromStr for Metadata {
    type Err = MetadataError;
    fn from_str(s: &str) -> Result<Self, MetadataError> {
        Self::parse(s)
    }
}

impl Serialize for Metadata {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.as_map().serialize(s)
    }
}

impl<'de> Deserialize<'de> for Metadata {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(d)?;
        Self::from_value(value).map_err(serde::de::Error::custom)
    }
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Whether objects and arrays nest deeper than `max`, the top-level object
/// being depth 1. Iterative, so no input can exhaust the stack.
fn depth_exceeds(root: &Map<String, Value>, max: usize) -> bool {
    let mut stack: Vec<(&Value, usize)> = root.values().map(|v| (v, 2)).collect();
    while let Some((v, depth)) = stack.pop() {
        let children: Box<dyn Iterator<Item = &Value>> = match v {
            Value::Object(m) => Box::new(m.values()),
            Value::Array(a) => Box::new(a.iter()),
            _ => continue,
        };
        if depth > max {
            return true;
        }
        stack.extend(children.map(|child| (child, depth + 1)));
    }
    false
}

/// A writer that counts bytes and fails once past `max`.
struct BoundedCounter {
    len: usize,
    max: usize,
}

impl std::io::Write for BoundedCounter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.len = self.len.saturating_add(buf.len());
        if self.len > self.max {
            return Err(std::io::Error::other("metadata too large"));
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn objects_within_bounds_pass() {
        let m = Metadata::from_value(json!({"a": 1, "b": {"c": [1, 2, {"d": null}]}})).unwrap();
        assert_eq!(m.get("a"), Some(&json!(1)));
        assert_eq!(Metadata::parse(&m.to_json()).unwrap(), m);
        assert_eq!(Metadata::from_value(json!({})).unwrap(), Metadata::EMPTY);
        assert_eq!(Metadata::EMPTY.to_json(), "{}");
    }

    #[test]
    fn non_objects_name_what_they_are() {
        for (v, found) in [
            (json!(null), "null"),
            (json!(true), "a boolean"),
            (json!(3), "a number"),
            (json!("x"), "a string"),
            (json!([1]), "an array"),
        ] {
            let e = Metadata::from_value(v).unwrap_err();
            assert_eq!(e, MetadataError::NotObject { found });
            assert!(e.to_string().contains("metadata"));
        }
    }

    #[test]
    fn size_bound_is_exact() {
        // {"x":"…"} is 8 bytes plus the string.
        let fits = json!({ "x": "a".repeat(Metadata::MAX_BYTES - 8) });
        assert!(Metadata::from_value(fits).is_ok());
        let over = json!({ "x": "a".repeat(Metadata::MAX_BYTES - 7) });
        assert!(matches!(
            Metadata::from_value(over),
            Err(MetadataError::TooLarge { max: 4096, .. })
        ));
        // A megabyte is refused before parsing.
        let mb = format!(r#"{{"x":"{}"}}"#, "a".repeat(1 << 20));
        assert!(matches!(
            Metadata::parse(&mb),
            Err(MetadataError::TooLarge { .. })
        ));
    }

    #[test]
    fn depth_bound_is_exact() {
        let mut v = json!(1);
        for _ in 0..Metadata::MAX_DEPTH {
            v = json!({ "n": v });
        }
        assert!(Metadata::from_value(v.clone()).is_ok());
        let deeper = json!({ "n": v });
        assert_eq!(
            Metadata::from_value(deeper),
            Err(MetadataError::TooDeep { max: 8 })
        );
        let arrays = format!("{{\"a\":{}1{}}}", "[".repeat(8), "]".repeat(8));
        assert!(matches!(
            Metadata::parse(&arrays),
            Err(MetadataError::TooDeep { .. })
        ));
    }

    #[test]
    fn not_json_says_where() {
        let e = Metadata::parse("{\"a\": }").unwrap_err();
        assert!(matches!(e, MetadataError::NotJson { line: 1, .. }));
        assert_eq!(e.field(), "metadata");
        // Deeper than serde_json's recursion limit: an error, not a crash.
        let deep = "[".repeat(4000);
        assert!(Metadata::parse(&deep).is_err());
    }

    #[test]
    fn serde_checks_on_the_way_in() {
        let m: Metadata = serde_json::from_str(r#"{"k": "v"}"#).unwrap();
        assert_eq!(serde_json::to_string(&m).unwrap(), r#"{"k":"v"}"#);
        assert!(serde_json::from_str::<Metadata>("[1]").is_err());
    }
}
