//! Turning a layer tree into a blob: tar → sha256 (diff_id) → compressor → sha256 (digest) →
//! file, in one pass. And the on-disk blob cache, keyed by diff_id, so a layer whose diff_id was
//! seen before is never compressed again (compressed bytes differ between implementations and
//! levels; only the diff_id is stable).

use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::tarball::Tree;

pub const MEDIA_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
pub const MEDIA_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const MEDIA_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// zstd level 3, two threads (containerd ≥ 1.5, Docker ≥ 23; what Yatai's kaniko pushes).
    #[default]
    Zstd,
    /// gzip level 6 (every runtime).
    Gzip,
}

/// How one particular layer is encoded. Model weights barely compress, so a model layer may
/// be stored uncompressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Zstd,
    Gzip,
    None,
}

impl Encoding {
    pub fn media_type(self) -> &'static str {
        match self {
            Encoding::Zstd => MEDIA_LAYER_ZSTD,
            Encoding::Gzip => MEDIA_LAYER_GZIP,
            Encoding::None => MEDIA_LAYER_TAR,
        }
    }
}

impl From<Compression> for Encoding {
    fn from(c: Compression) -> Self {
        match c {
            Compression::Zstd => Encoding::Zstd,
            Compression::Gzip => Encoding::Gzip,
        }
    }
}

/// A layer blob as stored in the cache and described in the manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerBlob {
    /// `sha256:…` of the uncompressed tar (goes into the config's `rootfs.diff_ids`).
    pub diff_id: String,
    /// `sha256:…` of the blob as pushed.
    pub digest: String,
    pub size: u64,
    pub media_type: String,
}

/// sha256 and byte count of everything written through it.
pub struct HashWriter<W> {
    inner: W,
    hasher: Sha256,
    count: u64,
}

impl<W: Write> HashWriter<W> {
    pub fn new(inner: W) -> Self {
        Self { inner, hasher: Sha256::new(), count: 0 }
    }

    pub fn finish(self) -> (W, String, u64) {
        (self.inner, format!("sha256:{}", hex::encode(self.hasher.finalize())), self.count)
    }
}

impl<W: Write> Write for HashWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

