//! Case-insensitive JSON object access, the way Go's `encoding/json` matches
//! struct fields: flannel reads `"network"` and `"Network"` alike, and ignores
//! keys it does not know. weft reads every flannel document through this.

use serde::de::DeserializeOwned;
use serde_json::value::RawValue;
use std::collections::BTreeMap;

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
    /// Parses `text` as one JSON object. Later duplicates win, as in Go.
    pub(crate) fn parse(text: &'a str) -> Result<Self, FieldError> {
        let raw: BTreeMap<&'a str, &'a RawValue> =
            serde_json::from_str(text).map_err(FieldError::NotAnObject)?;
        Ok(Self::from_members(raw))
    }

    /// Like [`Fields::parse`], for an object nested inside another document.
    pub(crate) fn from_raw(raw: &'a RawValue) -> Result<Self, FieldError> {
        Self::parse(raw.get())
    }

    fn from_members(raw: BTreeMap<&'a str, &'a RawValue>) -> Self {
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

#[cfg(test)]
mod tests {
    use super::*;

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
