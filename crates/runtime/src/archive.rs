//! Safe extraction of bento and model archives.
//!
//! An archive comes from a user, so every member is checked before anything
//! is written: paths must stay below the destination (no `..`, no absolute
//! paths), links may only point inside it, and only files, directories and
//! links are accepted. Extraction goes to a temporary directory that is
//! renamed into place only when complete, so a failed or refused archive
//! leaves nothing behind.

use std::io::Read;
use std::path::{Component, Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("the archive holds an unsafe path {0:?}: {1}")]
    Unsafe(String, &'static str),
    #[error("the archive holds an unsupported entry {0:?} (only files, directories and links are allowed)")]
    Unsupported(String),
    #[error("the archive is not a readable tar file: {0}")]
    Corrupt(String),
    #[error("could not write {0}: {1}")]
    Io(String, std::io::Error),
}

/// A path inside the archive, reduced to its normal components; refuses
/// anything that could leave the destination.
fn relative(raw: &Path) -> Result<PathBuf, ArchiveError> {
    let shown = raw.display().to_string();
    let mut out = PathBuf::new();
    for c in raw.components() {
        match c {
            Component::CurDir => {}
            Component::Normal(part) => out.push(part),
            Component::ParentDir => {
                return Err(ArchiveError::Unsafe(shown, "it climbs out with '..'"));
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(ArchiveError::Unsafe(shown, "it is absolute"));
            }
        }
    }
    Ok(out)
}

/// Whether a symlink at `link` (relative to the root) pointing at `target`
/// stays inside the root, resolving `..` lexically.
fn link_stays_inside(link: &Path, target: &Path) -> bool {
    if target.is_absolute() {
        return false;
    }
    let mut depth: Vec<&std::ffi::OsStr> = link.parent().map(|p| p.iter().collect()).unwrap_or_default();
    for c in target.components() {
        match c {
            Component::CurDir => {}
            Component::Normal(p) => depth.push(p),
            Component::ParentDir => {
                if depth.pop().is_none() {
                    return false;
                }
            }
            Component::RootDir | Component::Prefix(_) => return false,
        }
    }
    true
}

/// Extracts a tar stream into `dest`, which must not exist yet. On error
/// nothing is left at `dest`.
pub fn extract(reader: impl Read, dest: &Path) -> Result<(), ArchiveError> {
    let parent = dest
        .parent()
        .ok_or_else(|| ArchiveError::Io(dest.display().to_string(), std::io::Error::other("no parent")))?;
    std::fs::create_dir_all(parent).map_err(|e| ArchiveError::Io(parent.display().to_string(), e))?;
    let tmp = parent.join(format!(
        ".{}.partial-{}",
        dest.file_name().and_then(|n| n.to_str()).unwrap_or("archive"),
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| ArchiveError::Io(tmp.display().to_string(), e))?;
    match extract_into(reader, &tmp) {
        Ok(()) => std::fs::rename(&tmp, dest).map_err(|e| {
            let _ = std::fs::remove_dir_all(&tmp);
            ArchiveError::Io(dest.display().to_string(), e)
        }),
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            Err(e)
        }
    }
}

