//! Deterministic layer tars, and the archive formats fetched bentos and models arrive in.
//!
//! A layer is described as a sorted map of paths to entries with explicit owner and mode, then
//! written with hand-made headers: no `./` entry, numeric owners only, one fixed mtime, modes
//! normalised (0755 for directories and executables, 0644 otherwise), hard links written in full.
//! The same tree therefore always gives the same bytes, whatever the umask, the file system's
//! `read_dir` order or the staging path.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

/// The mtime of every entry of every layer. 1980-01-01: avoids tools that refuse pre-1980 times
/// (zip), and is shared by all layers so a deps or model layer never depends on the bento.
pub const LAYER_MTIME: u64 = 315_532_800;

/// The user BentoML's Dockerfile creates (`bentoml`, 1034:1034).
pub const BENTO_UID: u64 = 1034;

#[derive(Debug, Clone)]
pub enum Source {
    /// A file on disk (read when the tar is written).
    Path(PathBuf),
    /// Content held in memory (small generated files).
    Bytes(Vec<u8>),
}

#[derive(Debug, Clone)]
pub enum Entry {
    Dir {
        uid: u64,
    },
    File {
        src: Source,
        executable: bool,
        uid: u64,
    },
    Symlink {
        target: String,
        uid: u64,
    },
    /// Kept with its own mode and owners (files written by commands run in the base, where
    /// setuid bits, 0640 secrets and group owners matter). Only the mtime is normalised.
    Exact {
        kind: ExactKind,
        mode: u32,
        uid: u64,
        gid: u64,
    },
}

#[derive(Debug, Clone)]
pub enum ExactKind {
    Dir,
    File(PathBuf),
    Symlink(String),
    /// An empty regular file (overlay whiteouts: `.wh.<name>`, `.wh..wh..opq`).
    Empty,
}

/// A layer's content: paths relative to `/` (no leading `/`, no `./`), sorted.
#[derive(Debug, Default, Clone)]
pub struct Tree {
    entries: BTreeMap<String, Entry>,
}

