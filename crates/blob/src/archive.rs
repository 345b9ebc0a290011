//! What an uploaded archive must be before it becomes a version's content:
//! a tar (plain, as the bentoml client sends it, or gzip-compressed) with at
//! least one member, whose `bento.yaml` / `model.yaml`, when present, can be
//! read back. A pull of anything else fails on the client ("empty file",
//! "not a tar"), so such uploads are refused instead of replacing good bytes.
//!
//! Reading stops as soon as the manifest is found, which the client's tars
//! put near the start of a bento; nothing is extracted.

use std::io::{BufRead, BufReader, Read};
use std::path::Component;

use crate::BlobError;

/// The largest manifest read; real ones are a few KiB.
const MAX_MANIFEST: u64 = 1 << 20;

/// What was found in an acceptable archive.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ArchiveInfo {
    pub gzip: bool,
    /// The manifest member, if the archive has one at its top.
    pub manifest: Option<Manifest>,
}

/// The tag a manifest names (the client takes the tag from it on pull).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Manifest {
    pub name: Option<String>,
    pub version: Option<String>,
}

/// Why an archive is refused, for a person.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArchiveProblem {
    #[error("the archive is empty (0 bytes)")]
    Empty,
    #[error("the archive is not a tar file (plain or gzip-compressed): {0}")]
    NotTar(String),
    #[error("the archive is a tar file with no members")]
    NoMembers,
    #[error("the archive's {0} is larger than 1 MiB")]
    ManifestTooLarge(String),
}

/// Remembers a failure of the underlying storage read, so that it is not
/// mistaken for a malformed archive.
struct Watched<R> {
    inner: R,
    failure: Option<String>,
}

impl<R: Read> Read for Watched<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.inner.read(buf).inspect_err(|e| self.failure = Some(e.to_string()))
    }
}

/// Inspects an archive read from `reader`; `manifest` is the file name at the
/// archive's top to read (`bento.yaml` or `model.yaml`).
pub fn inspect(reader: impl Read, manifest: &str) -> Result<Result<ArchiveInfo, ArchiveProblem>, BlobError> {
    let mut watched = Watched { inner: reader, failure: None };
    let result = inspect_inner(&mut watched, manifest);
    if let Some(failure) = watched.failure {
        return Err(BlobError::Storage(format!("reading the archive back: {failure}")));
    }
    Ok(result)
}

fn inspect_inner(reader: impl Read, manifest: &str) -> Result<ArchiveInfo, ArchiveProblem> {
    let mut buffered = BufReader::with_capacity(64 << 10, reader);
    let head = buffered.fill_buf().map_err(|e| ArchiveProblem::NotTar(e.to_string()))?;
    if head.is_empty() {
        return Err(ArchiveProblem::Empty);
    }
    let gzip = head.starts_with(&[0x1f, 0x8b]);
    let tar_stream: Box<dyn Read + '_> =
        if gzip { Box::new(flate2::bufread::MultiGzDecoder::new(buffered)) } else { Box::new(buffered) };
    let mut archive = tar::Archive::new(tar_stream);
    let entries = archive.entries().map_err(|e| ArchiveProblem::NotTar(e.to_string()))?;
    let mut members = 0u64;
    for entry in entries {
        let mut entry = entry.map_err(|e| ArchiveProblem::NotTar(e.to_string()))?;
        members += 1;
        let path = entry.path().map_err(|e| ArchiveProblem::NotTar(e.to_string()))?;
        let mut parts = path.components().filter(|c| !matches!(c, Component::CurDir));
        let at_top = matches!((parts.next(), parts.next()), (Some(Component::Normal(n)), None) if n == manifest);
        if !at_top || !entry.header().entry_type().is_file() {
            continue;
        }
        let mut text = Vec::new();
        (&mut entry)
            .take(MAX_MANIFEST + 1)
            .read_to_end(&mut text)
            .map_err(|e| ArchiveProblem::NotTar(e.to_string()))?;
        if text.len() as u64 > MAX_MANIFEST {
            return Err(ArchiveProblem::ManifestTooLarge(manifest.to_owned()));
        }
        return Ok(ArchiveInfo { gzip, manifest: Some(parse_manifest(&text)) });
    }
    if members == 0 {
        return Err(ArchiveProblem::NoMembers);
    }
    Ok(ArchiveInfo { gzip, manifest: None })
}

