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

fn symlink(b: &mut tar::Builder<Vec<u8>>, path: &str, target: &str) {
    link(b, tar::EntryType::Symlink, path, target)
}

fn hardlink(b: &mut tar::Builder<Vec<u8>>, path: &str, target: &str) {
    link(b, tar::EntryType::Link, path, target)
}

/// A data directory with a canary next to where archives are extracted (`data/sub/out`).
struct Scene {
    dir: tempfile::TempDir,
}

impl Scene {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("data/sub")).unwrap();
        std::fs::write(dir.path().join("data/canary.txt"), b"untouched").unwrap();
        std::fs::write(dir.path().join("canary.txt"), b"untouched").unwrap();
        Scene { dir }
    }

    fn dest(&self) -> PathBuf {
        self.dir.path().join("data/sub/out")
    }

    /// Nothing changed outside the destination, and the destination is absent.
    fn assert_untouched(&self, what: &str) {
        let d = self.dir.path();
        assert_eq!(std::fs::read(d.join("data/canary.txt")).unwrap(), b"untouched", "{what}");
        assert_eq!(std::fs::read(d.join("canary.txt")).unwrap(), b"untouched", "{what}");
        for p in ["ESCAPED.txt", "data/ESCAPED.txt", "data/sub/ESCAPED.txt", "evil", "data/evil"] {
            assert!(std::fs::symlink_metadata(d.join(p)).is_err(), "{what}: {p} was written");
        }
        assert!(!self.dest().exists(), "{what}: destination left behind");
        let leftovers: Vec<_> = std::fs::read_dir(d.join("data/sub")).unwrap().collect();
        assert!(leftovers.is_empty(), "{what}: {leftovers:?}");
    }
}

fn refused(what: &str, data: &[u8]) -> ArchiveError {
    let scene = Scene::new();
    let err = extract(data, &scene.dest()).expect_err(what);
    scene.assert_untouched(what);
    err
}

#[test]
fn extracts_a_bento_shaped_archive() {
    let data = tar_with(|b| {
        file(b, "./bento.yaml", b"name: x");
        symlink(b, "./src/alias.py", "service.py"); // before its target, as tar may order it
        file(b, "./src/service.py", b"print()");
        symlink(b, "./src/pkg", ".");
        symlink(b, "./env/up", "../src/pkg/./pkg");
        hardlink(b, "./copy.yaml", "./bento.yaml");
        symlink(b, "./dangling", "not/there");
    });
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("out");
    extract(&data[..], &dest).unwrap();
    assert_eq!(std::fs::read(dest.join("src/service.py")).unwrap(), b"print()");
    assert_eq!(std::fs::read(dest.join("src/alias.py")).unwrap(), b"print()");
    assert_eq!(std::fs::read(dest.join("env/up/service.py")).unwrap(), b"print()");
    assert_eq!(std::fs::read(dest.join("copy.yaml")).unwrap(), b"name: x");
}

#[test]
fn refuses_escapes_and_leaves_nothing() {
    let hostile: Vec<(&str, Vec<u8>)> = vec![
        ("parent", tar_with(|b| file(b, "../evil", b"x"))),
        ("nested parent", tar_with(|b| file(b, "./a/../../evil", b"x"))),
        ("absolute", tar_with(|b| file(b, "/tmp/evil", b"x"))),
        ("symlink out", tar_with(|b| symlink(b, "./l", "../../etc"))),
        ("absolute symlink", tar_with(|b| symlink(b, "./l", "/etc/passwd"))),
        ("hard link out", tar_with(|b| hardlink(b, "./l", "/etc/passwd"))),
        ("hard link up", tar_with(|b| hardlink(b, "./l", "../x"))),
    ];
    for (what, data) in hostile {
        let err = refused(what, &data);
        assert!(matches!(err, ArchiveError::Unsafe(..)), "{what}: {err}");
    }
}

/// The reported attack: `a -> .` makes `a/a/a/a/up -> ../../../..` look one level deep while it
/// sits at the top, so `up` leads two levels above the destination.
#[test]
fn refuses_writes_through_a_chain_of_links() {
    let data = tar_with(|b| {
        symlink(b, "a", ".");
        symlink(b, "a/a/a/a/up", "../../../..");
        file(b, "up/ESCAPED.txt", b"pwned");
        file(b, "up/canary.txt", b"pwned");
    });
    let err = refused("link chain", &data);
    assert!(err.to_string().contains("a/a/a/a/up"), "{err}");
}