impl Tree {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn paths(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    /// Adds a directory and, when missing, its parents; `owner` decides the uid of each.
    pub fn dir(&mut self, path: &str, owner: &dyn Fn(&str) -> u64) {
        let path = path.trim_matches('/');
        if path.is_empty() {
            return;
        }
        let mut acc = String::new();
        for part in path.split('/') {
            if !acc.is_empty() {
                acc.push('/');
            }
            acc.push_str(part);
            let uid = owner(&acc);
            self.entries.entry(acc.clone()).or_insert(Entry::Dir { uid });
        }
    }

    pub fn file(&mut self, path: &str, src: Source, executable: bool, owner: &dyn Fn(&str) -> u64) {
        let path = path.trim_matches('/').to_string();
        if let Some((parent, _)) = path.rsplit_once('/') {
            self.dir(parent, owner);
        }
        let uid = owner(&path);
        self.entries.insert(path, Entry::File { src, executable, uid });
    }

    pub fn symlink(&mut self, path: &str, target: &str, owner: &dyn Fn(&str) -> u64) {
        let path = path.trim_matches('/').to_string();
        if let Some((parent, _)) = path.rsplit_once('/') {
            self.dir(parent, owner);
        }
        let uid = owner(&path);
        self.entries.insert(path, Entry::Symlink { target: target.to_string(), uid });
    }

    /// Adds an entry with its own metadata; parents must be added by the caller.
    pub fn exact(&mut self, path: &str, kind: ExactKind, mode: u32, uid: u64, gid: u64) {
        self.entries.insert(path.trim_matches('/').to_string(), Entry::Exact { kind, mode, uid, gid });
    }

    /// Adds everything under `src` (not `src` itself) below `dest`, skipping paths for which
    /// `skip(relative path)` is true. Sockets, fifos and devices are refused.
    pub fn add_dir_all(
        &mut self,
        src: &Path,
        dest: &str,
        owner: &dyn Fn(&str) -> u64,
        skip: &dyn Fn(&str) -> bool,
    ) -> anyhow::Result<()> {
        let dest = dest.trim_matches('/');
        self.dir(dest, owner);
        self.walk(src, src, dest, owner, skip)
    }

    fn walk(
        &mut self,
        root: &Path,
        dir: &Path,
        dest: &str,
        owner: &dyn Fn(&str) -> u64,
        skip: &dyn Fn(&str) -> bool,
    ) -> anyhow::Result<()> {
        let rd = fs::read_dir(dir).with_context(|| format!("reading directory {}", dir.display()))?;
        for item in rd {
            let item = item?;
            let path = item.path();
            let rel = path.strip_prefix(root).expect("walk stays under root");
            let rel = rel.to_str().with_context(|| format!("non-UTF-8 path {}", path.display()))?;
            if skip(rel) {
                continue;
            }
            let target = if dest.is_empty() { rel.to_string() } else { format!("{dest}/{rel}") };
            let meta = fs::symlink_metadata(&path)?;
            let ft = meta.file_type();
            if ft.is_symlink() {
                let link = fs::read_link(&path)?;
                let link = link.to_str().context("non-UTF-8 symlink target")?.to_string();
                self.symlink(&target, &link, owner);
            } else if ft.is_dir() {
                self.dir(&target, owner);
                self.walk(root, &path, dest, owner, skip)?;
            } else if ft.is_file() {
                let executable = meta.permissions().mode() & 0o111 != 0;
                self.file(&target, Source::Path(path.clone()), executable, owner);
            } else {
                bail!("{} is neither a file, a directory nor a symlink", path.display());
            }
        }
        Ok(())
    }

    /// Writes the tar (no end-of-archive padding beyond the two zero blocks tar-rs writes).
    pub fn write_to<W: Write>(&self, out: W) -> anyhow::Result<W> {
        let mut b = tar::Builder::new(out);
        b.follow_symlinks(false);
        for (path, entry) in &self.entries {
            let mut h = tar::Header::new_gnu();
            h.set_mtime(LAYER_MTIME);
            h.set_username("").ok();
            h.set_groupname("").ok();
            match entry {
                Entry::Dir { uid } => {
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_mode(0o755);
                    h.set_uid(*uid);
                    h.set_gid(*uid);
                    h.set_size(0);
                    b.append_data(&mut h, format!("{path}/"), io::empty())?;
                }
                Entry::Symlink { target, uid } => {
                    h.set_entry_type(tar::EntryType::Symlink);
                    h.set_mode(0o777);
                    h.set_uid(*uid);
                    h.set_gid(*uid);
                    h.set_size(0);
                    b.append_link(&mut h, path, target)?;
                }
                Entry::Exact { kind, mode, uid, gid } => {
                    h.set_mode(*mode & 0o7777);
                    h.set_uid(*uid);
                    h.set_gid(*gid);
                    match kind {
                        ExactKind::Dir => {
                            h.set_entry_type(tar::EntryType::Directory);
                            h.set_size(0);
                            b.append_data(&mut h, format!("{path}/"), io::empty())?;
                        }
                        ExactKind::Symlink(target) => {
                            h.set_entry_type(tar::EntryType::Symlink);
                            h.set_size(0);
                            b.append_link(&mut h, path, target)?;
                        }
                        ExactKind::Empty => {
                            h.set_entry_type(tar::EntryType::Regular);
                            h.set_size(0);
                            b.append_data(&mut h, path, io::empty())?;
                        }
                        ExactKind::File(p) => {
                            h.set_entry_type(tar::EntryType::Regular);
                            let f = File::open(p).with_context(|| format!("opening {}", p.display()))?;
                            let len = f.metadata()?.len();
                            h.set_size(len);
                            b.append_data(&mut h, path, f.take(len))?;
                        }
                    }
                }
                Entry::File { src, executable, uid } => {
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_mode(if *executable { 0o755 } else { 0o644 });
                    h.set_uid(*uid);
                    h.set_gid(*uid);
                    match src {
                        Source::Bytes(data) => {
                            h.set_size(data.len() as u64);
                            b.append_data(&mut h, path, data.as_slice())?;
                        }
                        Source::Path(p) => {
                            let f = File::open(p).with_context(|| format!("opening {}", p.display()))?;
                            let len = f.metadata()?.len();
                            h.set_size(len);
                            // `take` guards against a file growing while it is read.
                            b.append_data(&mut h, path, f.take(len))
                                .with_context(|| format!("adding {} to a layer", p.display()))?;
                        }
                    }
                }
            }
        }
        Ok(b.into_inner()?)
    }
}

/// Archive formats a bento or model may arrive in: what `bentoml export` writes (`.bento` is
/// tar.xz, `.tar.gz`), what the yatai server serves (plain tar).
pub fn open_archive(path: &Path) -> anyhow::Result<Box<dyn Read>> {
    let mut f = File::open(path).with_context(|| format!("opening archive {}", path.display()))?;
    let mut magic = [0u8; 6];
    let n = f.read(&mut magic)?;
    let f = File::open(path)?;
    let magic = &magic[..n];
    Ok(if magic.starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::read::MultiGzDecoder::new(io::BufReader::new(f)))
    } else if magic.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        Box::new(liblzma::read::XzDecoder::new_multi_decoder(io::BufReader::new(f)))
    } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Box::new(zstd::stream::read::Decoder::new(f)?)
    } else {
        Box::new(io::BufReader::new(f))
    })
}

