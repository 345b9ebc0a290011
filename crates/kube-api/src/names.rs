//! Yatai's naming rules, labels and annotations: what the objects it creates are called and how
//! they are marked, so that tools written for Yatai find them.

use md5::{Digest, Md5};

/// Kubernetes' limit for names that become DNS labels (Services, and here every child).
pub const MAX_NAME: usize = 63;

/// Labels the operator puts on what it creates.
pub mod labels {
    pub const BENTO_DEPLOYMENT: &str = "yatai.ai/bento-deployment";
    pub const BENTO_REPOSITORY: &str = "yatai.ai/bento-repository";
    pub const BENTO_VERSION: &str = "yatai.ai/bento-version";
    pub const COMPONENT_TYPE: &str = "yatai.ai/bento-deployment-component-type";
    pub const COMPONENT_NAME: &str = "yatai.ai/bento-deployment-component-name";
    pub const TARGET_TYPE: &str = "yatai.ai/bento-deployment-target-type";
    pub const CREATOR: &str = "yatai.ai/creator";
    /// The Deployment's selector: its own name.
    pub const SELECTOR: &str = "yatai.ai/selector";

    pub const COMPONENT_API_SERVER: &str = "api-server";
    pub const COMPONENT_RUNNER: &str = "runner";
    pub const TARGET_PRODUCTION: &str = "production";
    /// Yatai wrote `yatai-deployment`; tools filter on the key, not the value.
    pub const CREATOR_VALUE: &str = "yatai-deployment";
}

/// `spec.annotations` of a BentoDeployment read as feature flags.
pub mod annotations {
    /// `RollingUpdate` (default), `Recreate`, `RampedSlowRollout`, `BestEffortControlledRollout`.
    pub const DEPLOYMENT_STRATEGY: &str = "yatai.ai/deployment-strategy";
}

/// The BentoRequest (and Bento) name for a bento tag: lower case, `:` → `--`, anything a DNS
/// label cannot hold → `-`; `bento-<md5 of the tag>` when that is longer than 63 characters.
pub fn bento_request_name(tag: &str) -> String {
    let mut name: String = tag
        .replace(':', "--")
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_alphanumeric() || c == '-' { c } else { '-' }
        })
        .collect();
    name = name.trim_matches('-').to_string();
    if name.is_empty() || name.len() > MAX_NAME {
        return format!("bento-{}", md5_hex(tag));
    }
    name
}

/// The image a bento is built into: `<repository>:yatai.<bento>.<version>`, where the
/// repository is `--image-registry` (`registry:5000/bentos`), or `<server>/yatai-bentos` when
/// only a server is given. Tags longer than 128 characters become `yatai.<md5>`.
pub fn image_name(registry: &str, tag: &str) -> String {
    let registry = registry.trim_end_matches('/');
    let repository = if registry.contains('/') { registry.to_string() } else { format!("{registry}/yatai-bentos") };
    let (bento, version) = tag.split_once(':').unwrap_or((tag, "latest"));
    let mut image_tag = format!("yatai.{bento}.{version}");
    if image_tag.len() > 128 {
        image_tag = format!("yatai.{}", md5_hex(tag));
    }
    format!("{repository}:{image_tag}")
}

/// Splits `repository:version`; `None` unless both parts are non-empty.
pub fn split_tag(tag: &str) -> Option<(&str, &str)> {
    tag.split_once(':').filter(|(r, v)| !r.is_empty() && !v.is_empty() && !v.contains(':'))
}

/// The hex MD5 of a string: Yatai's hashed names.
pub fn md5_hex(s: &str) -> String {
    Md5::digest(s.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bento_request_names_follow_yatai() {
        assert_eq!(bento_request_name("iris_classifier:4jwnpq2ia6g3baav"), "iris-classifier--4jwnpq2ia6g3baav");
        assert_eq!(bento_request_name("Iris:V1"), "iris--v1");
        let long = format!("{}:v1", "a".repeat(70));
        let name = bento_request_name(&long);
        assert!(name.starts_with("bento-") && name.len() == 6 + 32, "{name}");
    }

    #[test]
    fn image_names_follow_yatai() {
        assert_eq!(image_name("registry:5000/bentos", "iris:v1"), "registry:5000/bentos:yatai.iris.v1");
        assert_eq!(image_name("registry:5000", "iris:v1"), "registry:5000/yatai-bentos:yatai.iris.v1");
        let long = format!("{}:v1", "a".repeat(130));
        let image = image_name("r:5000/b", &long);
        assert_eq!(image.rsplit_once(':').unwrap().1.len(), 6 + 32);
    }

    #[test]
    fn tags_split_only_when_whole() {
        assert_eq!(split_tag("iris:v1"), Some(("iris", "v1")));
        assert_eq!(split_tag("iris"), None);
        assert_eq!(split_tag(":v1"), None);
        assert_eq!(split_tag("a:b:c"), None);
    }
}
