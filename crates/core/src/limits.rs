//! Size limits on what clients may store, in one place (the README's
//! "Limits" table lists them). Every stored field has a cap so that one
//! version, and therefore one page of a list, has a known worst-case size:
//! without them a single request could store a 30 MiB description and a list
//! of ten such versions grew the server by gigabytes.
//!
//! The caps are far above what the bentoml client produces: a bento manifest
//! is a few KiB even with many APIs and their JSON schemas, a model manifest
//! less than one.

use std::fmt;

/// A description (repository, version, token, deployment), in bytes.
pub const MAX_DESCRIPTION: usize = 64 * 1024;
/// A manifest (`model.yaml` / `bento.yaml` as JSON), serialised, in bytes.
pub const MAX_MANIFEST: usize = 1024 * 1024;
/// Labels on one object.
pub const MAX_LABELS: usize = 64;
/// A label key, in bytes.
pub const MAX_LABEL_KEY: usize = 256;
/// A label value, in bytes.
pub const MAX_LABEL_VALUE: usize = 4096;
/// A token name, in characters (after trimming spaces).
pub const MAX_TOKEN_NAME: usize = 128;
/// `size_bytes` in a manifest: 1 PiB, far past any real model, and well
/// inside an `i64`.
pub const MAX_SIZE_BYTES: i64 = 1 << 50;
/// The default request body limit for JSON routes (`--max-json-body`): a
/// maximal manifest, description and labels fit with room to spare.
pub const DEFAULT_MAX_JSON_BODY: usize = 2 * 1024 * 1024;
/// Most items in one page of a list.
pub const MAX_PAGE: i64 = 1000;
/// Bytes of stored text (manifests, descriptions, labels) one list response
/// may carry; a page stops early once it is reached, and `count` says how
/// many items it holds (the client pages on with `start`).
pub const LIST_BUDGET: usize = 16 * 1024 * 1024;

/// A field over its limit; the message names the field and the limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TooLong {
    pub field: String,
    pub len: usize,
    pub limit: usize,
    pub unit: &'static str,
}

impl fmt::Display for TooLong {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} is {} {}; the limit is {} {}", self.field, self.len, self.unit, self.limit, self.unit)
    }
}

impl std::error::Error for TooLong {}

/// Checks a length in bytes against a limit.
pub fn check_len(field: impl Into<String>, len: usize, limit: usize) -> Result<(), TooLong> {
    if len > limit { Err(TooLong { field: field.into(), len, limit, unit: "bytes" }) } else { Ok(()) }
}

pub fn check_description(field: &str, text: &str) -> Result<(), TooLong> {
    check_len(field, text.len(), MAX_DESCRIPTION)
}

pub fn check_manifest(serialised: &str) -> Result<(), TooLong> {
    check_len("manifest", serialised.len(), MAX_MANIFEST)
}

/// Checks a list of `(key, value)` labels: how many, and how long each part.
pub fn check_labels<'a>(labels: impl ExactSizeIterator<Item = (&'a str, &'a str)>) -> Result<(), String> {
    if labels.len() > MAX_LABELS {
        return Err(format!("{} labels were given; the limit is {MAX_LABELS}", labels.len()));
    }
    for (key, value) in labels {
        if key.is_empty() || key.len() > MAX_LABEL_KEY {
            return Err(format!("a label key must be 1 to {MAX_LABEL_KEY} bytes (got {})", key.len()));
        }
        if value.len() > MAX_LABEL_VALUE {
            let key: String = key.chars().take(80).collect();
            return Err(format!(
                "the value of label {key:?} is {} bytes; the limit is {MAX_LABEL_VALUE} bytes",
                value.len()
            ));
        }
    }
    Ok(())
}

/// Checks a manifest's `size_bytes`: a whole number from 0 to
/// [`MAX_SIZE_BYTES`].
pub fn check_size_bytes(value: &serde_json::Value) -> Result<i64, String> {
    match value.as_i64() {
        Some(n) if (0..=MAX_SIZE_BYTES).contains(&n) => Ok(n),
        _ => {
            Err(format!("the manifest's \"size_bytes\" must be a whole number from 0 to {MAX_SIZE_BYTES}, got {value}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_maximal_version_fits_the_json_body_limit() {
        let labels = MAX_LABELS * (MAX_LABEL_KEY + MAX_LABEL_VALUE + 32);
        assert!(MAX_MANIFEST + MAX_DESCRIPTION + labels < DEFAULT_MAX_JSON_BODY);
    }

    #[test]
    fn messages_name_the_field_and_the_limit() {
        let e = check_description("description", &"x".repeat(MAX_DESCRIPTION + 1)).unwrap_err().to_string();
        assert!(e.contains("description") && e.contains(&MAX_DESCRIPTION.to_string()), "{e}");
        check_description("description", &"x".repeat(MAX_DESCRIPTION)).unwrap();
    }

    #[test]
    fn labels_are_counted_and_measured() {
        let many: Vec<(String, String)> = (0..=MAX_LABELS).map(|i| (format!("k{i}"), String::new())).collect();
        let e = check_labels(many.iter().map(|(k, v)| (k.as_str(), v.as_str()))).unwrap_err();
        assert!(e.contains("65 labels") && e.contains("64"), "{e}");
        assert!(check_labels([("", "v")].into_iter()).is_err());
        let long = "v".repeat(MAX_LABEL_VALUE + 1);
        assert!(check_labels([("k", long.as_str())].into_iter()).unwrap_err().contains("\"k\""));
        check_labels([("k", "v")].into_iter()).unwrap();
    }

    #[test]
    fn size_bytes_is_bounded() {
        assert_eq!(check_size_bytes(&json!(0)), Ok(0));
        assert_eq!(check_size_bytes(&json!(MAX_SIZE_BYTES)), Ok(MAX_SIZE_BYTES));
        for bad in [json!(-1), json!(u64::MAX), json!(MAX_SIZE_BYTES + 1), json!(1.5), json!("1"), json!(null)] {
            assert!(check_size_bytes(&bad).is_err(), "{bad} was accepted");
        }
    }
}