/// Extracts a bento or model archive into `dest` (which must not exist yet) the way the server
/// does: nothing is written through a link, every link must resolve inside, hard links only to
/// files the archive holds (see `yatai_archive`).
pub fn extract_safe(reader: impl Read, dest: &Path) -> anyhow::Result<()> {
    Ok(yatai_archive::extract(reader, dest)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn root_owner(_: &str) -> u64 {
        0
    }

    #[test]
    fn same_tree_gives_same_bytes_whatever_the_staging_dir_and_modes() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        for (d, mode) in [(a.path(), 0o700), (b.path(), 0o755)] {
            fs::create_dir_all(d.join("z/y")).unwrap();
            fs::write(d.join("z/y/f.txt"), b"hello").unwrap();
            fs::write(d.join("a.sh"), b"#!/bin/sh\n").unwrap();
            fs::set_permissions(d.join("a.sh"), fs::Permissions::from_mode(0o700)).unwrap();
            fs::set_permissions(d.join("z"), fs::Permissions::from_mode(mode)).unwrap();
            std::os::unix::fs::symlink("y/f.txt", d.join("z/link")).unwrap();
        }
        let tar_of = |d: &Path| {
            let mut t = Tree::new();
            t.add_dir_all(d, "home/x", &|p| if p.starts_with("home/x") { 7 } else { 0 }, &|_| false).unwrap();
            t.write_to(Vec::new()).unwrap()
        };
        let (ta, tb) = (tar_of(a.path()), tar_of(b.path()));
        assert_eq!(ta, tb);

        let mut ar = tar::Archive::new(ta.as_slice());
        let got: Vec<(String, u32, u64, u64)> = ar
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let h = e.header();
                (
                    e.path().unwrap().to_string_lossy().into_owned(),
                    h.mode().unwrap(),
                    h.uid().unwrap(),
                    h.mtime().unwrap(),
                )
            })
            .collect();
        let names: Vec<&str> = got.iter().map(|g| g.0.as_str()).collect();
        assert_eq!(
            names,
            ["home/", "home/x/", "home/x/a.sh", "home/x/z/", "home/x/z/link", "home/x/z/y/", "home/x/z/y/f.txt"]
        );
        assert_eq!(got[0].2, 0, "home/ stays root-owned");
        assert_eq!(got[1].2, 7);
        assert_eq!(got[2].1, 0o755, "executable keeps an execute bit");
        assert_eq!(got[3].1, 0o755, "0700 directories are normalised");
        assert_eq!(got[6].1, 0o644);
        assert!(got.iter().all(|g| g.3 == LAYER_MTIME));
    }

    #[test]
    fn long_paths_survive() {
        let mut t = Tree::new();
        let long = format!("app/{}/file", "d".repeat(150));
        t.file(&long, Source::Bytes(b"x".to_vec()), false, &root_owner);
        let bytes = t.write_to(Vec::new()).unwrap();
        let mut ar = tar::Archive::new(bytes.as_slice());
        let names: Vec<String> =
            ar.entries().unwrap().map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned()).collect();
        assert!(names.contains(&long));
    }

    #[test]
    fn extraction_refuses_escaping_members() {
        // Corners no real bento archive produces; built by hand to check the guard.
        let archive = |links: &[(tar::EntryType, &str, &str)]| {
            let mut b = tar::Builder::new(Vec::new());
            for (kind, path, target) in links {
                let mut h = tar::Header::new_gnu();
                h.set_entry_type(*kind);
                h.set_size(0);
                h.set_mode(0o777);
                b.append_link(&mut h, path, target).unwrap();
            }
            b.into_inner().unwrap()
        };
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join("secret"), b"outside").unwrap();
        let dest = d.path().join("work/bento");
        let out = archive(&[(tar::EntryType::Symlink, "evil", "../../etc/passwd")]);
        let err = extract_safe(out.as_slice(), &dest).unwrap_err();
        assert!(err.to_string().contains("outside"), "{err}");
        // `a -> .` makes `a/a/up` sit at the top, so `../..` leads above `work/`; the hard link
        // would pull `secret` into the bento.
        let chain = archive(&[
            (tar::EntryType::Symlink, "a", "."),
            (tar::EntryType::Symlink, "a/a/up", "../.."),
            (tar::EntryType::Link, "stolen", "up/secret"),
        ]);
        let err = extract_safe(chain.as_slice(), &dest).unwrap_err();
        assert!(err.to_string().contains("unsafe"), "{err}");
        assert!(!dest.exists());
        assert_eq!(fs::metadata(d.path().join("secret")).unwrap().nlink(), 1);
    }
}
