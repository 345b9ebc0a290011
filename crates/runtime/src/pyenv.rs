//! Python environments for bentos, built from the bento's
//! `env/python/requirements.txt` and cached by a hash of the requirements and
//! the Python version, so every deployment with the same dependencies shares
//! one environment. Uses `uv` when available (fast, with its own download
//! cache), `python -m venv` and pip otherwise.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tokio::sync::Mutex;

use crate::RuntimeError;

/// Environment builds that take longer than this are abandoned.
const BUILD_TIMEOUT: Duration = Duration::from_secs(30 * 60);

pub struct EnvCache {
    root: PathBuf,
    uv: Option<PathBuf>,
    /// Replicas run as other users: environments must use an interpreter
    /// they can reach (not one under a private home such as /root).
    for_others: bool,
    locks: Mutex<HashMap<String, Arc<Mutex<()>>>>,
}

#[derive(Debug, Clone)]
pub struct PreparedEnv {
    pub venv: PathBuf,
    /// Whether it was already built.
    pub cached: bool,
    pub elapsed: Duration,
}

impl EnvCache {
    /// `uv`: the uv executable to use; `None` looks for `uv` on PATH and
    /// falls back to pip.
    pub fn new(root: PathBuf, uv: Option<PathBuf>, for_others: bool) -> Self {
        let uv = uv.or_else(|| find_on_path("uv"));
        EnvCache { root, uv, for_others, locks: Mutex::new(HashMap::new()) }
    }

    pub fn describe(&self) -> String {
        match &self.uv {
            Some(uv) => format!("{} (uv {})", self.root.display(), uv.display()),
            None => format!("{} (pip)", self.root.display()),
        }
    }

    /// The cache key of a bento's environment.
    pub fn key(requirements: &str, python_version: Option<&str>, for_others: bool) -> String {
        let mut h = Sha256::new();
        h.update(b"yatai-env-v1\n");
        if for_others {
            // Built on an interpreter every user can run; an environment
            // built for the server's own user may not be.
            h.update(b"for-other-users\n");
        }
        h.update(python_version.unwrap_or("default").as_bytes());
        h.update(b"\n");
        h.update(requirements.as_bytes());
        hex::encode(h.finalize())[..20].to_owned()
    }

