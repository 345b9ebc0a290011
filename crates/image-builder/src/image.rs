//! The image config and manifest, as BentoML's Dockerfile would have set them, in canonical
//! JSON (keys sorted at every level, no whitespace) so equal inputs give equal digests whatever
//! serde_json features other crates of the workspace switch on.

use serde_json::{Map, Value, json};

use crate::bento::BentoInfo;
use crate::blob::LayerBlob;
use crate::python::VENV;
use crate::registry::{MEDIA_OCI_MANIFEST, reference::ImageRef};

pub const MEDIA_OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const BENTO_PATH: &str = "/home/bentoml/bento";

/// Canonical JSON: object keys sorted by their UTF-8 bytes, no insignificant whitespace.
pub fn canonical(v: &Value) -> Vec<u8> {
    fn write(v: &Value, out: &mut Vec<u8>) {
        match v {
            Value::Object(m) => {
                let mut keys: Vec<&String> = m.keys().collect();
                keys.sort();
                out.push(b'{');
                for (i, k) in keys.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    out.extend(serde_json::to_vec(k).expect("string serialises"));
                    out.push(b':');
                    write(&m[*k], out);
                }
                out.push(b'}');
            }
            Value::Array(a) => {
                out.push(b'[');
                for (i, x) in a.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    write(x, out);
                }
                out.push(b']');
            }
            other => out.extend(serde_json::to_vec(other).expect("scalar serialises")),
        }
    }
    let mut out = Vec::new();
    write(v, &mut out);
    out
}

/// One added layer: its blob and the history line that says where it came from.
#[derive(Debug, Clone)]
pub struct AddedLayer {
    pub blob: LayerBlob,
    pub created_by: String,
}

#[derive(Debug, Clone)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

impl Platform {
    pub fn parse(s: &str) -> anyhow::Result<Self> {
        let parts: Vec<&str> = s.split('/').collect();
        let (os, arch, variant) = match parts.as_slice() {
            [os, arch] => (*os, *arch, None),
            [os, arch, v] => (*os, *arch, Some(v.to_string())),
            _ => anyhow::bail!("platform {s:?} must be OS/ARCH[/VARIANT], e.g. linux/amd64"),
        };
        if os != "linux" {
            anyhow::bail!("platform {s:?}: only linux images can be built");
        }
        let variant = match (arch, variant) {
            ("arm64", None) => Some("v8".to_string()),
            (_, v) => v,
        };
        Ok(Self { os: os.into(), architecture: arch.into(), variant })
    }

    pub fn host() -> Self {
        let arch = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            other => other,
        };
        Self::parse(&format!("linux/{arch}")).expect("valid host platform")
    }

    /// uv's `--python-platform` for this platform (manylinux_2_28 runs on glibc ≥ 2.28: Debian
    /// 10+, Ubuntu 18.10+, UBI 8).
    pub fn uv_platform(&self) -> anyhow::Result<String> {
        Ok(match self.architecture.as_str() {
            "amd64" => "x86_64-manylinux_2_28".into(),
            "arm64" => "aarch64-manylinux_2_28".into(),
            other => anyhow::bail!("no Python wheel platform known for architecture {other}"),
        })
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// bento.yaml's `creation_time` (`2026-11-24T20:49:03.330029+00:00`) as an RFC 3339 time in
/// whole seconds: deterministic, unlike the wall clock.
pub fn created_time(creation_time: &str) -> String {
    let t = creation_time.trim().replace(' ', "T");
    if t.len() < 19 {
        return "1980-01-01T00:00:00Z".into();
    }
    let (secs, rest) = t.split_at(19);
    let offset = rest.trim_start_matches(|c: char| c == '.' || c.is_ascii_digit());
    match offset {
        "" | "Z" | "+00:00" => format!("{secs}Z"),
        o => format!("{secs}{o}"),
    }
}

pub struct ConfigInput<'a> {
    pub base_config: &'a Value,
    pub bento: &'a BentoInfo,
    pub platform: &'a Platform,
    pub layers: &'a [AddedLayer],
    /// Whether the user layer gave `bentoml` a passwd entry; if not, getpass needs USER.
    pub passwd_entry: bool,
    pub image_tag: &'a str,
}

