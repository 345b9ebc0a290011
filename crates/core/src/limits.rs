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

/// Property tests: the checks take client values of any shape.
#[cfg(test)]
mod properties {
    use super::*;
    use crate::manifest::properties::json_value;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn a_manifest_is_refused_exactly_when_its_text_is_over_the_limit(
            len in prop_oneof![0..64usize, MAX_MANIFEST - 4..MAX_MANIFEST + 4],
            fill in "[a-zé\u{0}]",
        ) {
            // The limit is on bytes: a multi-byte character counts for its bytes.
            let text: String = fill.repeat(len.div_ceil(fill.len()));
            let result = check_manifest(&text);
            prop_assert_eq!(result.is_ok(), text.len() <= MAX_MANIFEST);
            if let Err(e) = result {
                prop_assert_eq!((e.len, e.limit), (text.len(), MAX_MANIFEST));
                prop_assert!(e.to_string().contains("manifest"));
            }
        }

        #[test]
        fn any_json_manifest_is_measured_without_panicking(manifest in json_value()) {
            let text = serde_json::to_string(&manifest).unwrap();
            prop_assert_eq!(check_manifest(&text).is_ok(), text.len() <= MAX_MANIFEST);
            let size = manifest.get("size_bytes").cloned().unwrap_or(serde_json::Value::Null);
            match check_size_bytes(&size) {
                Ok(n) => {
                    prop_assert!((0..=MAX_SIZE_BYTES).contains(&n));
                    prop_assert_eq!(size.as_i64(), Some(n));
                }
                Err(e) => prop_assert!(!size.as_i64().is_some_and(|n| (0..=MAX_SIZE_BYTES).contains(&n)), "{}", e),
            }
        }

        #[test]
        fn size_bytes_accepts_exactly_the_whole_numbers_in_range(n in prop_oneof![
            any::<i64>(), -2..3i64, MAX_SIZE_BYTES - 2..MAX_SIZE_BYTES + 3,
        ]) {
            prop_assert_eq!(check_size_bytes(&serde_json::json!(n)).is_ok(), (0..=MAX_SIZE_BYTES).contains(&n));
            prop_assert!(check_size_bytes(&serde_json::json!(n as f64 + 0.5)).is_err());
        }

        #[test]
        fn labels_within_every_limit_are_accepted_and_no_others(
            labels in prop::collection::vec(
                (prop_oneof![0..4usize, MAX_LABEL_KEY - 1..MAX_LABEL_KEY + 2],
                 prop_oneof![0..4usize, MAX_LABEL_VALUE - 1..MAX_LABEL_VALUE + 2]),
                0..MAX_LABELS + 3,
            )
        ) {
            let owned: Vec<(String, String)> = labels.iter().map(|(k, v)| ("k".repeat(*k), "v".repeat(*v))).collect();
            let ok = labels.len() <= MAX_LABELS
                && labels.iter().all(|(k, v)| (1..=MAX_LABEL_KEY).contains(k) && *v <= MAX_LABEL_VALUE);
            let result = check_labels(owned.iter().map(|(k, v)| (k.as_str(), v.as_str())));
            prop_assert_eq!(result.is_ok(), ok, "{:?}", result);
        }
    }
}