#[test]
fn refuses_a_link_whose_chain_leads_out_even_without_writes() {
    // No entry goes through `up`, but `bentoml serve` or the image builder would read through it.
    let data = tar_with(|b| {
        symlink(b, "a", ".");
        symlink(b, "b", "a/a/a/..");
    });
    let err = refused("chain without writes", &data);
    assert!(err.to_string().contains("through other links"), "{err}");
    // The link that makes a later one escape may come after it.
    let data = tar_with(|b| {
        symlink(b, "b", "x/x/../..");
        symlink(b, "x", ".");
    });
    refused("chain completed later", &data);
    // A `..` out of a path that does not exist yet.
    let data = tar_with(|b| {
        symlink(b, "b", "later/..");
    });
    refused("dangling climb", &data);
}

#[test]
fn refuses_hard_links_that_pull_files_in_through_links() {
    let data = tar_with(|b| {
        symlink(b, "a", ".");
        symlink(b, "a/a/up", "../..");
        hardlink(b, "stolen", "up/canary.txt");
    });
    let err = refused("hard link through a link chain", &data);
    assert!(matches!(err, ArchiveError::Unsafe(..)), "{err}");
    let hostile = vec![
        (
            "hard link to a link",
            tar_with(|b| {
                symlink(b, "l", "x");
                hardlink(b, "h", "l");
            }),
        ),
        (
            "hard link to a directory",
            tar_with(|b| {
                link(b, tar::EntryType::Directory, "d/", "");
                hardlink(b, "h", "d");
            }),
        ),
        (
            "hard link to a later file",
            tar_with(|b| {
                hardlink(b, "h", "f");
                file(b, "f", b"x");
            }),
        ),
    ];
    for (what, data) in hostile {
        let err = refused(what, &data);
        assert!(matches!(err, ArchiveError::Unsafe(..)), "{what}: {err}");
    }
}

#[test]
fn refuses_replacing_what_the_archive_already_made() {
    let hostile = vec![
        (
            "file over a link",
            tar_with(|b| {
                symlink(b, "l", "x");
                file(b, "l", b"x");
            }),
        ),
        (
            "link over a file",
            tar_with(|b| {
                file(b, "f", b"x");
                symlink(b, "f", "x");
            }),
        ),
        (
            "directory over a link",
            tar_with(|b| {
                symlink(b, "l", ".");
                link(b, tar::EntryType::Directory, "l/", "");
            }),
        ),
        (
            "file twice",
            tar_with(|b| {
                file(b, "f", b"x");
                file(b, "f", b"y");
            }),
        ),
        (
            "file below a file",
            tar_with(|b| {
                file(b, "f", b"x");
                file(b, "f/g", b"y");
            }),
        ),
    ];
    for (what, data) in hostile {
        let err = refused(what, &data);
        assert!(matches!(err, ArchiveError::Unsafe(..)), "{what}: {err}");
    }
}

#[test]
fn refuses_loops_of_links() {
    let data = tar_with(|b| {
        symlink(b, "x", "y/z");
        symlink(b, "y", "x");
    });
    let err = refused("loop", &data);
    assert!(err.to_string().contains("loop"), "{err}");
}

#[test]
fn strips_setuid_bits() {
    let data = tar_with(|b| {
        let mut h = tar::Header::new_gnu();
        h.set_size(1);
        h.set_mode(0o4755);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_path("run").unwrap();
        h.set_cksum();
        b.append(&h, &b"x"[..]).unwrap();
    });
    let dir = tempfile::tempdir().unwrap();
    extract(&data[..], &dir.path().join("o")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(dir.path().join("o/run")).unwrap().permissions().mode() & 0o7777, 0o755);
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
    let err = extract(&b"this is not a tar file at all, not even close................."[..], &dir.path().join("o"));
    assert!(err.is_err());
    assert!(!dir.path().join("o").exists());
}

/// Property test: archives of every entry kind tar can hold (files, directories, symlinks, hard
/// links, character and block devices, fifos), with paths and link targets made of `..`, `.`,
/// empty components, absolute paths, names longer than the filesystem allows and non-ASCII
/// names. Whatever the archive, extraction returns (no panic), nothing outside the destination
/// changes, and an extracted tree holds only directories, files without special bits, and
/// links that resolve inside it.
mod properties {
    use std::collections::BTreeMap;
    use std::os::unix::fs::{FileTypeExt, MetadataExt};

