//! Secrets: named sets of values an organization keeps for its deployments
//! (`bentoml secret …`), as environment variables or as files. This module
//! holds the rules (names, keys, paths, sizes) and the content a deploy
//! target receives; sealing and storage are the application's.
//!
//! A value is never printed: [`SecretItem`]'s `Debug` shows its key only,
//! so a spec or an error that carries one can be logged safely.

use serde::{Deserialize, Serialize};

use crate::text_enum::text_enum;

text_enum!(
    /// How a secret reaches a replica (the client's `content.type`).
    SecretType, "secret type" {
        /// Each item is an environment variable named by its key.
        Env = "env",
        /// Each item is a file under the secret's `path`, at its `sub_path` (else its key).
        MountFile = "mountfile",
    }
);

text_enum!(
    /// When a secret is available (the client's `content.stage`).
    SecretStage, "secret stage" {
        /// Only while the image is built.
        Build = "build",
        /// Only while the deployment runs (the client's default).
        Runtime = "runtime",
        All = "all",
    }
);

impl SecretStage {
    /// Whether running replicas receive the secret.
    pub fn at_runtime(self) -> bool {
        matches!(self, SecretStage::Runtime | SecretStage::All)
    }

    /// Whether the image build (or the local environment's install) receives the secret.
    pub fn at_build(self) -> bool {
        matches!(self, SecretStage::Build | SecretStage::All)
    }
}

/// The most bytes of values one secret may hold (keys and paths not counted).
pub const MAX_SECRET_BYTES: usize = 1 << 20;
/// The most items one secret may hold.
pub const MAX_SECRET_ITEMS: usize = 256;
/// A key or a sub_path, in bytes.
const MAX_KEY: usize = 253;
/// A mount path, in bytes.
const MAX_PATH: usize = 1024;
/// What a mount path starts with: the replica's `BENTOML_HOME`, the only
/// place the client allows ("The path must be under the ($BENTOML_HOME) directory").
pub const HOME_VAR: &str = "$BENTOML_HOME";

/// One value of a secret.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretItem {
    pub key: String,
    /// `mountfile`: the file's path below the secret's `path` (default: the key).
    #[serde(default)]
    pub sub_path: Option<String>,
    pub value: String,
}

impl std::fmt::Debug for SecretItem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretItem")
            .field("key", &self.key)
            .field("sub_path", &self.sub_path)
            .field("value", &"<secret>")
            .finish()
    }
}

/// A secret's checked content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretContent {
    pub kind: SecretType,
    pub stage: SecretStage,
    /// `mountfile`: the directory, `$BENTOML_HOME` or below it; `env`: none.
    pub path: Option<String>,
    pub items: Vec<SecretItem>,
}

/// A secret as a deploy target receives it: opened, for one deployment.
/// Every stage is given; [`DeploySecret::env`] and [`DeploySecret::files`]
/// are what replicas receive, [`DeploySecret::build_env`] what a build does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeploySecret {
    pub name: String,
    /// Changes whenever the values are replaced, and tells nothing about
    /// them (a digest of the sealed bytes, which take a fresh nonce on each
    /// seal): what a target marks its objects with, to roll them on a change.
    pub revision: String,
    pub content: SecretContent,
}

impl DeploySecret {
    /// The environment variables replicas receive from an `env` secret
    /// (stage `runtime` or `all`).
    pub fn env(&self) -> impl Iterator<Item = (&str, &str)> {
        let env = self.content.kind == SecretType::Env && self.content.stage.at_runtime();
        self.content.items.iter().filter(move |_| env).map(|i| (i.key.as_str(), i.value.as_str()))
    }

    /// The environment variables a build receives from an `env` secret
    /// (stage `build` or `all`): the installs and `RUN` steps see them; no
    /// layer, image config or cache key holds them.
    pub fn build_env(&self) -> impl Iterator<Item = (&str, &str)> {
        let env = self.content.kind == SecretType::Env && self.content.stage.at_build();
        self.content.items.iter().filter(move |_| env).map(|i| (i.key.as_str(), i.value.as_str()))
    }

