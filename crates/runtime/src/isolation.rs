//! What keeps a replica away from the server and from other deployments on
//! this machine.
//!
//! When the server runs as root, each deployment's replicas run as a user
//! id of their own (with a group of the same number and no supplementary
//! groups), picked from a range that has no entry in the password database.
//! The server's files are closed to them: only the paths a replica needs are
//! searchable by others (the runtime and environment directories, 0711, so
//! nothing can be listed), the bento, model and environment trees belong to
//! the server and are read-only to replicas, and each replica gets a home
//! and temp directory of its own, removed when it stops.
//!
//! Without root the server cannot switch users: replicas run as the server's
//! user and can read everything it can (logged at start; see the README).

use std::collections::HashSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// A range of user ids for replicas: `FIRST-LAST`, inclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdRange {
    pub first: u32,
    pub last: u32,
}

impl FromStr for IdRange {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not a user id range: use FIRST-LAST, e.g. 1500000000-1500999999");
        let (a, b) = s.trim().split_once('-').ok_or_else(bad)?;
        let first: u32 = a.trim().parse().map_err(|_| bad())?;
        let last: u32 = b.trim().parse().map_err(|_| bad())?;
        if first < 1000 || last < first || last > i32::MAX as u32 {
            return Err(format!("{s:?}: the range must lie between 1000 and {} and not be empty", i32::MAX));
        }
        Ok(IdRange { first, last })
    }
}

impl IdRange {
    /// An id for a deployment: the id its uid hashes to, or the next free one
    /// after it. Free means not used by another deployment of this server
    /// (`taken`), not a user of the machine, and owning no process (another
    /// server on the same machine may use the same range).
    pub fn pick(&self, seed: &str, taken: &HashSet<u32>) -> Option<u32> {
        let span = u64::from(self.last - self.first) + 1;
        let start =
            seed.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
        let busy = process_owners();
        (0..span.min(100_000))
            .map(|i| self.first + ((start.wrapping_add(i)) % span) as u32)
            .find(|id| !taken.contains(id) && !busy.contains(id) && !is_known_user(*id))
    }
}

/// Whether the server can run replicas as other users.
pub fn can_switch_users() -> bool {
    // SAFETY: geteuid(2) has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn is_known_user(uid: u32) -> bool {
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 4096];
    let mut out: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: getpwuid_r(3) writes into `pwd` and `buf`, which outlive the call.
    let rc = unsafe { libc::getpwuid_r(uid, &mut pwd, buf.as_mut_ptr(), buf.len(), &mut out) };
    rc == 0 && !out.is_null()
}

/// Real user ids of every running process.
fn process_owners() -> HashSet<u32> {
    let mut out = HashSet::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        if !e.file_name().to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(status) = std::fs::read_to_string(e.path().join("status")) else { continue };
        if let Some(uid) = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|r| r.split_whitespace().next())
            .and_then(|u| u.parse().ok())
        {
            out.insert(uid);
        }
    }
    out
}

/// Creates `dir` (and parents) and sets its mode.
pub fn dir_with_mode(dir: &Path, mode: u32) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
}

/// The first ancestor of `path` (or `path` itself, a directory) that other
/// users cannot search, if any: replicas running as another user cannot
/// reach anything below it.
pub fn closed_ancestor(path: &Path) -> Option<PathBuf> {
    let path = path.canonicalize().ok()?;
    path.ancestors()
        .find(|a| a.metadata().is_ok_and(|m| m.is_dir() && m.permissions().mode() & 0o001 == 0))
        .map(Path::to_path_buf)
}

/// An executable that other users can run: every directory above it is
/// searchable by others, and the file is readable and executable by them.
pub fn usable_by_others(path: &Path) -> bool {
    let Ok(real) = path.canonicalize() else { return false };
    let file_ok = real.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o005 == 0o005);
    file_ok && real.parent().is_some_and(|p| closed_ancestor(p).is_none())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse_and_pick_free_ids() {
        let r: IdRange = "1500000000-1500000009".parse().unwrap();
        assert_eq!(r, IdRange { first: 1_500_000_000, last: 1_500_000_009 });
        assert!("10-5".parse::<IdRange>().is_err());
        assert!("0-100".parse::<IdRange>().is_err(), "root and system ids are refused");
        assert!("abc".parse::<IdRange>().is_err());
        let a = r.pick("deployment-a", &HashSet::new()).unwrap();
        assert!((r.first..=r.last).contains(&a));
        let b = r.pick("deployment-a", &HashSet::from([a])).unwrap();
        assert_ne!(a, b, "an id in use by another deployment is not given again");
        let all: HashSet<u32> = (r.first..=r.last).collect();
        assert_eq!(r.pick("x", &all), None);
    }

    #[test]
    fn known_users_are_never_picked() {
        // uid 0 is in every password database; a range holding only it is refused at parse,
        // so check the lookup itself.
        assert!(is_known_user(0));
        assert!(!is_known_user(1_500_000_123));
    }
}
