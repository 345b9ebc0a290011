//! Registry credentials from a docker `config.json` (`auths`, `credHelpers`, `credsStore`).

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, bail};
use base64::Engine as _;
use serde::Deserialize;

#[derive(Clone, PartialEq, Eq)]
pub enum Credentials {
    Basic {
        username: String,
        password: String,
    },
    /// An OAuth2 refresh token (`identitytoken`), exchanged at the token realm.
    IdentityToken(String),
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::Basic { username, .. } => write!(f, "Basic({username}, ***)"),
            Credentials::IdentityToken(_) => write!(f, "IdentityToken(***)"),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
struct DockerConfig {
    #[serde(default)]
    auths: HashMap<String, AuthEntry>,
    #[serde(default, rename = "credHelpers")]
    cred_helpers: HashMap<String, String>,
    #[serde(default, rename = "credsStore")]
    creds_store: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct AuthEntry {
    auth: Option<String>,
    username: Option<String>,
    password: Option<String>,
    identitytoken: Option<String>,
}

/// Where docker looks: `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`.
pub fn default_config_path() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("DOCKER_CONFIG") {
        return Some(PathBuf::from(d).join("config.json"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker/config.json"))
}

/// Credentials for `registry` (as the user wrote it, e.g. `docker.io` or `host:5000`), if the
/// config file names any. A missing file means anonymous.
pub fn lookup(config: Option<&Path>, registry: &str) -> anyhow::Result<Option<Credentials>> {
    let Some(path) = config.map(Path::to_path_buf).or_else(default_config_path) else {
        return Ok(None);
    };
    let text = match std::fs::read(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let cfg: DockerConfig =
        serde_json::from_slice(&text).with_context(|| format!("parsing docker config {}", path.display()))?;
    let keys = candidate_keys(registry);
    for k in &keys {
        if let Some(helper) = cfg.cred_helpers.get(k) {
            return run_helper(helper, k);
        }
    }
    for k in &keys {
        if let Some(e) = cfg.auths.get(k)
            && let Some(c) = entry_credentials(e).with_context(|| format!("auth entry {k:?} in {}", path.display()))?
        {
            return Ok(Some(c));
        }
    }
    if let Some(store) = &cfg.creds_store {
        return run_helper(store, &keys[0]);
    }
    Ok(None)
}

fn candidate_keys(registry: &str) -> Vec<String> {
    if registry == super::reference::DOCKER_HUB {
        return vec!["https://index.docker.io/v1/".into(), "index.docker.io".into(), "docker.io".into()];
    }
    vec![
        registry.to_string(),
        format!("https://{registry}"),
        format!("http://{registry}"),
        format!("https://{registry}/v1/"),
    ]
}

fn entry_credentials(e: &AuthEntry) -> anyhow::Result<Option<Credentials>> {
    if let Some(t) = e.identitytoken.as_deref().filter(|t| !t.is_empty()) {
        return Ok(Some(Credentials::IdentityToken(t.to_string())));
    }
    if let Some(a) = e.auth.as_deref().filter(|a| !a.is_empty()) {
        let raw = base64::engine::general_purpose::STANDARD.decode(a.trim()).context("`auth` is not base64")?;
        let raw = String::from_utf8(raw).context("`auth` is not UTF-8")?;
        let Some((u, p)) = raw.split_once(':') else { bail!("`auth` must encode user:password") };
        return Ok(Some(Credentials::Basic { username: u.into(), password: p.into() }));
    }
    if let (Some(u), Some(p)) = (&e.username, &e.password) {
        return Ok(Some(Credentials::Basic { username: u.clone(), password: p.clone() }));
    }
    Ok(None)
}

/// `docker-credential-<helper> get`, the host on stdin, `{"Username","Secret"}` on stdout.
fn run_helper(helper: &str, server: &str) -> anyhow::Result<Option<Credentials>> {
    let bin = format!("docker-credential-{helper}");
    let mut child = Command::new(&bin)
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running credential helper {bin}"))?;
    child.stdin.take().expect("piped").write_all(server.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        let msg = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if msg.contains("credentials not found") {
            return Ok(None);
        }
        bail!("{bin} get {server}: {msg} {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    #[derive(Deserialize)]
    struct Out {
        #[serde(rename = "Username")]
        username: String,
        #[serde(rename = "Secret")]
        secret: String,
    }
    let o: Out = serde_json::from_slice(&out.stdout).with_context(|| format!("{bin} printed no credentials"))?;
    Ok(Some(if o.username == "<token>" {
        Credentials::IdentityToken(o.secret)
    } else {
        Credentials::Basic { username: o.username, password: o.secret }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_auth_username_password_and_hub_keys() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("config.json");
        std::fs::write(
            &p,
            r#"{"auths":{"reg.example:5000":{"auth":"dTpwOnc="},
                "https://index.docker.io/v1/":{"username":"hub","password":"pw"},
                "tok.example":{"identitytoken":"rt"}}}"#,
        )
        .unwrap();
        assert_eq!(
            lookup(Some(&p), "reg.example:5000").unwrap(),
            Some(Credentials::Basic { username: "u".into(), password: "p:w".into() })
        );
        assert_eq!(
            lookup(Some(&p), "docker.io").unwrap(),
            Some(Credentials::Basic { username: "hub".into(), password: "pw".into() })
        );
        assert_eq!(lookup(Some(&p), "tok.example").unwrap(), Some(Credentials::IdentityToken("rt".into())));
        assert_eq!(lookup(Some(&p), "other").unwrap(), None);
        assert_eq!(lookup(Some(&d.path().join("missing.json")), "other").unwrap(), None);
    }
}