/// The `name` and `version` a manifest names. YAML the server cannot read
/// yields neither (the check is then left to the client).
fn parse_manifest(text: &[u8]) -> Manifest {
    // Only a mapping names anything.
    if !matches!(serde_yaml_ng::from_slice(text), Ok(serde_yaml_ng::Value::Mapping(_))) {
        return Manifest::default();
    }
    // Read as the text written: the client writes with PyYAML, which leaves a
    // version such as `1e5`, `0o17` or `nan` unquoted (YAML 1.1 reads it as
    // text) where YAML 1.2 would read a number, and `100000.0` is not the
    // version pushed. A field that is not a scalar makes the manifest unread.
    #[derive(serde::Deserialize)]
    struct Named {
        name: Option<String>,
        version: Option<String>,
    }
    match serde_yaml_ng::from_slice::<Named>(text) {
        Ok(Named { name, version }) => Manifest { name, version },
        Err(_) => Manifest::default(),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::io::Write;

    use super::*;

    /// A tar with the given members, as Python's tarfile writes it.
    pub fn tar_of(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, data) in files {
            let mut h = tar::Header::new_ustar();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_entry_type(tar::EntryType::Regular);
            b.append_data(&mut h, name, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(bytes).unwrap();
        e.finish().unwrap()
    }

    fn check(bytes: &[u8], manifest: &str) -> Result<ArchiveInfo, ArchiveProblem> {
        inspect(bytes, manifest).unwrap()
    }

    #[test]
    fn plain_and_gzip_tars_are_read_up_to_their_manifest() {
        let tar = tar_of(&[("./README.md", b"hi"), ("./bento.yaml", b"name: svc\nversion: v1\nservice: 'x:Y'\n")]);
        let want = Manifest { name: Some("svc".into()), version: Some("v1".into()) };
        assert_eq!(check(&tar, "bento.yaml").unwrap(), ArchiveInfo { gzip: false, manifest: Some(want.clone()) });
        assert_eq!(check(&gzip(&tar), "bento.yaml").unwrap(), ArchiveInfo { gzip: true, manifest: Some(want) });
        // A member of that name below the top is not the manifest.
        let nested = tar_of(&[("./src/model.yaml", b"name: other\n")]);
        assert_eq!(check(&nested, "model.yaml").unwrap().manifest, None);
    }

    #[test]
    fn empty_and_non_tar_bodies_are_refused() {
        assert_eq!(check(b"", "bento.yaml"), Err(ArchiveProblem::Empty));
        assert!(matches!(check(b"EVIL bytes", "bento.yaml"), Err(ArchiveProblem::NotTar(_))));
        assert!(matches!(check(&[b'x'; 4096], "bento.yaml"), Err(ArchiveProblem::NotTar(_))));
        assert!(matches!(check(&gzip(b"not a tar inside"), "bento.yaml"), Err(ArchiveProblem::NotTar(_))));
        // An end-of-archive marker alone, plain or compressed.
        assert_eq!(check(&[0u8; 10240], "bento.yaml"), Err(ArchiveProblem::NoMembers));
        assert_eq!(check(&gzip(&[0u8; 1024]), "bento.yaml"), Err(ArchiveProblem::NoMembers));
    }

    #[test]
    fn a_truncated_tar_is_refused() {
        let tar = tar_of(&[("./weights.bin", &[7u8; 4000]), ("./model.yaml", b"name: m\n")]);
        assert!(matches!(check(&tar[..1500], "model.yaml"), Err(ArchiveProblem::NotTar(_))));
    }

    #[test]
    fn unreadable_yaml_names_nothing() {
        let tar = tar_of(&[("./model.yaml", b"name: [unclosed\n")]);
        assert_eq!(check(&tar, "model.yaml").unwrap().manifest, Some(Manifest::default()));
    }

    /// Found by the property tests: PyYAML writes these versions unquoted,
    /// and they were read back as numbers (`1e5` as `100000.0`), so the
    /// upload was refused for naming another version.
    #[test]
    fn versions_are_read_as_written() {
        for v in ["1e5", "12e3", "0o17", "nan", "inf", "10", "true"] {
            let m = parse_manifest(format!("name: svc\nversion: {v}\n").as_bytes());
            assert_eq!(m, Manifest { name: Some("svc".into()), version: Some(v.into()) }, "{v}");
        }
        let m = parse_manifest(b"name: svc\nversion: ~\n");
        assert_eq!(m, Manifest { name: Some("svc".into()), version: None });
        assert_eq!(parse_manifest(b"[svc, v1]\n"), Manifest::default());
    }

    #[test]
    fn a_storage_failure_is_not_a_bad_archive() {
        struct Failing;
        impl Read for Failing {
            fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
                Err(std::io::Error::other("bucket unreachable"))
            }
        }
        assert!(matches!(inspect(Failing, "bento.yaml"), Err(BlobError::Storage(_))));
    }
}

/// Property tests: an uploaded archive is whatever bytes the client sent.
#[cfg(test)]
mod properties {
    use std::io::Write;

    use proptest::prelude::*;

    use super::tests::tar_of;
    use super::*;

    /// A valid name or version, as bentoml's regex describes it.
    const PART: &str = "[a-z0-9]([-._a-z0-9]{0,20}[a-z0-9])?";

    /// Versions, with those YAML may read as numbers, booleans or null.
    fn version() -> impl Strategy<Value = String> {
        let numeric = vec![
            "1e5",
            "12e3",
            "1e-5",
            "1.0e5",
            "0o17",
            "0x1f",
            "017",
            "1_000",
            "10",
            "1.10",
            "nan",
            "inf",
            "infinity",
            "true",
            "no",
            "y",
            "null",
            "2024-01-01",
        ];
        prop_oneof![3 => PART.prop_map(String::from), 1 => prop::sample::select(numeric).prop_map(str::to_owned)]
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(bytes).unwrap();
        e.finish().unwrap()
    }

    /// Text that is often YAML and sometimes a mapping with the fields the check reads.
    fn yamlish() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            prop::collection::vec(any::<u8>(), 0..200),
            "[a-z:\\[\\]{}\"'&*!|>#%@`, \n\t-]{0,120}".prop_map(String::into_bytes),
            (PART, "\\PC{0,20}", "[ \n]{0,2}")
                .prop_map(|(n, v, ws)| format!("name: {n}\nversion: {v}{ws}").into_bytes()),
            "(name|version|service): (\\[|\\{|&a |\\*a|!!binary |\\|\n )?[a-z0-9.]{0,8}\n{1,3}"
                .prop_map(String::into_bytes),
        ]
    }

    /// Bytes shaped like uploads: random, gzip of random, tars with a manifest, cut or flipped.
    fn upload() -> impl Strategy<Value = Vec<u8>> {
        let tar = || {
            (yamlish(), prop::collection::vec(any::<u8>(), 0..600), any::<bool>()).prop_map(
                |(manifest, other, first)| {
                    let members: Vec<(&str, &[u8])> = if first {
                        vec![("./bento.yaml", manifest.as_slice()), ("./weights.bin", other.as_slice())]
                    } else {
                        vec![("./src/bento.yaml", other.as_slice()), ("bento.yaml", manifest.as_slice())]
                    };
                    tar_of(&members)
                },
            )
        };
        let damaged = || {
            (tar(), any::<prop::sample::Index>(), any::<u8>(), any::<bool>()).prop_map(|(mut bytes, at, byte, cut)| {
                let i = at.index(bytes.len());
                if cut {
                    bytes.truncate(i)
                } else {
                    bytes[i] = byte
                }
                bytes
            })
        };
        prop_oneof![
            prop::collection::vec(any::<u8>(), 0..2048),
            prop::collection::vec(any::<u8>(), 0..2048).prop_map(|b| gzip(&b)),
            tar(),
            tar().prop_map(|t| gzip(&t)),
            damaged(),
            damaged().prop_map(|t: Vec<u8>| gzip(&t)),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 1024, failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn any_upload_is_judged_without_panicking(bytes in upload()) {
            // Bytes from memory never fail to read: every outcome is a verdict on the archive.
            let verdict = inspect(bytes.as_slice(), "bento.yaml").expect("reading from memory");
            match verdict {
                Ok(info) => prop_assert_eq!(info.gzip, bytes.starts_with(&[0x1f, 0x8b])),
                Err(problem) => {
                    prop_assert!(!problem.to_string().is_empty());
                    prop_assert_eq!(problem == ArchiveProblem::Empty, bytes.is_empty());
                }
            }
        }

        #[test]
        fn any_manifest_text_is_read_without_panicking(text in yamlish(), gz in any::<bool>()) {
            let tar = tar_of(&[("./bento.yaml", text.as_slice())]);
            let bytes = if gz { gzip(&tar) } else { tar };
            let info = inspect(bytes.as_slice(), "bento.yaml").unwrap().unwrap();
            prop_assert_eq!(info.gzip, gz);
            prop_assert!(info.manifest.is_some(), "the top-level bento.yaml is the manifest");
        }

        /// The check refuses an upload whose manifest names another tag, so it must never read
        /// a tag other than the one written. bentoml writes bento.yaml with PyYAML, which leaves
        /// a version unquoted unless YAML 1.1 would read it as something else: `1e5`, `0o17`,
        /// `nan` or `inf` stay plain text there, and must not read back as numbers.
        #[test]
        fn a_manifest_never_names_another_tag(name in PART, version in version(), quoted in any::<bool>()) {
            let text = if quoted {
                serde_yaml_ng::to_string(&serde_yaml_ng::Mapping::from_iter([
                    ("name".into(), name.clone().into()),
                    ("version".into(), version.clone().into()),
                ])).unwrap()
            } else {
                format!("name: {name}\nversion: {version}\nservice: svc:Svc\n")
            };
            let m = parse_manifest(text.as_bytes());
            prop_assert!(m.name.as_ref().is_none_or(|n| *n == name), "{:?} read from {:?}", m.name, text);
            prop_assert!(m.version.as_ref().is_none_or(|v| *v == version), "{:?} read from {:?}", m.version, text);
            if quoted {
                prop_assert_eq!((m.name, m.version), (Some(name), Some(version)));
            }
        }
    }

    #[test]
    fn a_manifest_over_a_mebibyte_is_refused() {
        let big = vec![b'#'; MAX_MANIFEST as usize + 1];
        let tar = tar_of(&[("./bento.yaml", big.as_slice())]);
        assert_eq!(check_once(&tar), Err(ArchiveProblem::ManifestTooLarge("bento.yaml".into())));
    }

    fn check_once(bytes: &[u8]) -> Result<ArchiveInfo, ArchiveProblem> {
        inspect(bytes, "bento.yaml").unwrap()
    }
}
