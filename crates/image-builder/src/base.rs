//! The base image: resolved by reference to one platform manifest and its config, and scanned
//! once per digest for the facts the builder needs from its contents (which python3.X it has,
//! its /etc/passwd and /etc/group). The layers themselves are never rebuilt.

use std::collections::BTreeMap;
use std::io::Read;

use anyhow::{Context, bail};
use futures_util::TryStreamExt;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::blob::Cache;
use crate::image::Platform;
use crate::registry::{
    ImageRef, MEDIA_DOCKER_LIST, MEDIA_DOCKER_MANIFEST, MEDIA_OCI_INDEX, MEDIA_OCI_MANIFEST, Registry,
};

#[derive(Debug, Clone)]
pub struct ResolvedBase {
    pub reference: ImageRef,
    /// Digest of the platform manifest (the pinned base).
    pub digest: String,
    pub config: Value,
    /// Layer descriptors as in the base manifest.
    pub layers: Vec<Value>,
}

/// Fetches the base manifest (following an index to `platform`) and config.
pub async fn resolve(reg: &Registry, base: &ImageRef, platform: &Platform) -> anyhow::Result<ResolvedBase> {
    let (bytes, media, digest) = reg.get_manifest(&base.repository, base.reference()).await?;
    let m: Value =
        serde_json::from_slice(&bytes).with_context(|| format!("base image {base}: manifest is not JSON"))?;
    let media =
        if media.is_empty() { m.get("mediaType").and_then(Value::as_str).unwrap_or("").to_string() } else { media };
    let (m, digest) = if media == MEDIA_OCI_INDEX || media == MEDIA_DOCKER_LIST || m.get("manifests").is_some() {
        let pick =
            pick_platform(&m, platform).with_context(|| format!("base image {base} has no {platform} variant"))?;
        let (bytes, _, d) = reg.get_manifest(&base.repository, &pick).await?;
        (serde_json::from_slice::<Value>(&bytes)?, d)
    } else {
        (m, digest)
    };
    let mt = m.get("mediaType").and_then(Value::as_str).unwrap_or(MEDIA_OCI_MANIFEST);
    if mt != MEDIA_OCI_MANIFEST && mt != MEDIA_DOCKER_MANIFEST {
        bail!("base image {base}: unsupported manifest type {mt} (schema 1 images are not supported)");
    }
    let cfg_digest = m
        .pointer("/config/digest")
        .and_then(Value::as_str)
        .with_context(|| format!("base image {base}: manifest has no config"))?;
    let resp = reg.get_blob(&base.repository, cfg_digest).await?;
    let cfg_bytes = resp.bytes().await.context("reading the base config")?;
    if crate::blob::sha256_digest(&cfg_bytes) != cfg_digest {
        bail!("base image {base}: config blob does not match its digest");
    }
    let config: Value = serde_json::from_slice(&cfg_bytes).context("base config is not JSON")?;
    let arch = config.get("architecture").and_then(Value::as_str).unwrap_or("");
    if !arch.is_empty() && arch != platform.architecture {
        bail!("base image {base} is {arch}, not {platform}");
    }
    let layers = m.get("layers").and_then(Value::as_array).cloned().unwrap_or_default();
    let n_diff = config.pointer("/rootfs/diff_ids").and_then(Value::as_array).map(Vec::len).unwrap_or(0);
    if n_diff != layers.len() {
        bail!("base image {base}: {} layers but {n_diff} diff_ids", layers.len());
    }
    Ok(ResolvedBase { reference: base.clone(), digest, config, layers })
}

fn pick_platform(index: &Value, p: &Platform) -> Option<String> {
    index.get("manifests")?.as_array()?.iter().find_map(|m| {
        let pl = m.get("platform")?;
        let ok = pl.get("os")?.as_str()? == p.os
            && pl.get("architecture")?.as_str()? == p.architecture
            && match (&p.variant, pl.get("variant").and_then(Value::as_str)) {
                (Some(want), Some(got)) => want == got,
                _ => true,
            };
        ok.then(|| m.get("digest")?.as_str().map(str::to_string)).flatten()
    })
}