    /// The files replicas receive from a `mountfile` secret (stage `runtime`
    /// or `all`): each path relative to the replica's `BENTOML_HOME`, with its content.
    pub fn files(&self) -> Vec<(String, &str)> {
        if self.content.kind != SecretType::MountFile || !self.content.stage.at_runtime() {
            return Vec::new();
        }
        let dir = self.content.path.as_deref().map(home_relative).unwrap_or_default();
        self.content
            .items
            .iter()
            .map(|i| {
                let name = i.sub_path.as_deref().unwrap_or(&i.key);
                let path = if dir.is_empty() { name.to_owned() } else { format!("{dir}/{name}") };
                (path, i.value.as_str())
            })
            .collect()
    }
}

/// A mount path without its `$BENTOML_HOME` prefix and slashes (`""`: the home itself).
fn home_relative(path: &str) -> String {
    path.strip_prefix(HOME_VAR).unwrap_or(path).trim_matches('/').to_owned()
}

/// Secret names become Kubernetes object names: DNS-1123 labels (1 to 63
/// lowercase letters, digits and '-', starting and ending with a letter or digit).
pub fn check_secret_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name.ends_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if ok {
        return Ok(());
    }
    Err(format!(
        "secret name {:?} is not valid: use 1 to 63 lowercase letters, digits and '-', starting and ending with a \
         letter or digit",
        name.chars().take(70).collect::<String>()
    ))
}