pub fn sha256_digest(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// The diff_id of a tree without compressing it (a cheap first pass for big model layers).
pub fn diff_id_of(tree: &Tree) -> anyhow::Result<String> {
    let w = tree.write_to(HashWriter::new(io::sink()))?;
    Ok(w.finish().1)
}

/// Whether a sample of the layer compresses usefully; weights usually do not (ratio ≈ 0.92).
pub fn worth_compressing(tree: &Tree) -> anyhow::Result<bool> {
    const SAMPLE: usize = 8 << 20;
    struct Cap(Vec<u8>);
    impl Write for Cap {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.0.len() >= SAMPLE {
                return Err(io::Error::other("sample full"));
            }
            let n = buf.len().min(SAMPLE - self.0.len());
            self.0.extend_from_slice(&buf[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    let mut cap = Cap(Vec::new());
    let _ = tree.write_to(&mut cap); // stops with "sample full" on big layers
    let sample = cap.0;
    if sample.len() < 64 << 10 {
        return Ok(true);
    }
    let packed = zstd::bulk::compress(&sample, 3)?;
    Ok((packed.len() as f64) < 0.95 * sample.len() as f64)
}

/// Writes `tree` as a blob into `dir` (a temporary name, then renamed to its digest).
pub fn write_blob(tree: &Tree, encoding: Encoding, dir: &Path) -> anyhow::Result<(LayerBlob, PathBuf)> {
    fs::create_dir_all(dir)?;
    let tmp = tempfile::NamedTempFile::new_in(dir)?;
    let file = tmp.reopen()?;
    let outer = HashWriter::new(BufWriter::with_capacity(1 << 20, file));
    let (outer, diff_id) = match encoding {
        Encoding::Zstd => {
            let mut enc = zstd::stream::write::Encoder::new(outer, 3)?;
            enc.multithread(2)?;
            let inner = tree.write_to(HashWriter::new(enc))?;
            let (enc, diff_id, _) = inner.finish();
            (enc.finish()?, diff_id)
        }
        Encoding::Gzip => {
            let enc = flate2::GzBuilder::new().write(outer, flate2::Compression::new(6));
            let inner = tree.write_to(HashWriter::new(enc))?;
            let (enc, diff_id, _) = inner.finish();
            (enc.finish()?, diff_id)
        }
        Encoding::None => {
            let inner = tree.write_to(HashWriter::new(outer))?;
            let (outer, diff_id, _) = inner.finish();
            (outer, diff_id)
        }
    };
    let (mut buf, digest, size) = outer.finish();
    buf.flush()?;
    buf.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    let path = dir.join(digest.trim_start_matches("sha256:"));
    tmp.persist(&path).with_context(|| format!("storing blob {}", path.display()))?;
    Ok((LayerBlob { diff_id, digest, size, media_type: encoding.media_type().to_string() }, path))
}

/// The builder's disk cache (one directory, safe to delete at any time):
/// `blobs/<hex>` compressed layers, `layers/<key>.json` layer descriptors by cache key or diff_id,
/// `meta/<key>.json` other facts (base scans, resolved requirements), `uv/` uv's own cache.
#[derive(Debug, Clone)]
pub struct Cache {
    root: PathBuf,
}

impl Cache {
    pub fn new(root: impl Into<PathBuf>) -> anyhow::Result<Self> {
        let root = root.into();
        for d in ["blobs", "layers", "meta", "tmp"] {
            fs::create_dir_all(root.join(d))
                .with_context(|| format!("creating cache directory {}", root.join(d).display()))?;
        }
        Ok(Self { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn blobs_dir(&self) -> PathBuf {
        self.root.join("blobs")
    }

    pub fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    pub fn blob_path(&self, digest: &str) -> PathBuf {
        self.blobs_dir().join(digest.trim_start_matches("sha256:"))
    }

    /// A cached layer, if its descriptor and its blob are both still on disk.
    pub fn layer(&self, key: &str) -> Option<LayerBlob> {
        let text = fs::read(self.root.join("layers").join(format!("{}.json", file_key(key)))).ok()?;
        let blob: LayerBlob = serde_json::from_slice(&text).ok()?;
        let meta = fs::metadata(self.blob_path(&blob.digest)).ok()?;
        (meta.len() == blob.size).then_some(blob)
    }

    pub fn put_layer(&self, key: &str, blob: &LayerBlob) -> anyhow::Result<()> {
        self.put_json("layers", key, blob)
    }

    pub fn meta<T: for<'de> Deserialize<'de>>(&self, key: &str) -> Option<T> {
        let text = fs::read(self.root.join("meta").join(format!("{}.json", file_key(key)))).ok()?;
        serde_json::from_slice(&text).ok()
    }

    pub fn put_meta<T: Serialize>(&self, key: &str, value: &T) -> anyhow::Result<()> {
        self.put_json("meta", key, value)
    }

    fn put_json<T: Serialize>(&self, dir: &str, key: &str, value: &T) -> anyhow::Result<()> {
        let dir = self.root.join(dir);
        let tmp = tempfile::NamedTempFile::new_in(&dir)?;
        serde_json::to_writer_pretty(tmp.as_file(), value)?;
        tmp.persist(dir.join(format!("{}.json", file_key(key))))?;
        Ok(())
    }
}

/// Keys are free text (they name what went into them); file names are their hash.
fn file_key(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// Content hash of a file, streamed.
pub fn sha256_file(path: &Path) -> anyhow::Result<String> {
    let mut f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut w = HashWriter::new(io::sink());
    io::copy(&mut f, &mut w)?;
    Ok(w.finish().1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tarball::Source;

    #[test]
    fn blob_digest_matches_its_bytes_and_diff_id_matches_the_tar() {
        let dir = tempfile::tempdir().unwrap();
        let mut t = Tree::new();
        t.file("a/b.txt", Source::Bytes(b"hello hello hello".to_vec()), false, &|_| 0);
        for enc in [Encoding::Zstd, Encoding::Gzip, Encoding::None] {
            let (blob, path) = write_blob(&t, enc, dir.path()).unwrap();
            let bytes = fs::read(&path).unwrap();
            assert_eq!(blob.digest, sha256_digest(&bytes));
            assert_eq!(blob.size, bytes.len() as u64);
            assert_eq!(blob.diff_id, diff_id_of(&t).unwrap());
            assert_eq!(blob.media_type, enc.media_type());
            // Same input, same digest: the compressors are deterministic at fixed settings.
            let (again, _) = write_blob(&t, enc, dir.path()).unwrap();
            assert_eq!(again, blob);
        }
    }

    #[test]
    fn random_bytes_are_not_worth_compressing_but_text_is() {
        let dir = tempfile::tempdir().unwrap();
        let mut noise = vec![0u8; 1 << 20];
        let mut x: u64 = 0x9E3779B97F4A7C15;
        for b in noise.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        fs::write(dir.path().join("w.bin"), &noise).unwrap();
        let mut t = Tree::new();
        t.add_dir_all(dir.path(), "m", &|_| 0, &|_| false).unwrap();
        assert!(!worth_compressing(&t).unwrap());
        let mut t = Tree::new();
        t.file("a.txt", Source::Bytes("abc ".repeat(100_000).into_bytes()), false, &|_| 0);
        assert!(worth_compressing(&t).unwrap());
    }
}
