//! Writes a replica's `mountfile` secrets into its home. The home belongs
//! to the replica's user, who may have left anything there (a replica that
//! crashed is restarted in the same home), while the server writes as root:
//! so no path is resolved through a link. Each directory is opened below the
//! home with `O_NOFOLLOW`, the file is created with `O_EXCL|O_NOFOLLOW`
//! after removing what had its name, and ownership and mode are set on the
//! open descriptors. Directories are 0700 and files 0600, the replica's own.

use std::io::Write;
use std::os::fd::OwnedFd;
use std::path::Path;

use rustix::fs::{AtFlags, Mode, OFlags};
use rustix::io::Errno;

const DIR_FLAGS: OFlags = OFlags::DIRECTORY.union(OFlags::NOFOLLOW).union(OFlags::RDONLY).union(OFlags::CLOEXEC);

fn refuse(path: &str, why: &str) -> std::io::Error {
    std::io::Error::other(format!("cannot write the secret file {path:?}: {why}"))
}

fn own(fd: &OwnedFd, owner: Option<u32>, mode: u32) -> std::io::Result<()> {
    if let Some(id) = owner {
        std::os::unix::fs::fchown(fd, Some(id), Some(id))?;
    }
    rustix::fs::fchmod(fd, Mode::from_raw_mode(mode))?;
    Ok(())
}

/// Writes `files` (paths relative to `home`, as
/// [`yatai_core::secret::DeploySecret::files`] gives them) below `home`,
/// owned by `owner` when the replica runs as a user of its own.
pub fn write(home: &Path, files: &[(String, &str)], owner: Option<u32>) -> std::io::Result<()> {
    let root = rustix::fs::open(home, DIR_FLAGS, Mode::empty())?;
    for (path, content) in files {
        let parts: Vec<&str> = path.split('/').collect();
        if parts.iter().any(|p| p.is_empty() || *p == "." || *p == "..") {
            return Err(refuse(path, "it is not a plain relative path"));
        }
        let (file, dirs) = parts.split_last().expect("split gives one part at least");
        let mut dir = rustix::fs::openat(&root, ".", DIR_FLAGS, Mode::empty())?;
        for d in dirs {
            match rustix::fs::mkdirat(&dir, *d, Mode::from_raw_mode(0o700)) {
                Ok(()) | Err(Errno::EXIST) => {}
                Err(e) => return Err(e.into()),
            }
            dir = match rustix::fs::openat(&dir, *d, DIR_FLAGS, Mode::empty()) {
                Ok(fd) => fd,
                Err(Errno::LOOP | Errno::NOTDIR) => return Err(refuse(path, "a link or a file is in its way")),
                Err(e) => return Err(e.into()),
            };
            own(&dir, owner, 0o700)?;
        }
        match rustix::fs::unlinkat(&dir, *file, AtFlags::empty()) {
            Ok(()) | Err(Errno::NOENT) => {}
            Err(_) => return Err(refuse(path, "a directory is in its way")),
        }
        let fd = rustix::fs::openat(
            &dir,
            *file,
            OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::WRONLY | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .map_err(|e| refuse(path, &e.to_string()))?;
        own(&fd, owner, 0o600)?;
        std::fs::File::from(fd).write_all(content.as_bytes())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn files_are_written_closed_and_never_through_a_link() {
        let home = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        write(home.path(), &[("creds/db/token".into(), "t1"), ("top".into(), "t2")], None).unwrap();
        assert_eq!(std::fs::read_to_string(home.path().join("creds/db/token")).unwrap(), "t1");
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&home.path().join("creds/db/token")), 0o600);
        assert_eq!(mode(&home.path().join("creds")), 0o700);
        // Written again (a restarted replica): replaced, not appended.
        write(home.path(), &[("top".into(), "new")], None).unwrap();
        assert_eq!(std::fs::read_to_string(home.path().join("top")).unwrap(), "new");
        // A link the replica planted is removed, never followed.
        let victim = outside.path().join("victim");
        std::fs::write(&victim, "keep").unwrap();
        std::os::unix::fs::symlink(&victim, home.path().join("link")).unwrap();
        write(home.path(), &[("link".into(), "x")], None).unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep");
        std::os::unix::fs::symlink(outside.path(), home.path().join("dirlink")).unwrap();
        let err = write(home.path(), &[("dirlink/f".into(), "x")], None).unwrap_err();
        assert!(err.to_string().contains("link"), "{err}");
        assert!(!outside.path().join("f").exists());
        for bad in ["../f", "a/../../f", "/abs", "a//b"] {
            assert!(write(home.path(), &[(bad.into(), "x")], None).is_err(), "{bad}");
        }
    }
}
