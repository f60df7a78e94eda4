//! Case-insensitive JSON object access, the way Go's `encoding/json` matches
//! struct fields: flannel reads `"network"` and `"Network"` alike, and ignores
//! keys it does not know. weft reads every flannel document through this.

use serde::de::{DeserializeOwned, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

/// The members of one JSON object, looked up by name without regard to case.
#[derive(Debug)]
pub(crate) struct Fields<'a> {
    members: BTreeMap<String, &'a RawValue>,
}

/// Why a member could not be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FieldError {
    #[error("not a JSON object: {0}")]
    NotAnObject(serde_json::Error),
    #[error("{key}: {source}")]
    BadValue {
        key: String,
        #[source]
        source: serde_json::Error,
    },
}

impl<'a> Fields<'a> {
    /// Parses `text` as one JSON object. As in Go, keys may contain escapes,
    /// and of members whose names differ only in case the later one wins.
    pub(crate) fn parse(text: &'a str) -> Result<Self, FieldError> {
        let mut de = serde_json::Deserializer::from_str(text);
        let raw = de
            .deserialize_map(MembersVisitor)
            .and_then(|raw| de.end().map(|()| raw))
            .map_err(FieldError::NotAnObject)?;
        Ok(Self::from_members(raw))
    }

    /// Like [`Fields::parse`], for an object nested inside another document.
    pub(crate) fn from_raw(raw: &'a RawValue) -> Result<Self, FieldError> {
        Self::parse(raw.get())
    }

    fn from_members(raw: Vec<(Cow<'a, str>, &'a RawValue)>) -> Self {
        let members = raw
            .into_iter()
            .map(|(key, value)| (key.to_ascii_lowercase(), value))
            .collect();
        Self { members }
    }

    /// The raw member called `key` (any case), if present.
    pub(crate) fn raw(&self, key: &str) -> Option<&'a RawValue> {
        self.members.get(&key.to_ascii_lowercase()).copied()
    }

    /// The member called `key` decoded as `T`; `None` when absent or `null`.
    pub(crate) fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, FieldError> {
        match self.raw(key) {
            None => Ok(None),
            Some(raw) if raw.get() == "null" => Ok(None),
            Some(raw) => {
                serde_json::from_str(raw.get())
                    .map(Some)
                    .map_err(|source| FieldError::BadValue {
                        key: key.to_owned(),
                        source,
                    })
            }
        }
    }
}

/// Reads the members of a JSON object in document order, keys unescaped.
struct MembersVisitor;

impl<'de> Visitor<'de> for MembersVisitor {
    type Value = Vec<(Cow<'de, str>, &'de RawValue)>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut members = Vec::new();
        while let Some(member) = map.next_entry()? {
            members.push(member);
        }
        Ok(members)
    }
}

/// A JSON text as Go's `json.Marshal` writes a `json.RawMessage` (its
/// `appendCompact`, which is how flannel writes `BackendData`): whitespace
/// between tokens removed, `<`, `>`, `&`, U+2028 and U+2029 escaped as
/// `\u003c` etc., and everything else — number spellings, key order, duplicate
/// keys — kept as written. `text` must be valid JSON (a `RawValue`).
/// Compacting a compacted text changes nothing.
pub(crate) fn compact(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let (mut in_string, mut escaped) = (false, false);
    for c in text.chars() {
        if in_string {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
        } else if c == '"' {
            in_string = true;
        } else if matches!(c, ' ' | '\t' | '\n' | '\r') {
            continue;
        }
        match c {
            '<' => out.push_str("\\u003c"),
            '>' => out.push_str("\\u003e"),
            '&' => out.push_str("\\u0026"),
            '\u{2028}' => out.push_str("\\u2028"),
            '\u{2029}' => out.push_str("\\u2029"),
            _ => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compact_is_gos_raw_message_marshal() {
        // What Go's appendCompact (encoding/json, behind json.Marshal of a
        // RawMessage) writes for it, read off its source.
        let text = "{ \"b\" : [1.50, 1E2, -0],\n\t\"a\":\"x y<&>\\\" \u{2028}\", \"b\":null }";
        let want = r#"{"b":[1.50,1E2,-0],"a":"x y\u003c\u0026\u003e\" \u2028","b":null}"#;
        assert_eq!(compact(text), want);
        assert_eq!(compact(want), want);
        let value = |t: &str| serde_json::from_str::<serde_json::Value>(t).unwrap();
        assert_eq!(value(want), value(text));
    }

    #[test]
    fn keys_match_in_any_case_and_unknown_keys_are_ignored() {
        let text = r#"{"network":"10.0.0.0/8","SUBNETLEN":20,"Whatever":[1,2]}"#;
        let fields = Fields::parse(text).unwrap();
        assert_eq!(
            fields.get::<String>("Network").unwrap().as_deref(),
            Some("10.0.0.0/8")
        );
        assert_eq!(fields.get::<u32>("SubnetLen").unwrap(), Some(20));
        assert_eq!(fields.get::<u32>("SubnetMin").unwrap(), None);
    }

    #[test]
    fn escaped_keys_and_case_variants_are_read_as_go_reads_them() {
        // Found while writing the fuzz targets: keys were borrowed from the
        // text, so an escaped key refused the whole document ("expected a
        // borrowed string"), and of `publicip`/`PublicIP` the one sorting
        // last won instead of the one written last.
        let fields = Fields::parse(r#"{"Public\u0049P":"1.2.3.4"}"#).unwrap();
        assert_eq!(
            fields.get::<String>("PublicIP").unwrap().as_deref(),
            Some("1.2.3.4")
        );
        let fields = Fields::parse(r#"{"publicip":"1.1.1.1","PublicIP":"2.2.2.2"}"#).unwrap();
        assert_eq!(
            fields.get::<String>("PublicIP").unwrap().as_deref(),
            Some("2.2.2.2")
        );
        let fields = Fields::parse(r#"{"PublicIP":"2.2.2.2","publicip":"1.1.1.1"}"#).unwrap();
        assert_eq!(
            fields.get::<String>("publicIP").unwrap().as_deref(),
            Some("1.1.1.1")
        );
        assert!(Fields::parse(r#"{"a":1} x"#).is_err(), "trailing garbage");
    }

    #[test]
    fn wrong_type_names_the_key() {
        let fields = Fields::parse(r#"{"SubnetLen":"x"}"#).unwrap();
        let err = fields.get::<u32>("SubnetLen").unwrap_err().to_string();
        assert!(err.starts_with("SubnetLen: "), "{err}");
    }

    #[test]
    fn non_objects_are_refused() {
        assert!(Fields::parse("[1]").is_err());
        assert!(Fields::parse("").is_err());
    }
}