    /// The environment of a bento, built (or taken from the cache) from its requirements.
    /// `build_env` (the build-stage env secrets of the deployment: a private index's
    /// credentials) is the install's environment, pip's and uv's index variables under both
    /// names ([`yatai_core::secret::install_env`]); it is no part of the cache key, and its
    /// values are masked in the install's log and in the error.
    pub async fn prepare(
        &self,
        bento_dir: &Path,
        python_version: Option<&str>,
        build_env: &[(String, String)],
    ) -> Result<PreparedEnv, RuntimeError> {
        let started = Instant::now();
        let req_path = bento_dir.join("env/python/requirements.txt");
        let requirements = tokio::fs::read_to_string(&req_path).await.unwrap_or_default();
        yatai_core::requirements::check_no_local_paths(&requirements).map_err(RuntimeError::Env)?;
        let key = Self::key(&requirements, python_version, self.for_others);
        let venv = self.root.join(&key);
        let ready = venv.join(".yatai-ready");
        if ready.exists() {
            return Ok(PreparedEnv { venv, cached: true, elapsed: started.elapsed() });
        }
        let lock = self.locks.lock().await.entry(key.clone()).or_default().clone();
        let _guard = lock.lock().await;
        tokio::fs::create_dir_all(&self.root)
            .await
            .map_err(|e| RuntimeError::Env(format!("{}: {e}", self.root.display())))?;
        // Other servers may share the directory (tests, several servers on
        // one machine): one builds, the others wait and reuse.
        let lock_path = self.root.join(format!("{key}.lock"));
        let _file_lock = tokio::task::spawn_blocking(move || -> std::io::Result<std::fs::File> {
            let f = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&lock_path)?;
            f.lock()?;
            Ok(f)
        })
        .await
        .map_err(|e| RuntimeError::Env(e.to_string()))?
        .map_err(|e| RuntimeError::Env(format!("cannot lock the environment {key}: {e}")))?;
        if ready.exists() {
            return Ok(PreparedEnv { venv, cached: true, elapsed: started.elapsed() });
        }
        let _ = tokio::fs::remove_dir_all(&venv).await;
        let log_path = self.root.join(format!("{key}.log"));
        let log =
            std::fs::File::create(&log_path).map_err(|e| RuntimeError::Env(format!("{}: {e}", log_path.display())))?;
        tracing::info!(env = %key, python = ?python_version, "building a Python environment");
        let result =
            tokio::time::timeout(BUILD_TIMEOUT, self.build(&venv, &req_path, python_version, build_env, &log)).await;
        let failure = match result {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e),
            Err(_) => Some(format!("gave up after {BUILD_TIMEOUT:?}")),
        };
        let redact = |text: &str| yatai_core::secret::redact(text, build_env.iter().map(|(_, v)| v.as_str()));
        if !build_env.is_empty()
            && let Ok(text) = std::fs::read_to_string(&log_path)
        {
            // The installer may have echoed an index URL with its credentials.
            let _ = std::fs::write(&log_path, redact(&text));
        }
        if let Some(why) = failure {
            let _ = tokio::fs::remove_dir_all(&venv).await;
            let tail = tail_lines(&log_path, 15);
            return Err(RuntimeError::Env(redact(&format!("could not build the Python environment: {why}\n{tail}"))));
        }
        if self.for_others
            && let Some(closed) = crate::isolation::closed_ancestor(&venv)
        {
            let _ = tokio::fs::remove_dir_all(&venv).await;
            return Err(RuntimeError::Env(format!(
                "replicas run as their own user and cannot reach {}: {} is closed to other users; \
                 choose an environment directory they can search (--env-dir)",
                venv.display(),
                closed.display()
            )));
        }
        tokio::fs::write(&ready, requirements.as_bytes()).await.map_err(|e| RuntimeError::Env(e.to_string()))?;
        tracing::info!(env = %key, elapsed = ?started.elapsed(), "Python environment ready");
        Ok(PreparedEnv { venv, cached: false, elapsed: started.elapsed() })
    }

    async fn build(
        &self,
        venv: &Path,
        requirements: &Path,
        python: Option<&str>,
        build_env: &[(String, String)],
        log: &std::fs::File,
    ) -> Result<(), String> {
        let has_reqs = requirements.exists();
        let interpreter = if self.for_others { Some(shared_python(python)?) } else { None };
        match &self.uv {
            Some(uv) => {
                let mut create = tokio::process::Command::new(uv);
                create.arg("venv").arg(venv).arg("--quiet");
                if let Some(p) = &interpreter {
                    create.arg("--python").arg(p);
                } else if let Some(v) = python {
                    create.arg("--python").arg(v);
                }
                run(create, log, "uv venv").await?;
                if has_reqs {
                    let mut install = tokio::process::Command::new(uv);
                    install
                        .args(["pip", "install", "--python"])
                        .arg(venv.join("bin/python"))
                        .arg("-r")
                        .arg(requirements)
                        .envs(yatai_core::secret::install_env(build_env, true));
                    run(install, log, "uv pip install").await?;
                }
            }
            None => {
                let python = match (interpreter, python) {
                    (Some(p), _) => Some(p),
                    (None, Some(v)) => find_on_path(&format!("python{v}")).or_else(|| find_on_path("python3")),
                    (None, None) => find_on_path("python3"),
                }
                .ok_or("no python3 on PATH")?;
                let mut create = tokio::process::Command::new(python);
                create.arg("-m").arg("venv").arg(venv);
                run(create, log, "python -m venv").await?;
                if has_reqs {
                    let mut install = tokio::process::Command::new(venv.join("bin/pip"));
                    install
                        .args(["install", "--disable-pip-version-check", "-q", "-r"])
                        .arg(requirements)
                        .envs(yatai_core::secret::install_env(build_env, false));
                    run(install, log, "pip install").await?;
                }
            }
        }
        if !venv.join("bin/bentoml").exists() {
            return Err(
                "the environment has no `bentoml` command: the bento's requirements.txt must include bentoml".into()
            );
        }
        Ok(())
    }
}

async fn run(mut cmd: tokio::process::Command, log: &std::fs::File, what: &str) -> Result<(), String> {
    // Never let uv download an interpreter: use what the machine has.
    cmd.env("UV_PYTHON_DOWNLOADS", "never").env("PIP_DISABLE_PIP_VERSION_CHECK", "1");
    let out = log.try_clone().map_err(|e| e.to_string())?;
    let err = log.try_clone().map_err(|e| e.to_string())?;
    let status = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .kill_on_drop(true)
        .status()
        .await
        .map_err(|e| format!("{what} could not start: {e}"))?;
    if !status.success() {
        return Err(format!("{what} failed ({status})"));
    }
    Ok(())
}

