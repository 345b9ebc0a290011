//! Safe extraction of bento and model archives.
//!
//! An archive comes from a user, and whatever it holds must end up below the destination and
//! nowhere else. Three rules make that hold by construction rather than by guessing where a path
//! leads:
//!
//! * **No path is ever resolved through a link.** Each entry's directories are opened one at a
//!   time below the root with `O_NOFOLLOW` (openat-style), files are created with
//!   `O_EXCL|O_NOFOLLOW`, and nothing already extracted is replaced. A link the archive made
//!   earlier (`a -> .`, then `a/a/up -> ../..`) therefore can never carry a later entry
//!   elsewhere: an entry below a link is refused.
//! * **Symlinks must resolve inside once the archive is complete.** Bentos hold relative links,
//!   and the processes that later use the tree (`bentoml serve`, the image builder) follow them.
//!   So after the last entry every symlink is resolved the way the kernel would — following the
//!   other links of the tree, applying `..` to the real directory reached — and must end inside.
//! * **A hard link may only name a regular file the archive already holds**, reached without
//!   links.
//!
//! Only files, directories and links are accepted; modes are reduced to 0644/0755. Extraction
//! goes to a temporary directory renamed into place only when complete, so a refused archive
//! leaves nothing behind.

use std::collections::VecDeque;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::Read;
use std::os::fd::OwnedFd;
use std::path::{Component, Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use rustix::io::Errno;

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

/// Symlinks one resolution may follow before it is called a loop (Linux's own limit).
const MAX_HOPS: usize = 40;
/// Path steps one resolution may take; bounds the work an archive of long link chains can cause.
const MAX_STEPS: usize = 4096;

const DIR_FLAGS: OFlags = OFlags::DIRECTORY.union(OFlags::NOFOLLOW).union(OFlags::RDONLY).union(OFlags::CLOEXEC);

/// A path inside the archive as its normal components; refuses anything that could leave the
/// destination.
fn relative(raw: &Path) -> Result<Vec<OsString>, ArchiveError> {
    let shown = raw.display().to_string();
    let mut out = Vec::new();
    for c in raw.components() {
        match c {
            Component::CurDir => {}
            Component::Normal(part) => out.push(part.to_owned()),
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

/// Whether a symlink in directory `dirs` pointing at `target` stays inside the root, resolving
/// `..` lexically. A first, cheap answer with a plain message; links through links are judged
/// by [`check_link`] once the archive is complete.
fn link_stays_inside(dirs: &[OsString], target: &Path) -> bool {
    let mut depth: Vec<&OsStr> = dirs.iter().map(OsString::as_os_str).collect();
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

/// Extracts a tar stream into `dest`, which must not exist yet (an empty directory is replaced).
/// On error nothing is left at `dest`.
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
    std::fs::create_dir(&tmp).map_err(|e| ArchiveError::Io(tmp.display().to_string(), e))?;
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

/// Why the directories above an entry could not be opened.
enum Below {
    /// One of them is a symlink: writing there would follow it.
    Link,
    /// One of them is a file.
    File,
    /// One of them does not exist (and was not to be created).
    Missing,
    Io(std::io::Error),
}

/// Opens the directory `dirs` below `root` one component at a time, never following a link,
/// creating missing directories when `create`.
fn open_dirs(root: &OwnedFd, dirs: &[OsString], create: bool) -> Result<OwnedFd, Below> {
    let mut cur = rustix::fs::openat(root, ".", DIR_FLAGS, Mode::empty()).map_err(|e| Below::Io(e.into()))?;
    for d in dirs {
        let d = d.as_os_str();
        let next = match rustix::fs::openat(&cur, d, DIR_FLAGS, Mode::empty()) {
            Err(Errno::NOENT) if create => {
                match rustix::fs::mkdirat(&cur, d, Mode::from_raw_mode(0o755)) {
                    Ok(()) | Err(Errno::EXIST) => {}
                    Err(e) => return Err(Below::Io(e.into())),
                }
                rustix::fs::openat(&cur, d, DIR_FLAGS, Mode::empty())
            }
            other => other,
        };
        cur = match next {
            Ok(fd) => fd,
            Err(Errno::NOENT) => return Err(Below::Missing),
            Err(e @ (Errno::LOOP | Errno::NOTDIR)) => {
                return Err(match kind_at(&cur, d) {
                    Some(FileType::Symlink) => Below::Link,
                    Some(_) => Below::File,
                    None => Below::Io(e.into()),
                });
            }
            Err(e) => return Err(Below::Io(e.into())),
        };
    }
    Ok(cur)
}

/// The type of `name` in `dir`, not following a link.
fn kind_at(dir: &OwnedFd, name: &OsStr) -> Option<FileType> {
    rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW).ok().map(|st| FileType::from_raw_mode(st.st_mode))
}

fn extract_into(reader: impl Read, root: &Path) -> Result<(), ArchiveError> {
    use tar::EntryType;
    let root_fd = rustix::fs::open(root, DIR_FLAGS, Mode::empty())
        .map_err(|e| ArchiveError::Io(root.display().to_string(), e.into()))?;
    let mut links: Vec<(String, Vec<OsString>)> = Vec::new();
    let mut archive = tar::Archive::new(reader);
    let entries = archive.entries().map_err(|e| ArchiveError::Corrupt(e.to_string()))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| ArchiveError::Corrupt(e.to_string()))?;
        let raw = entry.path().map_err(|e| ArchiveError::Corrupt(e.to_string()))?.into_owned();
        let shown = raw.display().to_string();
        let parts = relative(&raw)?;
        let kind = entry.header().entry_type();
        let Some((name, dirs)) = parts.split_last() else {
            if kind == EntryType::Directory {
                continue; // "./"
            }
            return Err(ArchiveError::Unsafe(shown, "it names the archive root"));
        };
        let name = name.as_os_str();
        let out = root.join(parts.iter().collect::<PathBuf>());
        let io = |e: std::io::Error| ArchiveError::Io(out.display().to_string(), e);
        let twice =
            || ArchiveError::Unsafe(shown.clone(), "it appears twice in the archive; entries are never replaced");
        let parent = |create: bool| {
            open_dirs(&root_fd, dirs, create).map_err(|b| match b {
                Below::Link => {
                    ArchiveError::Unsafe(shown.clone(), "it lies below a link, and nothing is written through links")
                }
                Below::File => ArchiveError::Unsafe(shown.clone(), "it lies below a file"),
                Below::Missing => io(std::io::ErrorKind::NotFound.into()),
                Below::Io(e) => io(e),
            })
        };
        match kind {
            EntryType::Directory => {
                let parent = parent(true)?;
                match rustix::fs::mkdirat(&parent, name, Mode::from_raw_mode(0o755)) {
                    Ok(()) => {}
                    Err(Errno::EXIST) if kind_at(&parent, name) == Some(FileType::Directory) => {}
                    Err(Errno::EXIST) => {
                        return Err(ArchiveError::Unsafe(
                            shown,
                            "it would turn a file or link of the archive into a directory",
                        ));
                    }
                    Err(e) => return Err(io(e.into())),
                }
            }
            EntryType::Regular | EntryType::Continuous => {
                let parent = parent(true)?;
                let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
                let fd = match rustix::fs::openat(&parent, name, flags, Mode::from_raw_mode(0o600)) {
                    Ok(fd) => fd,
                    Err(Errno::EXIST) => return Err(twice()),
                    Err(e) => return Err(io(e.into())),
                };
                let mode = entry.header().mode().unwrap_or(0o644);
                let mut file = File::from(fd);
                std::io::copy(&mut entry, &mut file).map_err(io)?;
                // Keep the executable bit; never setuid/setgid/sticky.
                let perm = if mode & 0o111 != 0 { 0o755 } else { 0o644 };
                rustix::fs::fchmod(&file, Mode::from_raw_mode(perm)).map_err(|e| io(e.into()))?;
            }
            EntryType::Symlink => {
                let target = link_target(&entry, &shown)?;
                if !link_stays_inside(dirs, &target) {
                    return Err(ArchiveError::Unsafe(shown, "it is a link pointing outside the archive"));
                }
                let parent = parent(true)?;
                match rustix::fs::symlinkat(&target, &parent, name) {
                    Ok(()) => links.push((shown, parts)),
                    Err(Errno::EXIST) => return Err(twice()),
                    Err(e) => return Err(io(e.into())),
                }
            }
            EntryType::Link => {
                let target = link_target(&entry, &shown)?;
                let outside = || ArchiveError::Unsafe(shown.clone(), "it is a hard link to a path outside the archive");
                let source = relative(&target).map_err(|_| outside())?;
                let (source_name, source_dirs) = source.split_last().ok_or_else(outside)?;
                let not_held = || {
                    ArchiveError::Unsafe(
                        shown.clone(),
                        "it is a hard link to a file the archive does not hold before it",
                    )
                };
                let source_dir = open_dirs(&root_fd, source_dirs, false).map_err(|b| match b {
                    Below::Link => ArchiveError::Unsafe(shown.clone(), "it is a hard link through a link"),
                    Below::File | Below::Missing => not_held(),
                    Below::Io(e) => io(e),
                })?;
                match kind_at(&source_dir, source_name) {
                    Some(FileType::RegularFile) => {}
                    None => return Err(not_held()),
                    Some(_) => {
                        return Err(ArchiveError::Unsafe(shown, "it is a hard link to something that is not a file"));
                    }
                }
                let parent = parent(true)?;
                // No AT_SYMLINK_FOLLOW: the very file checked above is linked.
                match rustix::fs::linkat(&source_dir, source_name.as_os_str(), &parent, name, AtFlags::empty()) {
                    Ok(()) => {}
                    Err(Errno::EXIST) => return Err(twice()),
                    Err(e) => return Err(io(e.into())),
                }
            }
            EntryType::XGlobalHeader | EntryType::XHeader | EntryType::GNULongName | EntryType::GNULongLink => {}
            _ => return Err(ArchiveError::Unsupported(shown)),
        }
    }
    for (shown, link) in links {
        check_link(root, &link).map_err(|why| ArchiveError::Unsafe(shown, why))?;
    }
    Ok(())
}

fn link_target<R: Read>(entry: &tar::Entry<'_, R>, shown: &str) -> Result<PathBuf, ArchiveError> {
    let target = entry.link_name().map_err(|e| ArchiveError::Corrupt(e.to_string()))?.map(|t| t.into_owned());
    target
        .filter(|t| !t.as_os_str().is_empty())
        .ok_or_else(|| ArchiveError::Corrupt(format!("link {shown} has no target")))
}

/// One step of a link's resolution.
enum Step {
    Up,
    Down(OsString),
}

fn steps_of(target: &Path) -> Result<VecDeque<Step>, &'static str> {
    let mut out = VecDeque::new();
    for c in target.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => out.push_back(Step::Up),
            Component::Normal(p) => out.push_back(Step::Down(p.to_owned())),
            Component::RootDir | Component::Prefix(_) => return Err("it is a link that leads to an absolute path"),
        }
    }
    Ok(out)
}

