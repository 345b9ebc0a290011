//! Secret build environment: variables a build needs but no image may keep (a private package
//! index's token in `UV_INDEX_URL=https://user:token@host/simple`, …).
//!
//! They reach `uv pip compile`, `uv pip install` and the sandboxed `RUN` steps as environment
//! only. No cache key holds a value (only the sorted names), nor the image config's `Env`, nor
//! a layer's files, nor a layer's `created_by`. Progress lines and errors that quote a value
//! (uv echoing an index URL) have it replaced by `****` ([`SecretEnvs::redact`]).
//!
//! uv reads `UV_INDEX_URL` / `UV_EXTRA_INDEX_URL` and ignores pip's `PIP_INDEX_URL` /
//! `PIP_EXTRA_INDEX_URL`: those are given to uv under its own names too, unless the `UV_`
//! ones are set ([`yatai_core::secret::install_env`]).

use std::fmt;

use crate::progress::{Event, Progress};

/// Secret environment variables of a build. `Debug` shows the names only.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SecretEnvs(Vec<(String, String)>);

impl fmt::Debug for SecretEnvs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("SecretEnvs").field(&self.names()).finish()
    }
}

impl SecretEnvs {
    /// The variables in order; a later one replaces an earlier one of the same name.
    pub fn new<K: Into<String>, V: Into<String>>(pairs: impl IntoIterator<Item = (K, V)>) -> Self {
        let mut out: Vec<(String, String)> = Vec::new();
        for (k, v) in pairs {
            let (k, v) = (k.into(), v.into());
            out.retain(|(old, _)| *old != k);
            out.push((k, v));
        }
        SecretEnvs(out)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The names, sorted: what a cache key may hold of them.
    pub fn names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.0.iter().map(|(k, _)| k.as_str()).collect();
        names.sort_unstable();
        names
    }

    /// For a cache key: the sorted names, no value.
    pub fn key(&self) -> String {
        self.names().join(",")
    }

    /// The variables as given (for `RUN` steps).
    pub fn vars(&self) -> &[(String, String)] {
        &self.0
    }

    /// The variables for uv: pip's index variables under uv's names too.
    pub fn for_uv(&self) -> Vec<(String, String)> {
        yatai_core::secret::install_env(&self.0, true)
    }

    /// `text` with every value (≥ 4 characters) replaced by `****`.
    pub fn redact(&self, text: &str) -> String {
        if self.0.is_empty() {
            return text.to_owned();
        }
        yatai_core::secret::redact(text, self.0.iter().map(|(_, v)| v.as_str()))
    }

    /// `err` itself, or, when its text quotes a value, an error of the redacted text that
    /// keeps its [`crate::FailureKind`].
    pub fn redact_error(&self, err: anyhow::Error) -> anyhow::Error {
        let text = format!("{err:#}");
        let redacted = self.redact(&text);
        if redacted == text {
            return err;
        }
        Redacted { kind: crate::builder::failure_kind(&err), text: redacted }.into()
    }
}

/// The variables that make uv (or pip, whose names uv is given too) look at another index.
const INDEX_VARS: &[&str] = &[
    "UV_INDEX_URL",
    "UV_EXTRA_INDEX_URL",
    "UV_INDEX",
    "UV_DEFAULT_INDEX",
    "UV_FIND_LINKS",
    "PIP_INDEX_URL",
    "PIP_EXTRA_INDEX_URL",
    "PIP_FIND_LINKS",
];

/// Whether `envs` name a package index (or a find-links location) of their own.
pub fn names_an_index<'a>(envs: impl IntoIterator<Item = &'a (String, String)>) -> bool {
    envs.into_iter().any(|(k, v)| INDEX_VARS.contains(&k.as_str()) && !v.trim().is_empty())
}

/// An error whose text quoted a secret value, with the value masked.
#[derive(Debug, thiserror::Error)]
#[error("{text}")]
pub struct Redacted {
    pub kind: crate::FailureKind,
    pub text: String,
}

/// A progress sink that masks secret values in what it forwards.
pub(crate) struct RedactingProgress<'a> {
    pub(crate) inner: &'a dyn Progress,
    pub(crate) secrets: &'a SecretEnvs,
}

impl Progress for RedactingProgress<'_> {
    fn event(&self, e: &Event) {
        match e {
            Event::Step(s) => self.inner.event(&Event::Step(self.secrets.redact(s))),
            other => self.inner.event(other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN_URL: &str = "https://user:tok-123456@pypi.example/simple";

    #[test]
    fn debug_and_keys_show_names_only() {
        let s = SecretEnvs::new([("UV_INDEX_URL", TOKEN_URL), ("A_TOKEN", "abcdef"), ("A_TOKEN", "ghijkl")]);
        let debug = format!("{s:?}");
        assert_eq!(debug, r#"SecretEnvs(["A_TOKEN", "UV_INDEX_URL"])"#);
        assert_eq!(s.key(), "A_TOKEN,UV_INDEX_URL");
        assert_eq!(s.vars().iter().filter(|(k, _)| k == "A_TOKEN").count(), 1, "the later one replaces");
        assert_eq!(s.vars()[1], ("A_TOKEN".to_string(), "ghijkl".to_string()));
        let cfg = crate::BuildConfig { secret_envs: s, ..crate::BuildConfig::new("a:b", "r/x", "/tmp") };
        assert!(!format!("{cfg:?}").contains("tok-123456"));
    }

    #[test]
    fn index_variables_are_told_apart() {
        let e = |k: &str, v: &str| (k.to_string(), v.to_string());
        assert!(names_an_index(&[e("A", "1"), e("PIP_EXTRA_INDEX_URL", TOKEN_URL)]));
        assert!(names_an_index(&[e("UV_DEFAULT_INDEX", TOKEN_URL)]));
        assert!(!names_an_index(&[e("UV_INDEX_URL", " "), e("HF_TOKEN", "x")]));
    }

    #[test]
    fn pip_index_variables_are_given_to_uv() {
        let s = SecretEnvs::new([("PIP_EXTRA_INDEX_URL", TOKEN_URL)]);
        assert!(s.for_uv().contains(&("UV_EXTRA_INDEX_URL".to_string(), TOKEN_URL.to_string())));
        let s = SecretEnvs::new([("PIP_INDEX_URL", "x-pip"), ("UV_INDEX_URL", "x-uv")]);
        assert!(!s.for_uv().contains(&("UV_INDEX_URL".to_string(), "x-pip".to_string())));
    }

    #[test]
    fn progress_and_errors_are_redacted_and_keep_their_kind() {
        let s = SecretEnvs::new([("UV_INDEX_URL", TOKEN_URL)]);
        let seen = std::sync::Mutex::new(Vec::new());
        let sink = |e: &Event| seen.lock().unwrap().push(e.to_string());
        let p = RedactingProgress { inner: &sink, secrets: &s };
        p.event(&Event::Step(format!("error: failed to fetch {TOKEN_URL}/six/")));
        assert_eq!(seen.lock().unwrap()[0], "error: failed to fetch ****/six/");

        let err = anyhow::Error::new(crate::python::NoWheel {
            platform: "p".into(),
            python: "3.11".into(),
            detail: "at https://user:tok-123456@pypi.example/simple/x".into(),
        });
        let red = s.redact_error(err);
        assert!(!format!("{red:#}").contains("tok-123456"), "{red:#}");
        assert_eq!(crate::failure_kind(&red), crate::FailureKind::Unbuildable);
        let plain = s.redact_error(anyhow::anyhow!("nothing secret"));
        assert_eq!(plain.to_string(), "nothing secret");
    }
}
