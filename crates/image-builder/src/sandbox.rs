//! The one thing a layer assembler cannot do: `RUN` steps (`image.commands`, spec-1
//! `system_packages`). When asked to, the builder runs them on the build host inside the base
//! image's filesystem — overlayfs (base rootfs read-only below, an empty upper directory) in a
//! private mount + pid namespace, chrooted — and turns the upper directory into one layer
//! (deletions become whiteouts). The layer is cached by (base digest, commands, build envs),
//! so all bentos with the same system packages on the same base share it.
//!
//! Needs root (or CAP_SYS_ADMIN), `unshare`, overlayfs, and a target platform equal to the
//! host's. `post_commands` and `setup_script` run after the Python install in BentoML's
//! Dockerfile and would need the installed environment underneath: they are refused.

use std::ffi::CString;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Component, Path, PathBuf};
use std::process::Stdio;

use anyhow::{Context, bail};

use crate::base::ResolvedBase;
use crate::blob::{self, Cache, Encoding, LayerBlob};
use crate::registry::Registry;
use crate::tarball::{ExactKind, Tree};

/// Paths never captured from the upper directory: mount points and scratch.
const SKIP: &[&str] = &["proc", "sys", "dev", "tmp", "run"];

/// The base's root filesystem, unpacked once per base digest under the cache.
pub async fn base_rootfs(reg: &Registry, base: &ResolvedBase, cache: &Cache) -> anyhow::Result<PathBuf> {
    let dir = cache.root().join("rootfs").join(base.digest.trim_start_matches("sha256:"));
    if dir.join(".complete").exists() {
        return Ok(dir.join("root"));
    }
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("root"))?;
    for layer in &base.layers {
        let root = dir.join("root");
        crate::base::read_layer(reg, base, layer, "unpacking", move |r| apply_layer(r, &root)).await?;
    }
    std::fs::write(dir.join(".complete"), b"")?;
    Ok(dir.join("root"))
}

/// Applies one layer tar onto `root` (whiteouts remove what lower layers put there).
fn apply_layer(r: impl Read, root: &Path) -> anyhow::Result<()> {
    let mut ar = tar::Archive::new(r);
    ar.set_preserve_permissions(true);
    ar.set_preserve_ownerships(true);
    ar.set_unpack_xattrs(false);
    ar.set_overwrite(true);
    for e in ar.entries()? {
        let mut e = e?;
        let path = e.path()?.into_owned();
        if path.components().any(|c| matches!(c, Component::ParentDir | Component::RootDir)) {
            bail!("layer member {} escapes the root", path.display());
        }
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let whiteout = name.starts_with(".wh.");
        let kind = e.header().entry_type();
        if !whiteout && (kind.is_block_special() || kind.is_character_special() || kind.is_fifo()) {
            continue; // device nodes are the runtime's business; /dev is bind-mounted
        }
        // Removals are resolved like tar resolves writes: links followed, and the result must
        // stay below the root. The base image may be the bento's choice (`image.base_image`), and
        // a layer holding `x -> /` and then `x/.wh..wh..opq` would otherwise have the builder
        // (root) empty the host's `/`.
        let real = beneath(root, &path)?;
        if name == ".wh..wh..opq" {
            if let Some(dir) = real.as_deref().and_then(Path::parent)
                && let Ok(rd) = std::fs::read_dir(dir)
            {
                for c in rd.flatten() {
                    remove_any(&c.path());
                }
            }
            continue;
        }
        if let Some(hidden) = name.strip_prefix(".wh.") {
            if matches!(hidden, "" | "." | "..") {
                bail!("layer member {} is a whiteout of no name", path.display());
            }
            if let Some(real) = &real {
                remove_any(&real.with_file_name(hidden));
            }
            continue;
        }
        if let Some(real) = &real
            && let Ok(m) = std::fs::symlink_metadata(real)
            && !(m.is_dir() && kind.is_dir())
        {
            remove_any(real);
        }
        e.unpack_in(root)?;
    }
    Ok(())
}

/// Where the layer member `rel` is below `root`, its parent resolved through links; an error
/// when that leads out of `root`, `None` when the parent does not exist.
fn beneath(root: &Path, rel: &Path) -> anyhow::Result<Option<PathBuf>> {
    let (Some(parent), Some(name)) = (rel.parent(), rel.file_name()) else {
        return Ok(None); // the root itself
    };
    let real_root = std::fs::canonicalize(root)?;
    match std::fs::canonicalize(root.join(parent)) {
        Ok(p) if p.starts_with(&real_root) => Ok(Some(p.join(name))),
        Ok(p) => bail!("layer member {} lies below a link leading out of the root (to {})", rel.display(), p.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.into()),
    }
}