fn extract_into(reader: impl Read, root: &Path) -> Result<(), ArchiveError> {
    use tar::EntryType;
    let mut archive = tar::Archive::new(reader);
    let entries = archive.entries().map_err(|e| ArchiveError::Corrupt(e.to_string()))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| ArchiveError::Corrupt(e.to_string()))?;
        let raw = entry.path().map_err(|e| ArchiveError::Corrupt(e.to_string()))?.into_owned();
        let rel = relative(&raw)?;
        let shown = raw.display().to_string();
        let out = root.join(&rel);
        let io = |e: std::io::Error| ArchiveError::Io(out.display().to_string(), e);
        let kind = entry.header().entry_type();
        if rel.as_os_str().is_empty() {
            if kind == EntryType::Directory {
                continue; // "./"
            }
            return Err(ArchiveError::Unsafe(shown, "it names the archive root"));
        }
        if let Some(p) = out.parent() {
            std::fs::create_dir_all(p).map_err(io)?;
        }
        match kind {
            EntryType::Directory => std::fs::create_dir_all(&out).map_err(io)?,
            EntryType::Regular | EntryType::Continuous => {
                let mode = entry.header().mode().unwrap_or(0o644);
                let mut file = std::fs::File::create(&out).map_err(io)?;
                std::io::copy(&mut entry, &mut file).map_err(io)?;
                use std::os::unix::fs::PermissionsExt;
                // Keep the executable bit; never setuid/setgid/sticky.
                let perm = if mode & 0o111 != 0 { 0o755 } else { 0o644 };
                std::fs::set_permissions(&out, std::fs::Permissions::from_mode(perm)).map_err(io)?;
            }
            EntryType::Symlink => {
                let target =
                    entry.link_name().map_err(|e| ArchiveError::Corrupt(e.to_string()))?.map(|t| t.into_owned());
                let target = target.ok_or_else(|| ArchiveError::Corrupt(format!("link {shown} has no target")))?;
                if !link_stays_inside(&rel, &target) {
                    return Err(ArchiveError::Unsafe(shown, "it is a link pointing outside the archive"));
                }
                std::os::unix::fs::symlink(&target, &out).map_err(io)?;
            }
            EntryType::Link => {
                let target =
                    entry.link_name().map_err(|e| ArchiveError::Corrupt(e.to_string()))?.map(|t| t.into_owned());
                let target = target.ok_or_else(|| ArchiveError::Corrupt(format!("link {shown} has no target")))?;
                let target_rel = relative(&target).map_err(|_| {
                    ArchiveError::Unsafe(shown.clone(), "it is a hard link to a path outside the archive")
                })?;
                let source = root.join(target_rel);
                // The source must be a file already extracted, reached
                // without following links out of the root.
                let meta = std::fs::symlink_metadata(&source).map_err(|_| {
                    ArchiveError::Unsafe(shown.clone(), "it is a hard link to a file not in the archive")
                })?;
                if !meta.is_file() {
                    return Err(ArchiveError::Unsafe(shown, "it is a hard link to something that is not a file"));
                }
                std::fs::hard_link(&source, &out).map_err(io)?;
            }
            EntryType::XGlobalHeader | EntryType::XHeader | EntryType::GNULongName | EntryType::GNULongLink => {}
            _ => return Err(ArchiveError::Unsupported(shown)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_with(f: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        f(&mut b);
        b.into_inner().unwrap()
    }

    fn file(b: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8]) {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        // set_path refuses `..`; write the raw name to build hostile archives.
        let name = path.as_bytes();
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        h.set_cksum();
        b.append(&h, data).unwrap();
    }

    fn link(b: &mut tar::Builder<Vec<u8>>, kind: tar::EntryType, path: &str, target: &str) {
        let mut h = tar::Header::new_gnu();
        h.set_size(0);
        h.set_entry_type(kind);
        h.as_old_mut().name[..path.len()].copy_from_slice(path.as_bytes());
        h.as_old_mut().linkname[..target.len()].copy_from_slice(target.as_bytes());
        h.set_cksum();
        b.append(&h, &[][..]).unwrap();
    }

    #[test]
    fn extracts_a_bento_shaped_archive() {
        let data = tar_with(|b| {
            file(b, "./bento.yaml", b"name: x");
            file(b, "./src/service.py", b"print()");
            link(b, tar::EntryType::Symlink, "./src/alias.py", "service.py");
            link(b, tar::EntryType::Link, "./copy.yaml", "./bento.yaml");
        });
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("out");
        extract(&data[..], &dest).unwrap();
        assert_eq!(std::fs::read(dest.join("src/service.py")).unwrap(), b"print()");
        assert_eq!(std::fs::read(dest.join("src/alias.py")).unwrap(), b"print()");
        assert_eq!(std::fs::read(dest.join("copy.yaml")).unwrap(), b"name: x");
    }

    #[test]
    fn refuses_escapes_and_leaves_nothing() {
        let hostile: Vec<(&str, Vec<u8>)> = vec![
            ("parent", tar_with(|b| file(b, "../evil", b"x"))),
            ("nested parent", tar_with(|b| file(b, "./a/../../evil", b"x"))),
            ("absolute", tar_with(|b| file(b, "/tmp/evil", b"x"))),
            ("symlink out", tar_with(|b| link(b, tar::EntryType::Symlink, "./l", "../../etc"))),
            ("absolute symlink", tar_with(|b| link(b, tar::EntryType::Symlink, "./l", "/etc/passwd"))),
            ("hard link out", tar_with(|b| link(b, tar::EntryType::Link, "./l", "/etc/passwd"))),
            ("hard link up", tar_with(|b| link(b, tar::EntryType::Link, "./l", "../x"))),
        ];
        for (what, data) in hostile {
            let dir = tempfile::tempdir().unwrap();
            let dest = dir.path().join("sub").join("out");
            let err = extract(&data[..], &dest).expect_err(what);
            assert!(matches!(err, ArchiveError::Unsafe(..)), "{what}: {err}");
            assert!(!dest.exists(), "{what}: destination left behind");
            let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("sub")).unwrap().collect();
            assert!(leftovers.is_empty(), "{what}: {leftovers:?}");
            assert!(!dir.path().join("evil").exists());
        }
    }

    #[test]
    fn refuses_devices() {
        let data = tar_with(|b| {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Char);
            h.set_size(0);
            h.set_path("./dev").unwrap();
            h.set_cksum();
            b.append(&h, &[][..]).unwrap();
        });
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(extract(&data[..], &dir.path().join("o")), Err(ArchiveError::Unsupported(_))));
    }

    #[test]
    fn refuses_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let err =
            extract(&b"this is not a tar file at all, not even close................."[..], &dir.path().join("o"));
        assert!(err.is_err());
        assert!(!dir.path().join("o").exists());
    }
}