/// What the builder reads from the base's files.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct BaseFacts {
    /// `python3.X` executables (absolute paths in the image), e.g. `/usr/bin/python3.11`.
    pub pythons: Vec<String>,
    pub passwd: Option<String>,
    pub group: Option<String>,
}

impl BaseFacts {
    /// The interpreter for `minor` (prefers /usr/local/bin, where python:* images keep theirs).
    pub fn python_for(&self, minor: &str) -> Option<String> {
        let name = format!("python{minor}");
        let mut c: Vec<&String> = self.pythons.iter().filter(|p| p.rsplit('/').next() == Some(name.as_str())).collect();
        c.sort_by_key(|p| !p.starts_with("/usr/local/"));
        c.first().map(|s| s.to_string())
    }

    pub fn minors(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .pythons
            .iter()
            .filter_map(|p| p.rsplit('/').next())
            .map(|n| n.trim_start_matches("python").to_string())
            .collect();
        v.sort();
        v.dedup();
        v
    }
}

/// Reads the base layers once (streamed, nothing stored) and caches the facts by base digest.
pub async fn scan(reg: &Registry, base: &ResolvedBase, cache: &Cache) -> anyhow::Result<BaseFacts> {
    let key = format!("base-facts:v1:{}", base.digest);
    if let Some(f) = cache.meta::<BaseFacts>(&key) {
        return Ok(f);
    }
    let mut files: BTreeMap<String, FileFact> = BTreeMap::new();
    for layer in &base.layers {
        let mut updates = read_layer(reg, base, layer, "scanning", scan_layer).await?;
        for (path, f) in updates.drain(..) {
            match f {
                Some(f) => {
                    files.insert(path, f);
                }
                None => {
                    // whiteout: the path and everything below it is gone
                    let prefix = format!("{path}/");
                    files.retain(|p, _| p != &path && !p.starts_with(&prefix));
                }
            }
        }
    }
    let text = |p: &str| match files.get(p) {
        Some(FileFact::Text(t)) => Some(t.clone()),
        _ => None,
    };
    let facts = BaseFacts {
        pythons: files.keys().filter(|p| is_python(p)).map(|p| format!("/{p}")).collect(),
        passwd: text("etc/passwd"),
        group: text("etc/group"),
    };
    cache.put_meta(&key, &facts)?;
    Ok(facts)
}

/// Streams one base layer from its registry into `read`, decompressed by its media type, on a
/// blocking thread; nothing is stored. `what` names the reading in errors ("scanning").
pub(crate) async fn read_layer<T: Send + 'static>(
    reg: &Registry,
    base: &ResolvedBase,
    layer: &Value,
    what: &str,
    read: impl FnOnce(Box<dyn Read>) -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    let digest = layer.get("digest").and_then(Value::as_str).context("base layer without digest")?.to_string();
    let media = layer.get("mediaType").and_then(Value::as_str).unwrap_or("").to_string();
    let resp = reg.get_blob(&base.reference.repository, &digest).await?;
    let stream = resp.bytes_stream().map_err(std::io::Error::other);
    let reader = tokio_util::io::StreamReader::new(stream);
    tokio::task::spawn_blocking(move || -> anyhow::Result<T> {
        let sync = tokio_util::io::SyncIoBridge::new(reader);
        let r: Box<dyn Read> = if media.ends_with("zstd") {
            Box::new(zstd::stream::read::Decoder::new(sync)?)
        } else if media.ends_with("gzip") {
            Box::new(flate2::read::GzDecoder::new(sync))
        } else {
            Box::new(sync)
        };
        read(r)
    })
    .await?
    .with_context(|| format!("{what} base layer {digest}"))
}

#[derive(Debug, Clone)]
enum FileFact {
    Present,
    Text(String),
}

fn is_python(p: &str) -> bool {
    let Some(name) =
        p.strip_prefix("usr/bin/").or_else(|| p.strip_prefix("usr/local/bin/")).or_else(|| p.strip_prefix("bin/"))
    else {
        return false;
    };
    name.strip_prefix("python3.").is_some_and(|m| !m.is_empty() && m.bytes().all(|b| b.is_ascii_digit()))
}

