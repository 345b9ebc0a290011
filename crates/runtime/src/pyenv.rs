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
    pub fn new(root: PathBuf, uv: Option<PathBuf>) -> Self {
        let uv = uv.or_else(|| find_on_path("uv"));
        EnvCache { root, uv, locks: Mutex::new(HashMap::new()) }
    }

    pub fn describe(&self) -> String {
        match &self.uv {
            Some(uv) => format!("{} (uv {})", self.root.display(), uv.display()),
            None => format!("{} (pip)", self.root.display()),
        }
    }

    /// The cache key of a bento's environment.
    pub fn key(requirements: &str, python_version: Option<&str>) -> String {
        let mut h = Sha256::new();
        h.update(b"yatai-env-v1\n");
        h.update(python_version.unwrap_or("default").as_bytes());
        h.update(b"\n");
        h.update(requirements.as_bytes());
        hex::encode(h.finalize())[..20].to_owned()
    }

    pub async fn prepare(&self, bento_dir: &Path, python_version: Option<&str>) -> Result<PreparedEnv, RuntimeError> {
        let started = Instant::now();
        let req_path = bento_dir.join("env/python/requirements.txt");
        let requirements = tokio::fs::read_to_string(&req_path).await.unwrap_or_default();
        let key = Self::key(&requirements, python_version);
        let venv = self.root.join(&key);
        let ready = venv.join(".yatai-ready");
        if ready.exists() {
            return Ok(PreparedEnv { venv, cached: true, elapsed: started.elapsed() });
        }
        let lock = self.locks.lock().await.entry(key.clone()).or_default().clone();
        let _guard = lock.lock().await;
        if ready.exists() {
            return Ok(PreparedEnv { venv, cached: true, elapsed: started.elapsed() });
        }
        let _ = tokio::fs::remove_dir_all(&venv).await;
        tokio::fs::create_dir_all(&self.root)
            .await
            .map_err(|e| RuntimeError::Env(format!("{}: {e}", self.root.display())))?;
        let log_path = self.root.join(format!("{key}.log"));
        let log =
            std::fs::File::create(&log_path).map_err(|e| RuntimeError::Env(format!("{}: {e}", log_path.display())))?;
        tracing::info!(env = %key, python = ?python_version, "building a Python environment");
        let result = tokio::time::timeout(BUILD_TIMEOUT, self.build(&venv, &req_path, python_version, &log)).await;
        let failure = match result {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e),
            Err(_) => Some(format!("gave up after {BUILD_TIMEOUT:?}")),
        };
        if let Some(why) = failure {
            let _ = tokio::fs::remove_dir_all(&venv).await;
            let tail = tail_lines(&log_path, 15);
            return Err(RuntimeError::Env(format!("could not build the Python environment: {why}\n{tail}")));
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
        log: &std::fs::File,
    ) -> Result<(), String> {
        let has_reqs = requirements.exists();
        match &self.uv {
            Some(uv) => {
                let mut create = tokio::process::Command::new(uv);
                create.arg("venv").arg(venv).arg("--quiet");
                if let Some(v) = python {
                    create.arg("--python").arg(v);
                }
                run(create, log, "uv venv").await?;
                if has_reqs {
                    let mut install = tokio::process::Command::new(uv);
                    install
                        .args(["pip", "install", "--python"])
                        .arg(venv.join("bin/python"))
                        .arg("-r")
                        .arg(requirements);
                    run(install, log, "uv pip install").await?;
                }
            }
            None => {
                let python = match python {
                    Some(v) => find_on_path(&format!("python{v}")).or_else(|| find_on_path("python3")),
                    None => find_on_path("python3"),
                }
                .ok_or("no python3 on PATH")?;
                let mut create = tokio::process::Command::new(python);
                create.arg("-m").arg("venv").arg(venv);
                run(create, log, "python -m venv").await?;
                if has_reqs {
                    let mut install = tokio::process::Command::new(venv.join("bin/pip"));
                    install.args(["install", "--disable-pip-version-check", "-q", "-r"]).arg(requirements);
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

    #[test]
    fn keys_depend_on_requirements_and_python() {
        let a = EnvCache::key("scikit-learn\nbentoml==1.4.40\n", Some("3.11"));
        assert_eq!(a, EnvCache::key("scikit-learn\nbentoml==1.4.40\n", Some("3.11")));
        assert_ne!(a, EnvCache::key("scikit-learn\nbentoml==1.4.41\n", Some("3.11")));
        assert_ne!(a, EnvCache::key("scikit-learn\nbentoml==1.4.40\n", Some("3.12")));
    }
}
