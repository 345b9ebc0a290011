//! What the builder reads from a bento's `bento.yaml` (spec 1 and spec 2).

use std::path::Path;

use anyhow::Context;
use serde::Deserialize;
use serde_yaml_ng::Value;
use yatai_core::Tag;

/// BentoML's distro default first command (`CONTAINER_METADATA["debian"]["default_install_command"]`
/// in 1.4): compilers, git and gnupg for building sdists inside the image. This builder installs
/// wheels on the build host, so the line is not needed; it is reported, not silently dropped.
pub const DEFAULT_DEBIAN_COMMAND: &str = "apt-get update && apt-get install -q -y --no-install-recommends \
--allow-remove-essential ca-certificates gnupg2 bash build-essential git";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelRef {
    pub name: String,
    pub version: String,
    /// `bentoml` or `huggingface` (HF models are fetched by the server at run time, not baked).
    pub registry: String,
}

impl ModelRef {
    pub fn tag(&self) -> String {
        format!("{}:{}", self.name, self.version)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Env {
    pub name: String,
    pub value: Option<String>,
    pub stage: String,
}

#[derive(Debug, Clone)]
pub struct BentoInfo {
    pub name: String,
    pub version: String,
    /// ISO 8601 with offset, as bento.yaml stores it.
    pub creation_time: String,
    pub bentoml_version: String,
    pub spec: u32,
    pub labels: Vec<(String, String)>,
    pub envs: Vec<Env>,
    pub models: Vec<ModelRef>,
    /// `image.python_version` (spec 2) or `docker.python_version` (spec 1), e.g. `3.11`.
    pub python_version: Option<String>,
    pub base_image: Option<String>,
    /// Commands that run before the Python install (`image.commands`; spec 1: apt for
    /// `docker.system_packages`, rendered by the caller).
    pub commands: Vec<String>,
    pub post_commands: Vec<String>,
    pub system_packages: Vec<String>,
    /// Spec 1 `docker.setup_script`.
    pub setup_script: Option<String>,
    /// The verbatim bento.yaml.
    pub raw: String,
}

impl BentoInfo {
    pub fn tag(&self) -> String {
        format!("{}:{}", self.name, self.version)
    }

    pub fn load(bento_dir: &Path) -> anyhow::Result<Self> {
        let path = bento_dir.join("bento.yaml");
        let raw = std::fs::read_to_string(&path).with_context(|| {
            format!("{} has no bento.yaml: is it an exported or pulled bento?", bento_dir.display())
        })?;
        Self::parse(&raw).with_context(|| format!("parsing {}", path.display()))
    }

    pub fn parse(raw: &str) -> anyhow::Result<Self> {
        let v: Value = serde_yaml_ng::from_str(raw)?;
        let s = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
        let name = s("name").context("bento.yaml has no `name`")?;
        let version = s("version").context("bento.yaml has no `version`")?;
        let creation_time = match v.get("creation_time") {
            Some(Value::String(t)) => t.clone(),
            Some(other) => serde_yaml_ng::to_string(other)?.trim().to_string(),
            None => anyhow::bail!("bento.yaml has no `creation_time`"),
        };
        let spec = v.get("spec").and_then(Value::as_u64).unwrap_or(1) as u32;
        let labels = match v.get("labels") {
            Some(Value::Mapping(m)) => {
                m.iter().filter_map(|(k, v)| Some((k.as_str()?.to_string(), scalar(v)?))).collect()
            }
            _ => Vec::new(),
        };
        #[derive(Deserialize)]
        struct RawEnv {
            name: String,
            value: Option<Value>,
            stage: Option<String>,
        }
        let envs: Vec<RawEnv> = match v.get("envs") {
            Some(e @ Value::Sequence(_)) => serde_yaml_ng::from_value(e.clone()).context("`envs`")?,
            _ => Vec::new(),
        };
        let envs = envs
            .into_iter()
            .map(|e| Env {
                name: e.name,
                value: e.value.as_ref().and_then(scalar),
                stage: e.stage.unwrap_or_else(|| "all".into()),
            })
            .collect();

        // Models: the top-level list (legacy and spec 1) plus every service's models.
        let mut models: Vec<ModelRef> = Vec::new();
        // Model names and versions become paths (in the work directory, the bentoml store and the
        // image) and server URLs, so they are held to the rule bentoml itself wrote them under.
        let mut add = |tag: &str, registry: Option<&str>| -> anyhow::Result<()> {
            let Tag { name, version } = Tag::parse(tag).with_context(|| format!("model tag {tag:?}"))?;
            let version = version.with_context(|| format!("model tag {tag:?} has no version"))?;
            let m = ModelRef { name, version, registry: registry.unwrap_or("bentoml").into() };
            if !models.iter().any(|x| x.name == m.name && x.version == m.version) {
                models.push(m);
            }
            Ok(())
        };
        if let Some(Value::Sequence(list)) = v.get("models") {
            for m in list {
                match m {
                    Value::String(t) => add(t, None)?,
                    Value::Mapping(_) => {
                        if let Some(t) = m.get("tag").and_then(Value::as_str) {
                            add(t, m.get("registry").and_then(Value::as_str))?
                        }
                    }
                    _ => {}
                }
            }
        }
        if let Some(Value::Sequence(svcs)) = v.get("services") {
            for svc in svcs {
                if let Some(Value::Sequence(ms)) = svc.get("models") {
                    for m in ms {
                        if let Some(t) = m.get("tag").and_then(Value::as_str) {
                            add(t, m.get("registry").and_then(Value::as_str))?;
                        }
                    }
                }
            }
        }

        let strs = |v: Option<&Value>| -> Vec<String> {
            match v {
                Some(Value::Sequence(l)) => l.iter().filter_map(|x| x.as_str().map(str::to_string)).collect(),
                _ => Vec::new(),
            }
        };
        let (python_version, base_image, commands, post_commands, system_packages, setup_script);
        if let Some(img @ Value::Mapping(_)) = v.get("image") {
            python_version = img.get("python_version").and_then(scalar);
            base_image = img.get("base_image").and_then(Value::as_str).map(str::to_string);
            commands = strs(img.get("commands"));
            post_commands = strs(img.get("post_commands"));
            system_packages = Vec::new();
            setup_script = None;
        } else {
            let d = v.get("docker");
            python_version = d.and_then(|d| d.get("python_version")).and_then(scalar);
            base_image = d.and_then(|d| d.get("base_image")).and_then(Value::as_str).map(str::to_string);
            commands = Vec::new();
            post_commands = Vec::new();
            system_packages = strs(d.and_then(|d| d.get("system_packages")));
            setup_script = d.and_then(|d| d.get("setup_script")).and_then(Value::as_str).map(str::to_string);
        }
        Ok(Self {
            name,
            version,
            creation_time,
            bentoml_version: s("bentoml_version").unwrap_or_default(),
            spec,
            labels,
            envs,
            models,
            python_version,
            base_image,
            commands,
            post_commands,
            system_packages,
            setup_script,
            raw: raw.to_string(),
        })
    }

    /// Steps that run before the Python install in BentoML's Dockerfile (system packages,
    /// `image.commands` minus the distro default line): they need only the base image.
    pub fn pre_install_steps(&self) -> Vec<String> {
        let mut steps: Vec<String> = Vec::new();
        if !self.system_packages.is_empty() {
            steps.push(format!(
                "apt-get update && apt-get install -q -y -o Dpkg::Options::=--force-confdef {}",
                self.system_packages.join(" ")
            ));
        }
        steps.extend(self.commands.iter().filter(|c| !is_default_command(c)).cloned());
        steps
    }

    /// Steps that run after the Python install (`post_commands`, spec-1 `setup_script`).
    pub fn post_install_steps(&self) -> Vec<String> {
        let mut steps = self.post_commands.clone();
        if let Some(s) = &self.setup_script {
            steps.push(format!("setup_script {s}"));
        }
        steps
    }

    /// Everything that would need a `RUN` in BentoML's Dockerfile, minus the distro default
    /// line. Empty means a pure layer assembly reproduces the image.
    pub fn run_steps(&self) -> Vec<String> {
        let mut s = self.pre_install_steps();
        s.extend(self.post_install_steps());
        s
    }

    /// The environment of the build's `RUN` steps and installs: envs of stage `build` or `all`,
    /// an unset value as empty.
    pub fn build_envs(&self) -> Vec<(String, String)> {
        self.envs
            .iter()
            .filter(|e| e.stage == "build" || e.stage == "all")
            .map(|e| (e.name.clone(), e.value.clone().unwrap_or_default()))
            .collect()
    }

    pub fn has_default_command(&self) -> bool {
        self.commands.iter().any(|c| is_default_command(c))
    }
}

fn is_default_command(c: &str) -> bool {
    c.split_whitespace().eq(DEFAULT_DEBIAN_COMMAND.split_whitespace())
}

fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC2: &str = r#"
service: service:IrisClassifier
name: iris_classifier
version: pndy6nhijceeoax4
bentoml_version: 1.4.40
creation_time: '2026-11-24T20:49:03.330029+00:00'
labels:
  owner: yatai-rs-tests
models: []
services:
- name: IrisClassifier
  models:
  - tag: iris_clf:pfkoffhijc5ayax4
    module: bentoml.sklearn
  - tag: gpt2--x:abc
    registry: huggingface
envs:
- name: IRIS_MODE
  value: test
  stage: all
- name: SECRET
  stage: runtime
spec: 2
image:
  base_image: python:3.11-slim
  python_version: '3.11'
  commands:
  - apt-get update && apt-get install -q -y --no-install-recommends --allow-remove-essential
    ca-certificates gnupg2 bash build-essential git
  python_requirements: 'numpy'
  post_commands: []
"#;

    #[test]
    fn reads_a_spec2_bento() {
        let b = BentoInfo::parse(SPEC2).unwrap();
        assert_eq!(b.tag(), "iris_classifier:pndy6nhijceeoax4");
        assert_eq!(b.python_version.as_deref(), Some("3.11"));
        assert_eq!(b.models.len(), 2);
        assert_eq!(b.models[1].registry, "huggingface");
        assert_eq!(b.envs[1], Env { name: "SECRET".into(), value: None, stage: "runtime".into() });
        assert_eq!(b.labels, vec![("owner".to_string(), "yatai-rs-tests".to_string())]);
        assert_eq!(b.build_envs(), vec![("IRIS_MODE".to_string(), "test".to_string())], "runtime envs stay out");
        assert!(b.has_default_command());
        assert!(b.run_steps().is_empty(), "the distro default line alone needs no RUN");
    }

    #[test]
    fn extra_commands_and_system_packages_are_run_steps() {
        let b = BentoInfo::parse(&SPEC2.replace("post_commands: []", "post_commands: [\"echo hi\"]")).unwrap();
        assert_eq!(b.run_steps(), vec!["echo hi".to_string()]);
        assert!(b.pre_install_steps().is_empty());
        assert_eq!(b.post_install_steps(), vec!["echo hi".to_string()]);
        let spec1 = "name: a\nversion: b\ncreation_time: '2024-01-01T00:00:00+00:00'\nspec: 1\nmodels: [m:v]\n\
                     docker: {python_version: '3.10', system_packages: [curl]}\n";
        let b = BentoInfo::parse(spec1).unwrap();
        assert_eq!(b.models[0].tag(), "m:v");
        assert_eq!(b.python_version.as_deref(), Some("3.10"));
        assert_eq!(b.run_steps().len(), 1);
        assert!(b.run_steps()[0].ends_with("curl"));
    }

    #[test]
    fn model_tags_that_could_leave_their_directory_are_refused() {
        for bad in ["../../etc:x", "m:../../x", "m", "M:v", "m:"] {
            let yaml = SPEC2.replace("iris_clf:pfkoffhijc5ayax4", &format!("'{bad}'"));
            let err = BentoInfo::parse(&yaml).expect_err(bad);
            assert!(format!("{err:#}").contains(&format!("model tag {bad:?}")), "{bad}: {err:#}");
        }
    }
}
