//! The Python environment of the image, built on the build host for the target platform:
//! `uv pip compile` (pinning), `uv pip install --target` (wheels only), shebang rewriting,
//! reproducible bytecode, and the `/app/.venv` skeleton that BentoML's entrypoint activates.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::{Context, bail};
use tokio::process::Command;

use crate::secrets::SecretEnvs;
use crate::tarball::{BENTO_UID, Source, Tree};

pub const VENV: &str = "/app/.venv";

/// Owner rule for everything under `/app`: the venv belongs to the bento user, `/app` to root.
pub fn venv_owner(path: &str) -> u64 {
    if path == "app/.venv" || path.starts_with("app/.venv/") { BENTO_UID } else { 0 }
}

/// `3.11` from `3.11`, `3.11.7`, `python3.11`.
pub fn minor(version: &str) -> Option<String> {
    let v = version.trim().trim_start_matches("python");
    let mut it = v.split('.');
    let (a, b) = (it.next()?, it.next()?);
    (a.parse::<u32>().is_ok() && b.parse::<u32>().is_ok()).then(|| format!("{a}.{b}"))
}

#[derive(Debug, thiserror::Error)]
#[error(
    "no wheel for the target platform {platform} (python {python}): {detail}\n\
     The builder installs wheels only, on the build host; a package published only as an \
     sdist must be built for the image's platform. Pin a version that ships a manylinux \
     wheel, or build the image with `bentoml containerize`."
)]
pub struct NoWheel {
    pub platform: String,
    pub python: String,
    pub detail: String,
}

pub struct Uv {
    pub bin: PathBuf,
    pub cache_dir: PathBuf,
    /// Given to every uv command after the bento's build envs (pip's index variables under
    /// uv's names too); masked in the errors.
    pub secrets: SecretEnvs,
}

impl Uv {
    pub async fn version(&self) -> anyhow::Result<String> {
        let out = Command::new(&self.bin).arg("--version").output().await.with_context(|| {
            format!("running {} (uv is needed on the build host; `pip install uv`)", self.bin.display())
        })?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    fn cmd(&self, cwd: &Path, envs: &[(String, String)]) -> Command {
        let mut c = Command::new(&self.bin);
        c.current_dir(cwd)
            .env("UV_CACHE_DIR", &self.cache_dir)
            .env("UV_NO_PROGRESS", "1")
            .env_remove("VIRTUAL_ENV")
            .env_remove("UV_SYSTEM_PYTHON")
            .stdin(Stdio::null());
        for (k, v) in envs.iter().cloned().chain(self.secrets.for_uv()) {
            c.env(k, v);
        }
        c
    }

    /// Pins `requirements` for the target (wheels only, nothing newer than `exclude_newer`).
    pub async fn compile(
        &self,
        requirements: &Path,
        cwd: &Path,
        target: &Target,
        exclude_newer: Option<&str>,
        envs: &[(String, String)],
    ) -> anyhow::Result<String> {
        let out_file = tempfile::NamedTempFile::new()?;
        let mut c = self.cmd(cwd, envs);
        c.args(["pip", "compile", "--quiet", "--no-header", "--no-annotate", "--only-binary", ":all:"])
            .args(["--python-platform", &target.uv_platform, "--python-version", &target.python])
            .arg("--output-file")
            .arg(out_file.path())
            .arg(requirements);
        if let Some(t) = exclude_newer {
            c.args(["--exclude-newer", t]);
        }
        run(c, "uv pip compile", target, &self.secrets).await?;
        Ok(std::fs::read_to_string(out_file.path())?)
    }

    /// Installs pinned requirements into `site` for the target.
    pub async fn install(
        &self,
        requirements: &Path,
        cwd: &Path,
        site: &Path,
        target: &Target,
        envs: &[(String, String)],
    ) -> anyhow::Result<()> {
        let mut c = self.cmd(cwd, envs);
        c.args(["pip", "install", "--quiet", "--only-binary", ":all:", "--link-mode", "copy", "--no-compile"])
            .args(["--python-platform", &target.uv_platform, "--python-version", &target.python])
            .arg("--target")
            .arg(site)
            .arg("-r")
            .arg(requirements);
        run(c, "uv pip install", target, &self.secrets).await
    }
}

async fn run(mut c: Command, what: &str, target: &Target, secrets: &SecretEnvs) -> anyhow::Result<()> {
    let out = c.output().await.with_context(|| format!("running {what}"))?;
    if out.status.success() {
        return Ok(());
    }
    let err = secrets.redact(String::from_utf8_lossy(&out.stderr).trim());
    if err.contains("no usable wheels")
        || err.contains("building from source is disabled")
        || err.contains("no wheels with a matching")
    {
        return Err(NoWheel { platform: target.uv_platform.clone(), python: target.python.clone(), detail: err }.into());
    }
    bail!("{what} failed ({}): {err}", out.status)
}

/// The platform the dependencies are installed for.
#[derive(Debug, Clone)]
pub struct Target {
    /// uv's `--python-platform`, e.g. `x86_64-manylinux_2_28`.
    pub uv_platform: String,
    /// Python minor, e.g. `3.11`.
    pub python: String,
}

/// Rewrites console scripts made by `uv --target` (their shebang names the build host's
/// interpreter) to run the image's venv python; moves them into `bin_dir`.
pub fn relocate_scripts(target_bin: &Path, bin_dir: &Path) -> anyhow::Result<Vec<String>> {
    let mut names = Vec::new();
    let Ok(rd) = std::fs::read_dir(target_bin) else {
        return Ok(names);
    };
    std::fs::create_dir_all(bin_dir)?;
    let mut entries: Vec<_> = rd.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let name = e.file_name().to_string_lossy().into_owned();
        let dest = bin_dir.join(&name);
        let data = std::fs::read(e.path())?;
        let new = rewrite_shebang(&data);
        std::fs::write(&dest, new.as_deref().unwrap_or(&data))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(0o755))?;
        names.push(name);
    }
    std::fs::remove_dir_all(target_bin)?;
    Ok(names)
}