/// An environment variable name: a letter or `_`, then letters, digits and `_`.
pub fn is_env_name(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= MAX_KEY
        && !key.starts_with(|c: char| c.is_ascii_digit())
        && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// A relative path that stays where it is put: no `..`, no leading `/`,
/// no empty or `.` parts, no NUL or control characters.
fn is_contained(path: &str) -> bool {
    !path.is_empty()
        && path.len() <= MAX_PATH
        && !path.chars().any(|c| c.is_control())
        && path.split('/').all(|part| !part.is_empty() && part != "." && part != "..")
}

/// Why a content was refused: the field it is about, and what to change.
pub type Refusal = (&'static str, String);

/// Checks a secret's content as the client sends it (type, stage, path,
/// items) and returns it in its checked form.
pub fn check_content(
    kind: &str,
    stage: Option<&str>,
    path: Option<&str>,
    items: Vec<SecretItem>,
) -> Result<SecretContent, Refusal> {
    let kind: SecretType = kind.parse().map_err(|_| {
        (
            "type",
            format!(
                "secret type {:?} is not known: use env (environment variables) or mountfile (files)",
                kind.chars().take(40).collect::<String>()
            ),
        )
    })?;
    let stage = match stage.map(str::trim).filter(|s| !s.is_empty()) {
        None => SecretStage::Runtime,
        Some(s) => s.parse().map_err(|_| {
            (
                "stage",
                format!(
                    "secret stage {:?} is not known: use build, runtime or all",
                    s.chars().take(40).collect::<String>()
                ),
            )
        })?,
    };
    if items.is_empty() {
        return Err(("items", "a secret needs at least one item (KEY=VALUE)".into()));
    }
    if items.len() > MAX_SECRET_ITEMS {
        return Err(("items", format!("a secret holds at most {MAX_SECRET_ITEMS} items")));
    }
    let total: usize = items.iter().map(|i| i.value.len()).sum();
    if total > MAX_SECRET_BYTES {
        return Err((
            "items",
            format!("the values of a secret may hold at most {MAX_SECRET_BYTES} bytes together ({total} given)"),
        ));
    }
    let mut keys = std::collections::HashSet::new();
    let mut files = std::collections::HashSet::new();
    for i in &items {
        let shown: String = i.key.chars().take(60).collect();
        if !keys.insert(i.key.as_str()) {
            return Err(("items", format!("key {shown:?} is given twice")));
        }
        match kind {
            SecretType::Env => {
                if !is_env_name(&i.key) {
                    return Err((
                        "items",
                        format!(
                            "key {shown:?} is not an environment variable name: use letters, digits and '_', not \
                             starting with a digit"
                        ),
                    ));
                }
                if i.value.contains('\0') {
                    return Err((
                        "items",
                        format!("the value of {shown:?} holds a NUL byte, which no environment variable can"),
                    ));
                }
            }
            SecretType::MountFile => {
                let file = i.sub_path.as_deref().filter(|s| !s.is_empty()).unwrap_or(&i.key);
                if i.key.is_empty() || i.key.len() > MAX_KEY {
                    return Err(("items", format!("key {shown:?} must hold 1 to {MAX_KEY} bytes")));
                }
                if file.len() > MAX_KEY || !is_contained(file) {
                    return Err((
                        "items",
                        format!(
                            "the file {:?} of key {shown:?} must be a relative path inside the secret's path \
                             (no '..', no leading '/')",
                            file.chars().take(60).collect::<String>()
                        ),
                    ));
                }
                if !files.insert(file.to_owned()) {
                    return Err(("items", format!("two items are mounted at the same file {file:?}")));
                }
            }
        }
    }
    let path = match kind {
        SecretType::Env => None,
        SecretType::MountFile => {
            let p = path.map(str::trim).filter(|p| !p.is_empty()).unwrap_or(HOME_VAR);
            let rest = p.strip_prefix(HOME_VAR).filter(|r| r.is_empty() || r.starts_with('/'));
            let ok = match rest {
                Some(r) => {
                    let r = r.trim_start_matches('/').trim_end_matches('/');
                    r.is_empty() || is_contained(r)
                }
                None => false,
            };
            if !ok {
                return Err((
                    "path",
                    format!(
                        "mount path {:?} must be {HOME_VAR} or a directory below it (e.g. {HOME_VAR}/credentials), \
                         without '..'",
                        p.chars().take(80).collect::<String>()
                    ),
                ));
            }
            Some(p.to_owned())
        }
    };
    let items = items
        .into_iter()
        .map(|i| SecretItem { sub_path: i.sub_path.filter(|s| !s.is_empty() && kind == SecretType::MountFile), ..i })
        .collect();
    Ok(SecretContent { kind, stage, path, items })
}

/// What a secret value becomes in text people read (logs, errors, statuses).
pub const REDACTED: &str = "****";
/// Shorter values are left as they are: masking `a` or `eu` everywhere would
/// garble the text and tell as much.
pub const MIN_REDACTED_LEN: usize = 4;

/// `text` with every occurrence of a secret value (of at least
/// [`MIN_REDACTED_LEN`] characters) replaced by [`REDACTED`]. Besides each
/// whole value, its whitespace-separated parts (`PIP_EXTRA_INDEX_URL` holds
/// several URLs) and the password of each URL in it (`https://user:PASSWORD@host`,
/// what a tool echoing the URL with the user shown would print) are masked too.
pub fn redact<'a>(text: &str, values: impl IntoIterator<Item = &'a str>) -> String {
    let mut fragments: Vec<&str> = Vec::new();
    for value in values {
        fragments.push(value);
        for part in value.split_whitespace() {
            fragments.push(part);
            if let Some(password) = url_password(part) {
                fragments.push(password);
            }
        }
    }
    fragments.retain(|f| f.chars().count() >= MIN_REDACTED_LEN);
    // Longest first: a value that holds another is masked whole.
    fragments.sort_by(|a, b| b.len().cmp(&a.len()).then(a.cmp(b)));
    fragments.dedup();
    let mut out = text.to_owned();
    for f in fragments {
        if out.contains(f) {
            out = out.replace(f, REDACTED);
        }
    }
    out
}

/// The password of `scheme://user:password@host/...`.
fn url_password(url: &str) -> Option<&str> {
    let rest = &url[url.find("://")? + 3..];
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    let userinfo = &authority[..authority.rfind('@')?];
    userinfo.split_once(':').map(|(_, p)| p).filter(|p| !p.is_empty())
}

/// pip's index variables and uv's, which reads only its own (`uv pip` ignores
/// `PIP_INDEX_URL` and `PIP_EXTRA_INDEX_URL`).
const INDEX_ALIASES: [(&str, &str); 2] =
    [("PIP_INDEX_URL", "UV_INDEX_URL"), ("PIP_EXTRA_INDEX_URL", "UV_EXTRA_INDEX_URL")];

/// The environment of a package install by uv (`for_uv`) or by pip: `envs`,
/// plus, for each index variable of the other tool (`PIP_INDEX_URL` ↔
/// `UV_INDEX_URL`, `PIP_EXTRA_INDEX_URL` ↔ `UV_EXTRA_INDEX_URL`) that is set
/// while the tool's own is not, the tool's own with the same value. So a
/// build secret written for pip works with uv, and the reverse.
pub fn install_env(envs: &[(String, String)], for_uv: bool) -> Vec<(String, String)> {
    let mut out = envs.to_vec();
    for (pip, uv) in INDEX_ALIASES {
        let (from, to) = if for_uv { (pip, uv) } else { (uv, pip) };
        if envs.iter().any(|(k, _)| k == to) {
            continue;
        }
        if let Some((_, v)) = envs.iter().rev().find(|(k, _)| k == from) {
            out.push((to.to_owned(), v.clone()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(key: &str, value: &str) -> SecretItem {
        SecretItem { key: key.into(), sub_path: None, value: value.into() }
    }

    #[test]
    fn redaction_masks_values_their_parts_and_url_passwords() {
        let url = "https://user:s3cr3t-token@pypi.example/simple";
        let extra = "https://a.example/simple https://bob:pw-2@b.example/simple";
        let text =
            format!("failed to fetch {url}; extra {extra}; uv shows https://user:s3cr3t-token@pypi.example/x/; eu");
        let red = redact(&text, [url, extra, "eu"]);
        assert!(!red.contains("s3cr3t-token") && !red.contains("pw-2@"), "{red}");
        assert!(!red.contains("a.example"), "each URL of a list is masked: {red}");
        assert_eq!(red, "failed to fetch ****; extra ****; uv shows https://user:****@pypi.example/x/; eu");
        assert_eq!(redact("abc abcd", ["abc", "abcd"]), "abc ****", "values under 4 characters stay");
        assert_eq!(redact("nothing here", std::iter::empty()), "nothing here");
        assert_eq!(url_password("http://u@h/x"), None);
        assert_eq!(url_password("http://u:p@ss@h/x"), Some("p@ss"));
        assert_eq!(url_password("http://h/x?a=u:p@q"), None, "an @ after the host is not userinfo");
    }

    #[test]
    fn pip_index_variables_reach_uv_and_the_reverse_unless_set() {
        let env =
            |pairs: &[(&str, &str)]| pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<Vec<_>>();
        let pip = env(&[("PIP_INDEX_URL", "i"), ("PIP_EXTRA_INDEX_URL", "e"), ("OTHER", "o")]);
        assert_eq!(
            install_env(&pip, true),
            env(&[
                ("PIP_INDEX_URL", "i"),
                ("PIP_EXTRA_INDEX_URL", "e"),
                ("OTHER", "o"),
                ("UV_INDEX_URL", "i"),
                ("UV_EXTRA_INDEX_URL", "e")
            ])
        );
        assert_eq!(install_env(&pip, false), pip, "pip reads its own");
        let both = env(&[("PIP_INDEX_URL", "i"), ("UV_INDEX_URL", "u")]);
        assert_eq!(install_env(&both, true), both, "uv's own wins");
        let uv = env(&[("UV_EXTRA_INDEX_URL", "u")]);
        assert_eq!(install_env(&uv, false), env(&[("UV_EXTRA_INDEX_URL", "u"), ("PIP_EXTRA_INDEX_URL", "u")]));
    }

    fn refused(kind: &str, path: Option<&str>, items: Vec<SecretItem>) -> Refusal {
        check_content(kind, None, path, items).unwrap_err()
    }

    #[test]
    fn hostile_contents_are_refused_with_the_field_they_are_about() {
        assert_eq!(refused("vault", None, vec![item("A", "1")]).0, "type");
        assert_eq!(check_content("env", Some("forever"), None, vec![item("A", "1")]).unwrap_err().0, "stage");
        assert!(refused("env", None, vec![]).1.contains("at least one item"));
        assert!(refused("env", None, vec![item("A", "1"), item("A", "2")]).1.contains("twice"));
        for bad in ["1A", "A-B", "A B", "", "A=B", "Ä"] {
            assert!(refused("env", None, vec![item(bad, "1")]).1.contains("environment variable name"), "{bad}");
        }
        assert!(refused("env", None, vec![item("A", "x\0y")]).1.contains("NUL"));
        let big = "x".repeat(MAX_SECRET_BYTES / 2 + 1);
        assert!(refused("env", None, vec![item("A", &big), item("B", &big)]).1.contains("at most"));
        let many: Vec<SecretItem> = (0..=MAX_SECRET_ITEMS).map(|i| item(&format!("K{i}"), "v")).collect();
        assert!(refused("env", None, many).1.contains("at most"));
        for escape in ["../x", "/etc/passwd", "a/../../b", "a//b", "./", "a\nb"] {
            let i = SecretItem { key: "k".into(), sub_path: Some(escape.into()), value: "v".into() };
            assert_eq!(refused("mountfile", None, vec![i]).0, "items", "{escape}");
            assert_eq!(refused("mountfile", None, vec![item(escape, "v")]).0, "items", "{escape}");
        }
        for path in ["/etc", "$BENTOML_HOME/../x", "$BENTOML_HOMEx", "relative", "$BENTOML_HOME/a/../../b"] {
            assert_eq!(refused("mountfile", Some(path), vec![item("k", "v")]).0, "path", "{path}");
        }
        let twice = vec![SecretItem { key: "a".into(), sub_path: Some("b".into()), value: "1".into() }, item("b", "2")];
        assert!(refused("mountfile", None, twice).1.contains("same file"));
    }

    #[test]
    fn mounted_files_lie_below_the_replicas_home() {
        let content = check_content(
            "mountfile",
            Some("all"),
            Some("$BENTOML_HOME/creds/"),
            vec![
                item("token", "t"),
                SecretItem { key: "cfg".into(), sub_path: Some("conf/db.ini".into()), value: "c".into() },
            ],
        )
        .unwrap();
        assert_eq!(content.stage, SecretStage::All);
        let s = DeploySecret { name: "db".into(), revision: "r".into(), content };
        assert_eq!(s.files(), [("creds/token".to_owned(), "t"), ("creds/conf/db.ini".to_owned(), "c")]);
        assert_eq!(s.env().count(), 0);
        let home = check_content("mountfile", None, None, vec![item("token", "t")]).unwrap();
        assert_eq!(home.path.as_deref(), Some(HOME_VAR));
        assert_eq!(
            DeploySecret { name: "h".into(), revision: "r".into(), content: home }.files(),
            [("token".to_owned(), "t")]
        );
        let env = check_content("env", None, Some("ignored"), vec![item("API_KEY", "v")]).unwrap();
        assert_eq!((env.stage, env.path.as_deref()), (SecretStage::Runtime, None));
    }

    #[test]
    fn each_stage_reaches_only_where_it_is_asked_for() {
        let at = |stage: &str, kind: &str| {
            let content = check_content(kind, Some(stage), None, vec![item("TOKEN", "t")]).unwrap();
            let s = DeploySecret { name: "s".into(), revision: "r".into(), content };
            (s.env().count(), s.build_env().count(), s.files().len())
        };
        assert_eq!(at("build", "env"), (0, 1, 0));
        assert_eq!(at("runtime", "env"), (1, 0, 0));
        assert_eq!(at("all", "env"), (1, 1, 0));
        assert_eq!(at("build", "mountfile"), (0, 0, 0));
        assert_eq!(at("all", "mountfile"), (0, 0, 1));
    }

    #[test]
    fn values_never_show_in_debug_output() {
        let c = check_content("env", None, None, vec![item("API_KEY", "hunter2-value")]).unwrap();
        let shown = format!("{:?}", DeploySecret { name: "n".into(), revision: "r".into(), content: c });
        assert!(shown.contains("API_KEY") && !shown.contains("hunter2"), "{shown}");
    }

    #[test]
    fn names_follow_dns_label_rules() {
        for ok in ["db", "api-keys", "1password", "a"] {
            assert!(check_secret_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "Db", "a_b", "a.b", "-a", "a-", &"a".repeat(64), "a/b", "../x"] {
            assert!(check_secret_name(bad).is_err(), "{bad}");
        }
    }
}