    use proptest::prelude::*;

    use super::*;

    /// Stands for the absolute path of a directory outside the destination, filled in per case
    /// (absolute paths elsewhere would reach the real filesystem if the extractor broke).
    const OUTSIDE: &str = "@OUTSIDE";

    #[derive(Debug, Clone)]
    enum Kind {
        File(Vec<u8>, u32),
        Dir,
        Symlink(String),
        HardLink(String),
        Char,
        Block,
        Fifo,
    }

    fn component() -> impl Strategy<Value = String> {
        prop_oneof![
            6 => prop::sample::select(vec!["a", "b", "up", "canary.txt"]).prop_map(str::to_owned),
            2 => Just("..".to_owned()),
            1 => Just(".".to_owned()),
            1 => Just(String::new()),
            1 => prop::sample::select(vec!["é", "日本", "a b", "\u{202e}txt"]).prop_map(str::to_owned),
            1 => prop_oneof![Just("x".repeat(120)), Just("y".repeat(300))],
        ]
    }

    fn path() -> impl Strategy<Value = String> {
        let relative = || prop::collection::vec(component(), 1..5).prop_map(|c| c.join("/"));
        prop_oneof![
            8 => relative(),
            1 => relative().prop_map(|p| format!("{OUTSIDE}/{p}")),
            1 => relative().prop_map(|p| format!("./{p}/")),
            1 => Just("/".to_owned()),
        ]
    }

    fn target() -> impl Strategy<Value = String> {
        prop_oneof![
            4 => path(),
            2 => prop::sample::select(vec![".", "..", "../..", "../../..", "a/../..", "canary.txt"]).prop_map(str::to_owned),
            // Lexically inside, but out once `a -> .` or `up -> ..` is followed.
            2 => prop::sample::select(vec!["a/a/..", "a/a/a/../../..", "a/up", "up/..", "b/../.."]).prop_map(str::to_owned),
            1 => Just(format!("{OUTSIDE}/canary.txt")),
            1 => Just(OUTSIDE.to_owned()),
        ]
    }

    fn kind() -> impl Strategy<Value = Kind> {
        prop_oneof![
            4 => (prop::collection::vec(any::<u8>(), 0..16), 0u32..0o10000).prop_map(|(d, m)| Kind::File(d, m)),
            2 => Just(Kind::Dir),
            3 => target().prop_map(Kind::Symlink),
            2 => target().prop_map(Kind::HardLink),
            1 => prop_oneof![Just(Kind::Char), Just(Kind::Block), Just(Kind::Fifo)],
        ]
    }

    /// An entry a client would send: plain names, files, directories and links within.
    fn benign() -> impl Strategy<Value = (String, Kind)> {
        let name = || prop::sample::select(vec!["a", "b", "c", "d", "é", "日本"]);
        let path = prop::collection::vec(name(), 1..4).prop_map(|c| c.join("/"));
        let kind = prop_oneof![
            3 => (prop::collection::vec(any::<u8>(), 0..16), 0u32..0o10000).prop_map(|(d, m)| Kind::File(d, m)),
            2 => Just(Kind::Dir),
            1 => prop::sample::select(vec!["a", "b", "c", "."]).prop_map(|t| Kind::Symlink(t.to_owned())),
        ];
        (path, kind)
    }

    /// Mostly what clients send, with hostile entries mixed in, so that both extraction and
    /// refusal are exercised.
    fn entries() -> impl Strategy<Value = Vec<(String, Kind)>> {
        let one = prop_oneof![4 => benign(), 1 => (path(), kind())].prop_map(|e| vec![e]);
        // `a -> .` and a link through it: lexically inside, out once links are followed (the
        // reported attack; tests/link_chains.rs explores these at length).
        let chain = (
            prop::sample::select(vec!["b", "up", "a/a/up", "c/up"]),
            prop::sample::select(vec!["a/a/..", "a/a/a/../../..", "../a/..", "a/b", "."]),
            prop::option::of(prop::sample::select(vec!["up/canary.txt", "up/up/x", "b/c"])),
        )
            .prop_map(|(link, target, write)| {
                let mut group = vec![("a".to_owned(), Kind::Symlink(".".to_owned()))];
                group.push((link.to_owned(), Kind::Symlink(target.to_owned())));
                group.extend(write.map(|w| (w.to_owned(), Kind::File(b"pwned".to_vec(), 0o644))));
                group
            });
        prop::collection::vec(prop_oneof![6 => one, 1 => chain], 1..6).prop_map(|g| g.concat())
    }

