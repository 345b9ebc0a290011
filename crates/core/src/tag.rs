//! bentoml's naming rules for models and bentos (`bentoml/_internal/tag.py`).
//!
//! A tag is `name[:version]`; each part must match
//! `^[a-z0-9]([-._a-z0-9]*[a-z0-9])?$` and be at most 63 characters. The
//! server is stricter than the client about case: the client lowercases with
//! a warning before it ever sends a tag, so an uppercase tag on the wire is a
//! bug in whatever sent it and is refused.

use std::fmt;

/// The longest a name or a version may be.
pub const MAX_PART_LEN: usize = 63;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TagError {
    #[error("{what} must not be empty")]
    Empty { what: &'static str },
    #[error("{what} {value:?} is {len} characters long; the limit is {MAX_PART_LEN}")]
    TooLong { what: &'static str, value: String, len: usize },
    #[error(
        "{what} {value:?} is not valid: use lowercase letters, digits, '-', '_' and '.', \
         starting and ending with a letter or digit"
    )]
    Invalid { what: &'static str, value: String },
    #[error("tag {0:?} has an empty version after ':'")]
    TrailingColon(String),
    #[error("{what} \"latest\" is reserved: it names the newest version; choose another version")]
    Reserved { what: &'static str },
}

/// The version name that means "the newest version" in lookups.
pub const LATEST: &str = "latest";

/// Checks the version of something about to be created: the name rule, and
/// not [`LATEST`], which a stored version would shadow (lookups of `latest`
/// would then find it instead of the newest one). Lookups use
/// [`validate_name_part`], where `latest` is the alias.
pub fn validate_new_version(what: &'static str, value: &str) -> Result<(), TagError> {
    validate_name_part(what, value)?;
    if value == LATEST {
        return Err(TagError::Reserved { what });
    }
    Ok(())
}

/// Checks one part of a tag (a name or a version). `what` names the part in
/// the error message, e.g. "model name".
pub fn validate_name_part(what: &'static str, value: &str) -> Result<(), TagError> {
    if value.is_empty() {
        return Err(TagError::Empty { what });
    }
    let len = value.chars().count();
    if len > MAX_PART_LEN {
        return Err(TagError::TooLong { what, value: truncate_for_message(value), len });
    }
    let bytes = value.as_bytes();
    let edge_ok = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let inner_ok = |b: u8| edge_ok(b) || matches!(b, b'-' | b'.' | b'_');
    let first = bytes[0];
    let last = bytes[bytes.len() - 1];
    if !edge_ok(first) || !edge_ok(last) || !bytes.iter().all(|&b| inner_ok(b)) {
        return Err(TagError::Invalid { what, value: truncate_for_message(value) });
    }
    Ok(())
}

fn truncate_for_message(value: &str) -> String {
    // Error messages echo the input; keep them readable when the input is huge.
    value.chars().take(80).collect()
}

/// A parsed `name[:version]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tag {
    pub name: String,
    pub version: Option<String>,
}

impl Tag {
    /// Parses and validates a tag string, splitting at the first `:` as
    /// bentoml does.
    pub fn parse(s: &str) -> Result<Self, TagError> {
        match s.split_once(':') {
            None => {
                validate_name_part("name", s)?;
                Ok(Tag { name: s.to_owned(), version: None })
            }
            Some((_, "")) => Err(TagError::TrailingColon(truncate_for_message(s))),
            Some((name, version)) => {
                validate_name_part("name", name)?;
                validate_name_part("version", version)?;
                Ok(Tag { name: name.to_owned(), version: Some(version.to_owned()) })
            }
        }
    }
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.version {
            Some(v) => write!(f, "{}:{}", self.name, v),
            None => f.write_str(&self.name),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_what_bentoml_generates() {
        for ok in ["iris_clf", "qnpcf5hih6aiaax4", "a", "0", "my-model.v2", "a_b-c.d", &"x".repeat(63)] {
            validate_name_part("name", ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
    }

    #[test]
    fn refuses_what_bentoml_refuses() {
        for bad in ["", "-a", "a-", ".a", "a.", "_a", "A", "iris CLF", "a/b", "a:b", "../x", "é", "a\u{0}"] {
            assert!(validate_name_part("name", bad).is_err(), "{bad:?} was accepted");
        }
        let long = "x".repeat(64);
        assert!(matches!(validate_name_part("name", &long), Err(TagError::TooLong { len: 64, .. })));
    }

    #[test]
    fn parses_tags_at_the_first_colon() {
        assert_eq!(Tag::parse("iris:v1").unwrap(), Tag { name: "iris".into(), version: Some("v1".into()) });
        assert_eq!(Tag::parse("iris").unwrap().version, None);
        assert_eq!(Tag::parse("iris:v1").unwrap().to_string(), "iris:v1");
        assert!(matches!(Tag::parse("iris:"), Err(TagError::TrailingColon(_))));
        // A second colon lands in the version, which then fails validation.
        assert!(Tag::parse("iris:v1:x").is_err());
    }

    #[test]
    fn latest_is_reserved_for_new_versions() {
        let e = validate_new_version("bento version", "latest").unwrap_err();
        assert_eq!(e, TagError::Reserved { what: "bento version" });
        assert!(e.to_string().contains("reserved"), "{e}");
        // Uppercase fails the name rule already; near misses are fine.
        assert!(validate_new_version("version", "LATEST").is_err());
        validate_new_version("version", "latest2").unwrap();
        validate_name_part("version", "latest").unwrap();
    }

    #[test]
    fn error_messages_say_what_to_do() {
        let msg = validate_name_part("model name", "Iris").unwrap_err().to_string();
        assert!(msg.contains("lowercase"), "{msg}");
        assert!(msg.contains("model name"), "{msg}");
    }
}

/// Property tests: tags come from clients and name directories and blobs, so whatever string
/// arrives, parsing must not panic, and what it accepts must be a safe, canonical tag.
#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    /// A valid name or version, as bentoml's regex describes it.
    const PART: &str = "[a-z0-9]([-._a-z0-9]{0,61}[a-z0-9])?";

    fn config() -> ProptestConfig {
        ProptestConfig { cases: 2048, failure_persistence: None, ..ProptestConfig::default() }
    }

    /// Strings close to tags: the tag alphabet with uppercase, separators, dots, whitespace,
    /// NUL and non-ASCII mixed in, long enough to cross the length limit.
    fn near_tag() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<String>(),
            "[a-zA-Z0-9._:/ \t\n\u{0}é\u{2028}İ-]{0,140}",
            (PART, PART, "[:/. A-Z\u{0}]{0,3}").prop_map(|(a, b, sep)| format!("{a}{sep}{b}")),
        ]
    }

    /// What every accepted name or version is: a single safe path component in bentoml's
    /// alphabet, within the limit.
    fn assert_safe_part(part: &str) {
        assert!(!part.is_empty() && part.chars().count() <= MAX_PART_LEN, "{part:?}");
        assert!(part != "." && part != "..", "{part:?}");
        assert!(
            part.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'.' | b'_')),
            "{part:?}"
        );
        let (first, last) = (part.as_bytes()[0], part.as_bytes()[part.len() - 1]);
        assert!(first.is_ascii_alphanumeric() && last.is_ascii_alphanumeric(), "{part:?}");
    }

    proptest! {
        #![proptest_config(config())]

        #[test]
        fn whatever_parses_is_safe_and_round_trips(s in near_tag()) {
            if let Ok(tag) = Tag::parse(&s) {
                assert_safe_part(&tag.name);
                if let Some(v) = &tag.version {
                    assert_safe_part(v);
                }
                // Canonical: the text is exactly what was parsed, and parses back to the tag.
                prop_assert_eq!(tag.to_string(), s.clone());
                prop_assert_eq!(Tag::parse(&tag.to_string()), Ok(tag));
            }
        }

        #[test]
        fn the_server_refuses_what_the_client_would_lowercase(s in near_tag()) {
            // The client lowercases before sending; an uppercase letter on the wire is refused.
            if s.bytes().any(|b| b.is_ascii_uppercase()) {
                prop_assert!(Tag::parse(&s).is_err(), "{:?} was accepted", s);
            }
            if s.bytes().any(|b| b == b'/' || b == 0 || b.is_ascii_whitespace()) || !s.is_ascii() {
                prop_assert!(Tag::parse(&s).is_err(), "{:?} was accepted", s);
            }
        }

        #[test]
        fn every_valid_tag_is_accepted(name in PART, version in proptest::option::of(PART)) {
            let text = match &version {
                Some(v) => format!("{name}:{v}"),
                None => name.clone(),
            };
            prop_assert_eq!(Tag::parse(&text), Ok(Tag { name, version: version.clone() }));
            if let Some(v) = version {
                prop_assert_eq!(validate_new_version("version", &v).is_ok(), v != LATEST);
            }
        }

        #[test]
        fn parts_over_the_limit_are_refused_by_length(part in "[a-z0-9]{64,200}") {
            let len = part.chars().count();
            let refused = validate_name_part("name", &part);
            prop_assert!(matches!(refused, Err(TagError::TooLong { len: l, .. }) if l == len), "{:?}", refused);
            let tag = format!("ok:{part}");
            prop_assert!(Tag::parse(&tag).is_err());
        }

        #[test]
        fn only_the_first_colon_splits(a in PART, b in PART, c in PART) {
            // bentoml splits at the first ':'; the rest is the version, which cannot hold one.
            let (two_colons, trailing, no_name) = (format!("{a}:{b}:{c}"), format!("{a}:"), format!(":{b}"));
            prop_assert!(Tag::parse(&two_colons).is_err());
            prop_assert_eq!(Tag::parse(&trailing), Err(TagError::TrailingColon(trailing.clone())));
            prop_assert_eq!(Tag::parse(&no_name), Err(TagError::Empty { what: "name" }));
        }

        #[test]
        fn error_messages_stay_short(s in "\\PC{100,3000}") {
            // Messages echo the input, truncated; a megabyte tag must not make a megabyte reply.
            if let Err(e) = Tag::parse(&s) {
                prop_assert!(e.to_string().chars().count() < 400, "{}", e);
            }
        }
    }
}