fn scan_layer(r: impl Read) -> anyhow::Result<Vec<(String, Option<FileFact>)>> {
    let mut out = Vec::new();
    let mut ar = tar::Archive::new(r);
    for e in ar.entries()? {
        let mut e = e?;
        let path = e.path()?.to_string_lossy().trim_start_matches("./").trim_end_matches('/').to_string();
        let (dir, name) = path
            .rsplit_once('/')
            .map(|(d, n)| (format!("{d}/"), n.to_string()))
            .unwrap_or((String::new(), path.clone()));
        if name == ".wh..wh..opq" {
            out.push((dir.trim_end_matches('/').to_string(), None));
            continue;
        }
        if let Some(hidden) = name.strip_prefix(".wh.") {
            out.push((format!("{dir}{hidden}"), None));
            continue;
        }
        let kind = e.header().entry_type();
        if path == "etc/passwd" || path == "etc/group" {
            if kind.is_file() {
                let mut s = String::new();
                e.read_to_string(&mut s)?;
                out.push((path, Some(FileFact::Text(s))));
            }
        } else if is_python(&path) && (kind.is_file() || kind.is_symlink() || kind.is_hard_link()) {
            out.push((path, Some(FileFact::Present)));
        }
    }
    Ok(out)
}

/// The user layer's /etc/passwd and /etc/group: the base's plus BentoML's `bentoml` user
/// (1034:1034, home /home/bentoml), unless a user or group with that id already exists.
pub fn with_bento_user(passwd: &str, group: &str) -> (String, String) {
    let has = |text: &str, idx: usize| {
        text.lines().any(|l| {
            let f: Vec<&str> = l.split(':').collect();
            f.first() == Some(&"bentoml") || f.get(idx) == Some(&"1034")
        })
    };
    let mut p = passwd.to_string();
    if !has(passwd, 2) {
        if !p.is_empty() && !p.ends_with('\n') {
            p.push('\n');
        }
        p.push_str("bentoml:x:1034:1034::/home/bentoml:/bin/sh\n");
    }
    let mut g = group.to_string();
    if !has(group, 2) {
        if !g.is_empty() && !g.ends_with('\n') {
            g.push('\n');
        }
        g.push_str("bentoml:x:1034:\n");
    }
    (p, g)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_paths() {
        assert!(is_python("usr/bin/python3.11"));
        assert!(is_python("usr/local/bin/python3.12"));
        assert!(!is_python("usr/bin/python3.11-config"));
        assert!(!is_python("usr/bin/python3"));
        let f = BaseFacts {
            pythons: vec!["/usr/bin/python3.11".into(), "/usr/local/bin/python3.11".into()],
            ..Default::default()
        };
        assert_eq!(f.python_for("3.11").as_deref(), Some("/usr/local/bin/python3.11"));
        assert_eq!(f.python_for("3.12"), None);
        assert_eq!(f.minors(), vec!["3.11".to_string()]);
    }

    #[test]
    fn whiteouts_hide_lower_files() {
        let mut data = Vec::new();
        {
            let mut b = tar::Builder::new(&mut data);
            for p in ["usr/bin/.wh.python3.9", "etc/.wh..wh..opq"] {
                let mut h = tar::Header::new_gnu();
                h.set_size(0);
                h.set_mode(0o644);
                b.append_data(&mut h, p, std::io::empty()).unwrap();
            }
            b.finish().unwrap();
        }
        let u = scan_layer(data.as_slice()).unwrap();
        let paths: Vec<(&str, bool)> = u.iter().map(|(p, f)| (p.as_str(), f.is_some())).collect();
        assert_eq!(paths, vec![("usr/bin/python3.9", false), ("etc", false)]);
    }

    #[test]
    fn bento_user_is_appended_once() {
        let (p, g) = with_bento_user("root:x:0:0:root:/root:/bin/bash\n", "root:x:0:\n");
        assert!(p.ends_with("bentoml:x:1034:1034::/home/bentoml:/bin/sh\n"));
        assert!(g.ends_with("bentoml:x:1034:\n"));
        let (p2, g2) = with_bento_user(&p, &g);
        assert_eq!((p2, g2), (p, g));
    }
}