/// Resolves the symlink at `link` (components below `root`) as the kernel would in the finished
/// tree: a component that is a link is replaced by its target, and `..` goes up from the real
/// directory reached, not from the path as written. Fails when the walk leaves the root.
///
/// A component the tree does not hold is taken as a directory that might be created later
/// (lexically), and a `..` after it is refused: what it would reach depends on what is made
/// there afterwards.
fn check_link(root: &Path, link: &[OsString]) -> Result<(), &'static str> {
    let (_, dirs) = link.split_last().expect("a link has a name");
    // The real directory reached so far: never holds a link, so joining it to `root` follows none.
    let mut at: Vec<OsString> = dirs.to_vec();
    let here = root.join(link.iter().collect::<PathBuf>());
    let target = std::fs::read_link(&here).map_err(|_| "it is a link that cannot be read back")?;
    let mut pending = steps_of(&target)?;
    let (mut hops, mut steps, mut missing) = (1, 0, false);
    while let Some(step) = pending.pop_front() {
        steps += 1;
        if steps > MAX_STEPS {
            return Err("it is a link whose resolution is too long");
        }
        match step {
            Step::Up if missing => {
                return Err("it is a link that climbs with '..' out of a path the archive does not hold");
            }
            Step::Up => {
                if at.pop().is_none() {
                    return Err("it is a link that leads outside the archive through other links");
                }
            }
            Step::Down(name) if missing => at.push(name),
            Step::Down(name) => {
                let path = root.join(at.iter().collect::<PathBuf>()).join(&name);
                match std::fs::symlink_metadata(&path) {
                    Ok(m) if m.file_type().is_symlink() => {
                        hops += 1;
                        if hops > MAX_HOPS {
                            return Err("it is a link in a loop of links");
                        }
                        let next = std::fs::read_link(&path).map_err(|_| "it is a link that cannot be read back")?;
                        let mut next = steps_of(&next)?;
                        next.extend(pending);
                        pending = next;
                    }
                    Ok(_) => at.push(name),
                    Err(_) => {
                        missing = true;
                        at.push(name);
                    }
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