/// A Python interpreter (of `version` if given) that users other than the
/// server's can run, from PATH or the system's usual places.
fn shared_python(version: Option<&str>) -> Result<PathBuf, String> {
    let names: Vec<String> = match version {
        // `3.11.7` is served by any `python3.11`.
        Some(v) => vec![format!("python{}", v.split('.').take(2).collect::<Vec<_>>().join("."))],
        None => vec!["python3".into()],
    };
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs: Vec<PathBuf> =
        std::env::split_paths(&path).chain(["/usr/local/bin", "/usr/bin"].map(PathBuf::from)).collect();
    let mut seen = Vec::new();
    for name in &names {
        for dir in &dirs {
            let candidate = dir.join(name);
            if candidate.exists() {
                if crate::isolation::usable_by_others(&candidate) {
                    return Ok(candidate);
                }
                seen.push(candidate.display().to_string());
            }
        }
    }
    Err(format!(
        "replicas run as their own user, and no {} on PATH or in /usr/bin is usable by other users{}; install one \
         there, or run replicas as the server's user (--replica-uids off)",
        names.join("/"),
        if seen.is_empty() { String::new() } else { format!(" (found only {})", seen.join(", ")) }
    ))
}

pub(crate) fn find_on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths).map(|p| p.join(name)).find(|p| {
            use std::os::unix::fs::PermissionsExt;
            p.metadata().map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0).unwrap_or(false)
        })
    })
}

/// The last `n` lines of a text file.
pub(crate) fn tail_lines(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `uv` that makes a venv with a `bentoml`, recording the install's index variables, and
    /// fails the install (echoing the index URL, as installers do) when the URL says so.
    fn fake_uv(dir: &Path) -> PathBuf {
        let uv = dir.join("uv");
        let record = dir.join("record");
        let script = format!(
            r#"#!/bin/sh
if [ "$1" = venv ]; then mkdir -p "$2/bin"; exit 0; fi
env | grep -E '^(UV|PIP)_(EXTRA_)?INDEX_URL=' | sort >> {record}
case "$UV_EXTRA_INDEX_URL" in *fail*) echo "error: 401 Unauthorized for $UV_EXTRA_INDEX_URL/probe/"; exit 1;; esac
touch "$(dirname "$4")/bentoml"
"#,
            record = record.display()
        );
        std::fs::write(&uv, script).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&uv, std::fs::Permissions::from_mode(0o755)).unwrap();
        uv
    }

    #[tokio::test]
    async fn the_install_gets_the_build_env_masked_in_its_errors_and_out_of_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let bento = dir.path().join("bento");
        std::fs::create_dir_all(bento.join("env/python")).unwrap();
        std::fs::write(bento.join("env/python/requirements.txt"), "bentoml\nprobe\n").unwrap();
        let envs = EnvCache::new(dir.path().join("envs"), Some(fake_uv(dir.path())), false);
        let env = |url: &str| vec![("PIP_EXTRA_INDEX_URL".to_string(), url.to_string())];

        let failing = "http://user:fail-token-8f7e@127.0.0.1:1/simple";
        let err = envs.prepare(&bento, None, &env(failing)).await.unwrap_err().to_string();
        assert!(err.contains("uv pip install failed") && err.contains("401 Unauthorized for ****/probe/"), "{err}");
        assert!(!err.contains("fail-token-8f7e"), "{err}");
        let logs: String = std::fs::read_dir(dir.path().join("envs"))
            .unwrap()
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "log"))
            .map(|e| std::fs::read_to_string(e.path()).unwrap())
            .collect();
        assert!(logs.contains("****") && !logs.contains("fail-token-8f7e"), "the kept log is masked: {logs}");

        let good = "http://user:good-token-1a2b@127.0.0.1:1/simple";
        let prepared = envs.prepare(&bento, None, &env(good)).await.unwrap();
        assert!(!prepared.cached);
        let record = std::fs::read_to_string(dir.path().join("record")).unwrap();
        assert!(record.contains(&format!("PIP_EXTRA_INDEX_URL={good}\nUV_EXTRA_INDEX_URL={good}\n")), "{record}");
        // The key is the requirements': the same environment, whatever the credentials.
        let again = envs.prepare(&bento, None, &[]).await.unwrap();
        assert!(again.cached);
        assert_eq!(again.venv, prepared.venv);
    }

    #[test]
    fn keys_depend_on_requirements_and_python() {
        let a = EnvCache::key("scikit-learn\nbentoml==1.4.40\n", Some("3.11"), false);
        assert_eq!(a, EnvCache::key("scikit-learn\nbentoml==1.4.40\n", Some("3.11"), false));
        assert_ne!(a, EnvCache::key("scikit-learn\nbentoml==1.4.41\n", Some("3.11"), false));
        assert_ne!(a, EnvCache::key("scikit-learn\nbentoml==1.4.40\n", Some("3.12"), false));
        assert_ne!(a, EnvCache::key("scikit-learn\nbentoml==1.4.40\n", Some("3.11"), true));
    }
}
