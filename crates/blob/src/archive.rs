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
    let Ok(serde_yaml_ng::Value::Mapping(map)) = serde_yaml_ng::from_slice::<serde_yaml_ng::Value>(text) else {
        return Manifest::default();
    };
    let field = |k: &str| match map.get(k) {
        Some(serde_yaml_ng::Value::String(s)) => Some(s.clone()),
        Some(serde_yaml_ng::Value::Number(n)) => Some(n.to_string()),
        _ => None,
    };
    Manifest { name: field("name"), version: field("version") }
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
