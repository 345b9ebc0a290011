//! Property test: random archives of directories, files, symlinks and hard links, built from a
//! few reused names and targets like `.`, `..`, `../..` so that links chain through each other
//! (the shape of the `a -> .`, `a/a/up -> ../..` attack). Whatever the archive, extraction
//! either fails or yields a tree whose every link resolves inside it; and in both cases nothing
//! outside the destination is created, changed or pulled in by a hard link.
//!
//! A fixed-seed generator keeps failures reproducible; the failing case's entries are printed.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

const CASES: usize = 1200;
/// Directory and link names, few so that entries run into each other's links.
const NAMES: &[&str] = &["a", "b", "up"];
/// File names; the canary's is also outside, so overwriting it through a link would show.
const LEAVES: &[&str] = &["canary.txt", "ESCAPED.txt", "a"];

#[derive(Debug, Clone)]
enum Entry {
    Dir(String),
    File(String),
    Symlink(String, String),
    HardLink(String, String),
}

fn pick<'a>(rng: &mut fastrand::Rng, from: &[&'a str]) -> &'a str {
    from[rng.usize(..from.len())]
}

/// A path that often starts at a link made earlier and goes on below it.
fn path(rng: &mut fastrand::Rng, links: &[String]) -> String {
    let mut p = match links.is_empty() || rng.bool() {
        true => pick(rng, NAMES).to_string(),
        false => links[rng.usize(..links.len())].clone(),
    };
    for _ in 0..rng.usize(..=3) {
        p = format!("{p}/{}", pick(rng, NAMES));
    }
    p
}

/// `.`, `..`, `../..`, … optionally followed by a name.
fn target(rng: &mut fastrand::Rng) -> String {
    let ups = rng.usize(..=4);
    let mut t = if ups == 0 { ".".to_string() } else { vec![".."; ups].join("/") };
    if rng.usize(..3) == 0 {
        t = format!("{t}/{}", pick(rng, &[NAMES, LEAVES].concat()));
    }
    t
}

fn generate(rng: &mut fastrand::Rng) -> Vec<Entry> {
    let mut links: Vec<String> = Vec::new();
    let mut out = Vec::new();
    for _ in 0..rng.usize(2..=8) {
        let p = path(rng, &links);
        out.push(match rng.usize(..20) {
            0..=8 => {
                links.push(p.clone());
                Entry::Symlink(p, target(rng))
            }
            9..=14 => Entry::File(format!("{p}/{}", pick(rng, LEAVES))),
            15..=17 => Entry::HardLink(
                p,
                match rng.bool() {
                    true => format!("{}/canary.txt", path(rng, &links)),
                    false => format!("{}/canary.txt", target(rng)),
                },
            ),
            _ => Entry::Dir(p),
        });
    }
    out
}

fn header(kind: tar::EntryType, name: &str, link: &str, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_size(size);
    h.set_mode(0o644);
    h.set_entry_type(kind);
    // Raw names: `set_path`/`set_link_name` refuse `..`, and hostile archives hold them.
    h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
    h.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
    h.set_cksum();
    h
}

fn archive(entries: &[Entry]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let (h, data): (_, &[u8]) = match e {
            Entry::Dir(p) => (header(tar::EntryType::Directory, &format!("{p}/"), "", 0), b""),
            Entry::File(p) => (header(tar::EntryType::Regular, p, "", 7), b"ESCAPED"),
            Entry::Symlink(p, t) => (header(tar::EntryType::Symlink, p, t, 0), b""),
            Entry::HardLink(p, t) => (header(tar::EntryType::Link, p, t, 0), b""),
        };
        b.append(&h, data).unwrap();
    }
    b.into_inner().unwrap()
}

/// What a path is, without following links: enough to see any change.
#[derive(Debug, PartialEq)]
enum Node {
    Dir,
    File(Vec<u8>, u64),
    Link(PathBuf),
}