fn rewrite_shebang(data: &[u8]) -> Option<Vec<u8>> {
    let first_end = data.iter().position(|&b| b == b'\n')?;
    let first = std::str::from_utf8(&data[..first_end]).ok()?;
    let interp = first.strip_prefix("#!")?.trim();
    let interp_path = interp.split_whitespace().next()?;
    let file = interp_path.rsplit('/').next()?;
    let venv_python = format!("{VENV}/bin/python");
    if interp_path.starts_with('/') && file.starts_with("python") {
        let mut out = format!("#!{venv_python}").into_bytes();
        out.extend_from_slice(&data[first_end..]);
        return Some(out);
    }
    // uv's trampoline for interpreter paths too long for a shebang:
    // #!/bin/sh\n'''exec' '/long/path/python' "$0" "$@"\n' '''
    if interp == "/bin/sh" {
        let text = std::str::from_utf8(&data[first_end + 1..]).ok()?;
        let mut lines = text.splitn(3, '\n');
        let (l2, l3, tail) = (lines.next()?, lines.next()?, lines.next().unwrap_or(""));
        if l2.starts_with("'''exec' ") && l3 == "' '''" {
            return Some(format!("#!{venv_python}\n{tail}").into_bytes());
        }
    }
    None
}

/// Byte-compiles `site` for its in-image path with the host's python of the same minor,
/// as unchecked-hash pycs (reproducible: no mtimes, no staging paths inside).
pub async fn compile_bytecode(host_python: &Path, site: &Path, image_site: &str) -> anyhow::Result<()> {
    let out = Command::new(host_python)
        .args(["-m", "compileall", "-q", "-j", "0", "--invalidation-mode", "unchecked-hash", "-d", image_site])
        .arg(site)
        .env("PYTHONHASHSEED", "0")
        .stdin(Stdio::null())
        .output()
        .await
        .with_context(|| format!("running {} -m compileall", host_python.display()))?;
    // compileall exits 1 when some file fails to compile (e.g. py2-only test files shipped in a
    // wheel); pip and uv tolerate that too, the module is then simply not precompiled.
    if !out.status.success() && out.status.code() != Some(1) {
        bail!("compileall failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// A `python3.X` on the build host's PATH with the target's minor (for bytecode).
pub fn find_host_python(minor: &str) -> Option<PathBuf> {
    let name = format!("python{minor}");
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p).map(|d| d.join(&name)).find(|c| {
            std::fs::metadata(c).map(|m| m.is_file()).unwrap_or(false)
                && std::process::Command::new(c)
                    .args(["-c", "import sys; print('%d.%d' % sys.version_info[:2])"])
                    .output()
                    .map(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).trim() == minor)
                    .unwrap_or(false)
        })
    })
}