/// The image config: the base's, with BentoML's Dockerfile applied on top (§1.1 of the design).
pub fn config(input: &ConfigInput) -> Value {
    let base = input.base_config;
    let mut cfg = base.get("config").and_then(Value::as_object).cloned().unwrap_or_default();

    let mut env: Vec<(String, String)> = cfg
        .get("Env")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(|e| match e.split_once('=') {
                    Some((k, v)) => (k.to_string(), v.to_string()),
                    None => (e.to_string(), String::new()),
                })
                .collect()
        })
        .unwrap_or_default();
    let base_path = env
        .iter()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.clone())
        .unwrap_or_else(|| "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
    let mut set = |k: &str, v: &str| match env.iter_mut().find(|(n, _)| n == k) {
        Some(e) => e.1 = v.to_string(),
        None => env.push((k.to_string(), v.to_string())),
    };
    for (k, v) in [
        ("LANG", "C.UTF-8"),
        ("LC_ALL", "C.UTF-8"),
        ("PYTHONIOENCODING", "UTF-8"),
        ("PYTHONUNBUFFERED", "1"),
        ("BENTO_PATH", BENTO_PATH),
        ("BENTOML_HOME", "/home/bentoml/"),
        ("BENTOML_HF_CACHE_DIR", "/home/bentoml/bento/hf-models"),
        ("BENTOML_CONTAINERIZED", "true"),
    ] {
        set(k, v);
    }
    for e in input.bento.envs.iter().filter(|e| e.stage == "all") {
        set(&e.name, e.value.as_deref().unwrap_or(""));
    }
    set("VIRTUAL_ENV", VENV);
    set("UV_COMPILE_BYTECODE", "1");
    set("UV_NO_PROGRESS", "1");
    set("HOME", "/home/bentoml");
    if !input.passwd_entry {
        set("USER", "bentoml");
        set("LOGNAME", "bentoml");
    }
    let path = format!("{VENV}/bin:{base_path}");
    set("PATH", &path);
    cfg.insert("Env".into(), Value::Array(env.into_iter().map(|(k, v)| Value::String(format!("{k}={v}"))).collect()));

    cfg.insert("Entrypoint".into(), json!([format!("{BENTO_PATH}/env/docker/entrypoint.sh")]));
    // Docker resets the base's CMD when ENTRYPOINT is set; without this, entrypoint.sh would
    // exec python3's REPL.
    cfg.insert("Cmd".into(), Value::Null);
    cfg.insert("WorkingDir".into(), json!(BENTO_PATH));
    // Numeric, so Kubernetes runAsNonRoot can verify it.
    cfg.insert("User".into(), json!("1034:1034"));
    let mut ports = cfg.get("ExposedPorts").and_then(Value::as_object).cloned().unwrap_or_default();
    ports.insert("3000/tcp".into(), json!({}));
    ports.insert("3001/tcp".into(), json!({}));
    cfg.insert("ExposedPorts".into(), Value::Object(ports));
    let mut labels = cfg.get("Labels").and_then(Value::as_object).cloned().unwrap_or_default();
    for (k, v) in &input.bento.labels {
        labels.insert(k.clone(), json!(v));
    }
    let b = input.bento;
    for (k, v) in [
        ("ai.yatai.bento.tag", b.tag()),
        ("ai.yatai.bento.name", b.name.clone()),
        ("ai.yatai.bento.version", b.version.clone()),
        ("ai.yatai.image.tag", input.image_tag.to_string()),
        ("ai.bentoml.version", b.bentoml_version.clone()),
        ("org.opencontainers.image.title", b.name.clone()),
        ("org.opencontainers.image.version", b.version.clone()),
    ] {
        labels.insert(k.into(), json!(v));
    }
    cfg.insert("Labels".into(), Value::Object(labels));

    let created = created_time(&b.creation_time);
    let mut diff_ids: Vec<Value> =
        base.pointer("/rootfs/diff_ids").and_then(Value::as_array).cloned().unwrap_or_default();
    let mut history: Vec<Value> = base.get("history").and_then(Value::as_array).cloned().unwrap_or_default();
    for l in input.layers {
        diff_ids.push(json!(l.blob.diff_id));
        history.push(json!({"created": created, "created_by": l.created_by, "comment": "yatai-rs build"}));
    }

    let mut out = Map::new();
    out.insert("architecture".into(), json!(input.platform.architecture));
    out.insert("os".into(), json!(input.platform.os));
    if let Some(v) = &input.platform.variant {
        out.insert("variant".into(), json!(v));
    }
    out.insert("created".into(), json!(created));
    out.insert("config".into(), Value::Object(cfg));
    out.insert("rootfs".into(), json!({"type": "layers", "diff_ids": diff_ids}));
    out.insert("history".into(), Value::Array(history));
    Value::Object(out)
}

/// Docker media types of the base's layers, as their OCI equivalents (same bytes).
pub fn oci_layer_media_type(mt: &str) -> String {
    match mt {
        "application/vnd.docker.image.rootfs.diff.tar.gzip" => crate::blob::MEDIA_LAYER_GZIP.into(),
        "application/vnd.docker.image.rootfs.diff.tar" => crate::blob::MEDIA_LAYER_TAR.into(),
        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => {
            "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip".into()
        }
        other => other.into(),
    }
}