fn remove_any(p: &Path) {
    match std::fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => {
            let _ = std::fs::remove_dir_all(p);
        }
        Ok(_) => {
            let _ = std::fs::remove_file(p);
        }
        Err(_) => {}
    }
}

/// Runs `steps` in the base under overlay + chroot and returns the layer of what they changed.
/// `envs` (the bento's build envs) and then `secret_envs` are the steps' environment, besides
/// a fixed PATH, HOME, DEBIAN_FRONTEND and LANG; all reach them through the environment, never
/// a command line (which every user of the host can read in /proc), and nothing of them is in
/// the layer.
#[allow(clippy::too_many_arguments)]
pub async fn commands_layer(
    rootfs: &Path,
    steps: &[String],
    envs: &[(String, String)],
    secret_envs: &[(String, String)],
    cache: &Cache,
    encoding: Encoding,
    log: &(dyn Fn(String) + Send + Sync),
) -> anyhow::Result<LayerBlob> {
    if !nix_is_root() {
        bail!(
            "running image commands needs root (mount namespaces and overlayfs); run the builder as root or remove the commands"
        );
    }
    let work = tempfile::Builder::new().prefix("commands-").tempdir_in(cache.tmp_dir())?;
    let (upper, ovl_work, merged) = (work.path().join("upper"), work.path().join("work"), work.path().join("merged"));
    for d in [&upper, &ovl_work, &merged] {
        std::fs::create_dir_all(d)?;
    }
    // A private copy of the host's resolver config: a command writing /etc/resolv.conf must not
    // write the host's.
    let resolv = work.path().join("resolv.conf");
    std::fs::write(&resolv, std::fs::read("/etc/resolv.conf").unwrap_or_default())?;
    let script = format!("set -eu\n{}\n", steps.join("\n"));
    let mut cmd = tokio::process::Command::new("unshare");
    cmd.args(["--mount", "--pid", "--fork", "--kill-child", "sh", "-c"])
        .arg(
            r#"set -e; L=$1; U=$2; W=$3; M=$4; RC=$5; shift 5
mount -t overlay overlay -o "lowerdir=$L,upperdir=$U,workdir=$W" "$M"
for d in proc dev tmp; do [ -d "$M/$d" ] || { echo "the base image has no /$d" >&2; exit 96; }; done
mount -t proc proc "$M/proc"; mount --rbind /dev "$M/dev"; mount -t tmpfs tmpfs "$M/tmp"
if [ -e "$M/etc/resolv.conf" ] || [ -L "$M/etc/resolv.conf" ]; then mount --bind "$RC" "$M/etc/resolv.conf" 2>/dev/null || true; fi
exec chroot "$M" "$@""#,
        )
        .arg("sh")
        .arg(rootfs)
        .arg(&upper)
        .arg(&ovl_work)
        .arg(&merged)
        .arg(&resolv)
        // The steps' environment is this one, all of it: nothing of the builder's own.
        .env_clear()
        .env("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        .env("HOME", "/root")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .env("LANG", "C.UTF-8");
    for (k, v) in envs.iter().chain(secret_envs) {
        cmd.env(k, v);
    }
    cmd.args(["/bin/sh", "-c", &script]).stdin(Stdio::null());
    let out = cmd.output().await.context("running unshare (util-linux) for the image commands")?;
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    for line in text.lines().rev().take(40).collect::<Vec<_>>().into_iter().rev() {
        log(format!("  | {line}"));
    }
    if !out.status.success() {
        let tail: Vec<&str> = text.lines().rev().take(15).collect();
        bail!(
            "image commands failed ({}) in the base image sandbox: {:?}\n{}",
            out.status,
            steps,
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    let mut tree = Tree::new();
    capture(&upper, &upper, &mut tree)?;
    let blobs = cache.blobs_dir();
    let (blob, _) = tokio::task::spawn_blocking(move || blob::write_blob(&tree, encoding, &blobs)).await??;
    Ok(blob)
}

fn nix_is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// The overlay upper directory as a layer: char device 0/0 = whiteout, the opaque xattr =
/// `.wh..wh..opq`; everything else with its own mode and owners.
fn capture(root: &Path, dir: &Path, tree: &mut Tree) -> anyhow::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let path = e.path();
        let rel = path.strip_prefix(root).unwrap().to_str().context("non-UTF-8 path written by a command")?.to_string();
        if dir == root && SKIP.contains(&rel.as_str()) {
            continue;
        }
        let m = std::fs::symlink_metadata(&path)?;
        let ft = m.file_type();
        let (mode, uid, gid) = (m.mode(), m.uid() as u64, m.gid() as u64);
        if ft.is_char_device() && m.rdev() == 0 {
            let (parent, name) =
                rel.rsplit_once('/').map(|(p, n)| (format!("{p}/"), n)).unwrap_or((String::new(), rel.as_str()));
            tree.exact(&format!("{parent}.wh.{name}"), ExactKind::Empty, 0o644, 0, 0);
        } else if ft.is_dir() {
            tree.exact(&rel, ExactKind::Dir, mode, uid, gid);
            if is_opaque(&path) {
                tree.exact(&format!("{rel}/.wh..wh..opq"), ExactKind::Empty, 0o644, 0, 0);
            }
            capture(root, &path, tree)?;
        } else if ft.is_symlink() {
            let t = std::fs::read_link(&path)?;
            tree.exact(&rel, ExactKind::Symlink(t.to_str().context("non-UTF-8 symlink")?.into()), 0o777, uid, gid);
        } else if ft.is_file() {
            tree.exact(&rel, ExactKind::File(path.clone()), mode, uid, gid);
        }
        // sockets, fifos and device nodes made by commands are not image content
    }
    Ok(())
}

fn is_opaque(p: &Path) -> bool {
    let Ok(c) = CString::new(p.as_os_str().as_bytes()) else {
        return false;
    };
    let name = c"trusted.overlay.opaque";
    let mut buf = [0u8; 4];
    // SAFETY: valid NUL-terminated strings and a buffer of the given length.
    let n = unsafe { libc::lgetxattr(c.as_ptr(), name.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    n == 1 && buf[0] == b'y'
}

#[cfg(test)]
mod tests {
    use super::*;

    enum Member<'a> {
        File(&'a str),
        Dir(&'a str),
        Symlink(&'a str, &'a str),
    }

    fn layer(members: &[Member]) -> Vec<u8> {
        // SAFETY: getuid/getgid have no preconditions.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        let mut b = tar::Builder::new(Vec::new());
        for m in members {
            let mut h = tar::Header::new_gnu();
            h.set_uid(uid.into());
            h.set_gid(gid.into());
            h.set_size(0);
            match m {
                Member::File(p) => {
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_mode(0o644);
                    b.append_data(&mut h, p, std::io::empty()).unwrap();
                }
                Member::Dir(p) => {
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_mode(0o755);
                    b.append_data(&mut h, p, std::io::empty()).unwrap();
                }
                Member::Symlink(p, t) => {
                    h.set_entry_type(tar::EntryType::Symlink);
                    h.set_mode(0o777);
                    b.append_link(&mut h, p, t).unwrap();
                }
            }
        }
        b.into_inner().unwrap()
    }

    #[test]
    fn whiteouts_never_remove_anything_outside_the_root() {
        let d = tempfile::tempdir().unwrap();
        let (root, outside) = (d.path().join("root"), d.path().join("outside"));
        std::fs::create_dir_all(&root).unwrap();
        std::fs::create_dir_all(outside.join("keep")).unwrap();
        std::fs::write(outside.join("canary.txt"), b"x").unwrap();
        let abs = outside.display().to_string();
        let hostile = [
            ("absolute link, whiteout", layer(&[Member::Symlink("x", &abs), Member::File("x/.wh.canary.txt")])),
            ("absolute link, opaque", layer(&[Member::Symlink("y", &abs), Member::File("y/.wh..wh..opq")])),
            ("relative link out", layer(&[Member::Symlink("z", "../outside"), Member::File("z/.wh.keep")])),
            ("replacing through a link", layer(&[Member::Symlink("w", &abs), Member::File("w/canary.txt")])),
            ("whiteout of the parent", layer(&[Member::File(".wh...")])),
        ];
        for (what, data) in hostile {
            let err = apply_layer(data.as_slice(), &root).expect_err(what);
            assert!(err.to_string().contains("below a link") || err.to_string().contains("no name"), "{what}: {err}");
            assert_eq!(std::fs::read(outside.join("canary.txt")).unwrap(), b"x", "{what}");
            assert!(outside.join("keep").is_dir(), "{what}");
        }
    }

    #[test]
    fn whiteouts_below_links_inside_the_root_apply() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("root");
        std::fs::create_dir_all(&root).unwrap();
        let lower = layer(&[
            Member::Dir("usr/"),
            Member::Dir("usr/lib/"),
            Member::File("usr/lib/gone"),
            Member::File("usr/lib/kept"),
            Member::Symlink("lib", "usr/lib"),
        ]);
        apply_layer(lower.as_slice(), &root).unwrap();
        apply_layer(layer(&[Member::File("lib/.wh.gone")]).as_slice(), &root).unwrap();
        assert!(!root.join("usr/lib/gone").exists());
        assert!(root.join("usr/lib/kept").exists());
    }
}