/// The venv skeleton pointing at the base image's interpreter (`python` is an absolute path
/// inside the image, e.g. `/usr/bin/python3.11`).
pub fn shim_tree(python: &str, minor: &str) -> Tree {
    let owner = venv_owner;
    let home = python.rsplit_once('/').map(|(d, _)| d).unwrap_or("/usr/bin");
    let mut t = Tree::new();
    let cfg =
        format!("home = {home}\ninclude-system-site-packages = false\nversion = {minor}\nexecutable = {python}\n");
    t.file("app/.venv/pyvenv.cfg", Source::Bytes(cfg.into_bytes()), false, &owner);
    t.symlink("app/.venv/bin/python", python, &owner);
    t.symlink("app/.venv/bin/python3", "python", &owner);
    t.symlink(&format!("app/.venv/bin/python{minor}"), "python", &owner);
    t.symlink("app/.venv/lib64", "lib", &owner);
    t.dir(&format!("app/.venv/lib/python{minor}/site-packages"), &owner);
    t.file("app/.venv/bin/activate", Source::Bytes(ACTIVATE.as_bytes().to_vec()), false, &owner);
    t
}

/// Sourced by BentoML's `entrypoint.sh` (under `set -u`), so every expansion has a default.
const ACTIVATE: &str = r#"# Source this file from bash or sh: . /app/.venv/bin/activate
deactivate () {
    if [ -n "${_OLD_VIRTUAL_PATH:-}" ]; then PATH="${_OLD_VIRTUAL_PATH}"; export PATH; unset _OLD_VIRTUAL_PATH; fi
    if [ -n "${_OLD_VIRTUAL_PYTHONHOME:-}" ]; then PYTHONHOME="${_OLD_VIRTUAL_PYTHONHOME}"; export PYTHONHOME; unset _OLD_VIRTUAL_PYTHONHOME; fi
    hash -r 2>/dev/null || true
    unset VIRTUAL_ENV VIRTUAL_ENV_PROMPT
    if [ "${1:-}" != "nondestructive" ]; then unset -f deactivate; fi
}
deactivate nondestructive
VIRTUAL_ENV="/app/.venv"
export VIRTUAL_ENV
_OLD_VIRTUAL_PATH="$PATH"
PATH="$VIRTUAL_ENV/bin:$PATH"
export PATH
VIRTUAL_ENV_PROMPT="(.venv) "
export VIRTUAL_ENV_PROMPT
if [ -n "${PYTHONHOME:-}" ]; then _OLD_VIRTUAL_PYTHONHOME="${PYTHONHOME}"; unset PYTHONHOME; fi
hash -r 2>/dev/null || true
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shebangs_point_at_the_venv() {
        let s = rewrite_shebang(b"#!/root/.pyenv/versions/3.11.7/bin/python3\nimport x\n").unwrap();
        assert_eq!(s, b"#!/app/.venv/bin/python\nimport x\n");
        let t = rewrite_shebang(b"#!/bin/sh\n'''exec' '/very/long/python3' \"$0\" \"$@\"\n' '''\nimport x\n").unwrap();
        assert_eq!(String::from_utf8(t).unwrap(), "#!/app/.venv/bin/python\nimport x\n");
        assert!(rewrite_shebang(b"#!/bin/bash\necho\n").is_none());
        assert!(rewrite_shebang(b"\x7fELF").is_none());
    }

    #[test]
    fn minors() {
        assert_eq!(minor("3.11.7").as_deref(), Some("3.11"));
        assert_eq!(minor("python3.12").as_deref(), Some("3.12"));
        assert_eq!(minor("3"), None);
    }
}