/// Everything below `dir` except the destination and its staging directory.
fn snapshot(base: &Path, dir: &Path, skip: &dyn Fn(&Path) -> bool, out: &mut BTreeMap<PathBuf, Node>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if skip(&p) {
            continue;
        }
        let m = std::fs::symlink_metadata(&p).unwrap();
        let rel = p.strip_prefix(base).unwrap().to_path_buf();
        if m.file_type().is_symlink() {
            out.insert(rel, Node::Link(std::fs::read_link(&p).unwrap()));
        } else if m.is_dir() {
            out.insert(rel, Node::Dir);
            snapshot(base, &p, skip, out);
        } else {
            out.insert(rel, Node::File(std::fs::read(&p).unwrap(), m.ino()));
        }
    }
}

/// Every link of the extracted tree resolves (if it resolves at all) inside it, and no file in it
/// shares an inode with a file outside.
fn check_tree(root: &Path, dir: &Path, outside_inodes: &[u64]) -> Result<(), String> {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        let m = std::fs::symlink_metadata(&p).unwrap();
        if m.file_type().is_symlink() {
            if let Ok(real) = std::fs::canonicalize(&p)
                && !real.starts_with(root)
            {
                return Err(format!("{} resolves to {} outside", p.display(), real.display()));
            }
        } else if m.is_dir() {
            check_tree(root, &p, outside_inodes)?;
        } else if outside_inodes.contains(&m.ino()) {
            return Err(format!("{} is a hard link to a file outside", p.display()));
        }
    }
    Ok(())
}

#[test]
fn random_link_chains_never_reach_outside_the_destination() {
    let scene = tempfile::tempdir().unwrap();
    // The destination sits deep in the scene, so that a broken extractor's escapes (a few levels
    // per link) land in the snapshot rather than in the machine's /tmp.
    let top = std::fs::canonicalize(scene.path()).unwrap();
    let base = top.join("l1/l2/l3/l4/l5/l6/l7/l8");
    for d in ["data/sub/side", "data/a"] {
        std::fs::create_dir_all(base.join(d)).unwrap();
    }
    for f in ["canary.txt", "data/canary.txt", "data/sub/canary.txt", "data/sub/side/canary.txt", "data/a/canary.txt"] {
        std::fs::write(base.join(f), b"untouched").unwrap();
    }
    std::fs::write(top.join("canary.txt"), b"untouched").unwrap();
    let sub = base.join("data/sub");
    let dest = sub.join("out");
    let skip = |p: &Path| p.parent() == Some(&sub) && p.file_name().unwrap().to_string_lossy().contains("out");
    let mut before = BTreeMap::new();
    snapshot(&top, &top, &skip, &mut before);
    let outside_inodes: Vec<u64> =
        before.values().filter_map(|n| if let Node::File(_, ino) = n { Some(*ino) } else { None }).collect();

    let mut rng = fastrand::Rng::with_seed(0x5EC_A2C1);
    let (mut ok, mut refused) = (0, 0);
    for case in 0..CASES {
        let entries = generate(&mut rng);
        let result = yatai_archive::extract(archive(&entries).as_slice(), &dest);
        let mut after = BTreeMap::new();
        snapshot(&top, &top, &skip, &mut after);
        assert_eq!(before, after, "case {case}: something outside changed ({result:?}) with {entries:#?}");
        match result {
            Ok(()) => {
                ok += 1;
                if let Err(e) = check_tree(&dest, &dest, &outside_inodes) {
                    panic!("case {case}: {e} with {entries:#?}");
                }
                std::fs::remove_dir_all(&dest).unwrap();
            }
            Err(_) => {
                refused += 1;
                assert!(!dest.exists(), "case {case}: a refused archive left {}", dest.display());
            }
        }
    }
    // Both outcomes are exercised, or the property says nothing.
    assert!(ok > CASES / 20 && refused > CASES / 20, "{ok} extracted, {refused} refused");
}