/// The manifest: base layer descriptors first (by digest), then ours.
pub fn manifest(
    config: &[u8],
    base_layers: &[Value],
    added: &[AddedLayer],
    base: &ImageRef,
    base_digest: &str,
) -> Value {
    let mut layers: Vec<Value> = base_layers
        .iter()
        .map(|l| {
            let mut l = l.clone();
            if let Some(mt) = l.get("mediaType").and_then(Value::as_str).map(oci_layer_media_type) {
                l["mediaType"] = json!(mt);
            }
            l
        })
        .collect();
    for a in added {
        layers.push(json!({"mediaType": a.blob.media_type, "digest": a.blob.digest, "size": a.blob.size}));
    }
    json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_OCI_MANIFEST,
        "config": {
            "mediaType": MEDIA_OCI_CONFIG,
            "digest": crate::blob::sha256_digest(config),
            "size": config.len(),
        },
        "layers": layers,
        "annotations": {
            "org.opencontainers.image.base.name": base.to_string(),
            "org.opencontainers.image.base.digest": base_digest,
        },
    })
}

/// Yatai's image tag for a bento: `yatai.<name>.<version>`, or `yatai.<md5(name.version)>`
/// when that is longer than the 128 characters a tag may have.
pub fn yatai_tag(name: &str, version: &str) -> String {
    let tail = format!("{name}.{version}");
    let tag = format!("yatai.{tail}");
    if tag.len() <= 128 {
        return tag;
    }
    use md5::Digest as _;
    format!("yatai.{}", hex::encode(md5::Md5::digest(tail.as_bytes())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_json_sorts_keys_everywhere() {
        let v: Value = serde_json::from_str(r#"{"b":1,"a":{"z":[{"y":1,"x":"é"}],"c":null}}"#).unwrap();
        assert_eq!(String::from_utf8(canonical(&v)).unwrap(), r#"{"a":{"c":null,"z":[{"x":"é","y":1}]},"b":1}"#);
    }

    #[test]
    fn tags_follow_yatai() {
        assert_eq!(yatai_tag("iris", "abc"), "yatai.iris.abc");
        let long = yatai_tag(&"n".repeat(63), &"v".repeat(63));
        assert_eq!(long.len(), 6 + 32);
        assert!(long.starts_with("yatai."));
    }

    #[test]
    fn created_is_whole_seconds() {
        assert_eq!(created_time("2026-11-24T20:49:03.330029+00:00"), "2026-11-24T20:49:03Z");
        assert_eq!(created_time("2026-11-24 20:49:03.330029"), "2026-11-24T20:49:03Z");
        assert_eq!(created_time("2026-11-24T20:49:03+02:00"), "2026-11-24T20:49:03+02:00");
    }

    #[test]
    fn config_clears_cmd_and_sets_bentoml_env() {
        let base = json!({"config": {"Env": ["PATH=/usr/bin:/bin", "LANG=x"], "Cmd": ["python3"], "Labels": {"a": "b"}},
                          "rootfs": {"type": "layers", "diff_ids": ["sha256:1"]}, "history": [{"created_by": "base"}]});
        let bento = BentoInfo::parse(
            "name: iris\nversion: v1\ncreation_time: '2026-01-01T00:00:00+00:00'\nspec: 2\n\
             envs: [{name: A, value: x}, {name: R, value: y, stage: runtime}, {name: E}]\n",
        )
        .unwrap();
        let blob = LayerBlob { diff_id: "sha256:2".into(), digest: "sha256:3".into(), size: 1, media_type: "m".into() };
        let layers = [AddedLayer { blob, created_by: "bento".into() }];
        let c = config(&ConfigInput {
            base_config: &base,
            bento: &bento,
            platform: &Platform::parse("linux/amd64").unwrap(),
            layers: &layers,
            passwd_entry: true,
            image_tag: "yatai.iris.v1",
        });
        assert_eq!(c["config"]["Cmd"], Value::Null);
        assert_eq!(c["config"]["User"], "1034:1034");
        let env: Vec<&str> = c["config"]["Env"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
        assert!(env.contains(&"PATH=/app/.venv/bin:/usr/bin:/bin"));
        assert!(env.contains(&"LANG=C.UTF-8"));
        assert!(env.contains(&"A=x") && env.contains(&"E="));
        assert!(!env.iter().any(|e| e.starts_with("R=")), "runtime envs are not baked in");
        assert_eq!(c["rootfs"]["diff_ids"], json!(["sha256:1", "sha256:2"]));
        assert_eq!(c["history"].as_array().unwrap().len(), 2);
        assert_eq!(c["config"]["Labels"]["a"], "b");
        assert_eq!(c["config"]["Labels"]["ai.yatai.bento.tag"], "iris:v1");
        assert_eq!(c["created"], "2026-01-01T00:00:00Z");
    }
}
