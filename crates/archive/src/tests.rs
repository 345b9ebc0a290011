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