    /// A GNU long-name (or long-link) record, which the real entry follows.
    fn long(b: &mut tar::Builder<Vec<u8>>, kind: tar::EntryType, text: &[u8]) {
        let mut h = tar::Header::new_gnu();
        h.as_old_mut().name[..13].copy_from_slice(b"././@LongLink");
        h.set_entry_type(kind);
        h.set_size(text.len() as u64 + 1);
        h.set_cksum();
        b.append(&h, [text, b"\0"].concat().as_slice()).unwrap();
    }

    fn archive(entries: &[(String, Kind)], outside: &str) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (p, kind) in entries {
            let p = p.replace(OUTSIDE, outside);
            let mut h = tar::Header::new_gnu();
            h.set_mode(0o644);
            let (ty, link, data): (_, Option<String>, &[u8]) = match kind {
                Kind::File(d, mode) => {
                    h.set_mode(*mode);
                    (tar::EntryType::Regular, None, d)
                }
                Kind::Dir => (tar::EntryType::Directory, None, b""),
                Kind::Symlink(t) => (tar::EntryType::Symlink, Some(t.replace(OUTSIDE, outside)), b""),
                Kind::HardLink(t) => (tar::EntryType::Link, Some(t.replace(OUTSIDE, outside)), b""),
                Kind::Char => (tar::EntryType::Char, None, b""),
                Kind::Block => (tar::EntryType::Block, None, b""),
                Kind::Fifo => (tar::EntryType::Fifo, None, b""),
            };
            if matches!(ty, tar::EntryType::Char | tar::EntryType::Block) {
                // /dev/null and /dev/loop0: a broken extractor running as root would make them.
                h.set_device_major(if ty == tar::EntryType::Char { 1 } else { 7 }).unwrap();
                h.set_device_minor(if ty == tar::EntryType::Char { 3 } else { 0 }).unwrap();
            }
            // Raw names: `set_path` refuses `..` and absolute paths, and hostile archives hold them.
            if p.len() > 100 {
                long(&mut b, tar::EntryType::GNULongName, p.as_bytes());
            }
            let n = p.len().min(100);
            h.as_old_mut().name[..n].copy_from_slice(&p.as_bytes()[..n]);
            if let Some(link) = &link {
                if link.len() > 100 {
                    long(&mut b, tar::EntryType::GNULongLink, link.as_bytes());
                }
                let n = link.len().min(100);
                h.as_old_mut().linkname[..n].copy_from_slice(&link.as_bytes()[..n]);
            }
            h.set_entry_type(ty);
            h.set_size(data.len() as u64);
            h.set_cksum();
            b.append(&h, data).unwrap();
        }
        b.into_inner().unwrap()
    }

    /// What a path is, without following links: enough to see any change.
    #[derive(Debug, PartialEq)]
    enum Node {
        Dir(u32),
        File(Vec<u8>, u64, u32),
        Link(PathBuf),
        Other(u32),
    }

    /// Everything below `dir` but the destination `skip` and its staging directory.
    fn snapshot(base: &Path, dir: &Path, skip: &Path, out: &mut BTreeMap<PathBuf, Node>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.parent() == skip.parent() && p.file_name().unwrap().to_string_lossy().contains("out") {
                continue;
            }
            let m = std::fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(base).unwrap().to_path_buf();
            let node = if m.file_type().is_symlink() {
                Node::Link(std::fs::read_link(&p).unwrap())
            } else if m.is_dir() {
                snapshot(base, &p, skip, out);
                Node::Dir(m.mode())
            } else if m.is_file() {
                Node::File(std::fs::read(&p).unwrap(), m.ino(), m.mode())
            } else {
                Node::Other(m.mode())
            };
            out.insert(rel, node);
        }
    }

    /// Every entry below `dir` is a plain directory, a file without special bits and not
    /// shared with a file outside, or a link that resolves (if at all) inside `root`.
    fn check_tree(root: &Path, dir: &Path, outside_inodes: &[u64]) -> Result<(), String> {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            let ft = m.file_type();
            if ft.is_symlink() {
                if let Ok(real) = std::fs::canonicalize(&p)
                    && !real.starts_with(root)
                {
                    return Err(format!("{} resolves to {} outside", p.display(), real.display()));
                }
            } else if ft.is_dir() {
                let real = std::fs::canonicalize(&p).unwrap();
                if !real.starts_with(root) {
                    return Err(format!("{} is {} outside", p.display(), real.display()));
                }
                check_tree(root, &p, outside_inodes)?;
            } else if ft.is_file() {
                if m.mode() & 0o7000 != 0 || m.mode() & 0o022 != 0 {
                    return Err(format!("{} has mode {:o}", p.display(), m.mode()));
                }
                if outside_inodes.contains(&m.ino()) {
                    return Err(format!("{} is a hard link to a file outside", p.display()));
                }
            } else {
                let what = if ft.is_char_device() || ft.is_block_device() { "a device" } else { "a fifo or socket" };
                return Err(format!("{} is {what}", p.display()));
            }
        }
        Ok(())
    }

    /// Extracts `entries` in a scene of canaries and checks the property; says whether the
    /// archive was extracted.
    fn check(entries: &[(String, Kind)]) -> Result<bool, TestCaseError> {
        let scene = tempfile::tempdir().unwrap();
        // Deep, so that a broken extractor's climbs (a few levels per entry) land in the scene.
        let top = std::fs::canonicalize(scene.path()).unwrap();
        let base = top.join("l1/l2/l3/l4/l5/l6/l7/l8");
        let outside = base.join("data");
        std::fs::create_dir_all(outside.join("sub/side")).unwrap();
        for f in ["canary.txt", "data/canary.txt", "data/sub/canary.txt", "data/sub/side/canary.txt"] {
            std::fs::write(base.join(f), b"untouched").unwrap();
        }
        let sub = outside.join("sub");
        let dest = sub.join("out");
        let mut before = BTreeMap::new();
        snapshot(&top, &top, &dest, &mut before);
        let outside_inodes: Vec<u64> =
            before.values().filter_map(|n| if let Node::File(_, ino, _) = n { Some(*ino) } else { None }).collect();

        let data = archive(entries, outside.to_str().unwrap());
        let result = extract(data.as_slice(), &dest);

        let mut after = BTreeMap::new();
        snapshot(&top, &top, &dest, &mut after);
        prop_assert_eq!(&before, &after, "something outside changed ({:?})", result);
        let staged: Vec<_> = std::fs::read_dir(&sub)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|n| n.to_string_lossy().contains("partial"))
            .collect();
        prop_assert!(staged.is_empty(), "staging left behind: {:?}", staged);
        match result {
            Ok(()) => check_tree(&dest, &dest, &outside_inodes).map_err(TestCaseError::fail)?,
            Err(e) => prop_assert!(!dest.exists(), "a refused archive left the destination ({})", e),
        }
        Ok(dest.exists())
    }

    const CASES: u32 = 256;

    fn config() -> ProptestConfig {
        ProptestConfig { cases: CASES, failure_persistence: None, ..ProptestConfig::default() }
    }

    #[test]
    fn nothing_is_written_outside_and_only_safe_entries_are_extracted() {
        let (extracted, refused) = (std::cell::Cell::new(0), std::cell::Cell::new(0));
        let mut runner = proptest::test_runner::TestRunner::new(config());
        let outcome = runner.run(&entries(), |entries| {
            match check(&entries)? {
                true => extracted.set(extracted.get() + 1),
                false => refused.set(refused.get() + 1),
            }
            Ok(())
        });
        if let Err(e) = outcome {
            panic!("{e}");
        }
        // Both outcomes are exercised (counted over shrinking too), or the property says little.
        let (cases, extracted, refused) = (CASES as usize, extracted.get(), refused.get());
        assert!(extracted > cases / 10 && refused > cases / 10, "{extracted} extracted, {refused} refused");
    }

    proptest! {
        #![proptest_config(config())]

        #[test]
        fn devices_and_fifos_are_refused(
            before in prop::collection::vec((Just("ok".to_owned()), Just(Kind::Dir)), 0..2),
            kind in prop_oneof![Just(Kind::Char), Just(Kind::Block), Just(Kind::Fifo)],
            name in prop::sample::select(vec!["dev", "a/dev", "./null", "é/loop0"]),
        ) {
            let mut entries = before;
            entries.push((name.to_owned(), kind));
            let dir = tempfile::tempdir().unwrap();
            let result = extract(archive(&entries, "/nonexistent").as_slice(), &dir.path().join("o"));
            prop_assert!(matches!(result, Err(ArchiveError::Unsupported(_))), "{:?}", result);
            check(&entries)?;
        }
    }
}
