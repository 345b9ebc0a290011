//! The image registry as the BentoRequest controller sees it: does a tag exist, and the
//! credentials to push with (a docker `config.json` for the builder, a
//! `kubernetes.io/dockerconfigjson` Secret for the pods that pull).

use std::collections::BTreeMap;

use base64::Engine as _;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::ObjectMeta;
use yatai_build::registry::{Credentials, ImageRef, Registry, RegistryError};

/// The Secret each BentoRequest namespace gets when the operator has registry credentials
/// (Yatai's name, so existing pull-secret setups keep working).
pub const REGCRED_SECRET: &str = "yatai-regcred";

/// Username and password for the push registry.
#[derive(Clone)]
pub struct RegistryAuth {
    pub username: String,
    pub password: String,
}

/// Why the registry could not answer.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("image {image:?} is not a valid image reference: {detail}")]
    BadImage { image: String, detail: String },
    #[error(
        "{source}. Check that the registry is up and reachable from the operator, and \
         --image-registry / --image-registry-insecure (plain HTTP) and the credentials \
         (YATAI_IMAGE_REGISTRY_USERNAME / _PASSWORD); retrying with backoff"
    )]
    Registry {
        #[source]
        source: RegistryError,
    },
}

/// Whether `image` (with a tag) is in its registry: HEAD of the manifest, 404 → absent.
pub async fn image_exists(image: &str, plain_http: bool, auth: Option<&RegistryAuth>) -> Result<bool, CheckError> {
    let r = ImageRef::parse(image).map_err(|detail| CheckError::BadImage { image: image.into(), detail })?;
    let creds = auth.map(|a| Credentials::Basic { username: a.username.clone(), password: a.password.clone() });
    let reg = Registry::new(r.api_host(), plain_http, creds)
        .map_err(|e| CheckError::BadImage { image: image.into(), detail: e.to_string() })?;
    let wrap = |source| CheckError::Registry { source };
    reg.ping().await.map_err(wrap)?;
    Ok(reg.manifest_digest(&r.repository, r.reference()).await.map_err(wrap)?.is_some())
}

/// A docker `config.json` granting `auth` on `host`.
pub fn docker_config_json(host: &str, auth: &RegistryAuth) -> String {
    let token = base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", auth.username, auth.password));
    serde_json::json!({"auths": {host: {"username": auth.username, "password": auth.password, "auth": token}}})
        .to_string()
}

/// The pull Secret for `host` in `namespace`.
pub fn regcred_secret(namespace: &str, host: &str, auth: &RegistryAuth) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(REGCRED_SECRET.into()),
            namespace: Some(namespace.into()),
            labels: Some(BTreeMap::from([("app.kubernetes.io/managed-by".into(), "yatai-operator".into())])),
            ..Default::default()
        },
        type_: Some("kubernetes.io/dockerconfigjson".into()),
        data: Some(BTreeMap::from([(
            ".dockerconfigjson".into(),
            ByteString(docker_config_json(host, auth).into_bytes()),
        )])),
        ..Default::default()
    }
}

/// The registry host of an image, as docker config files key it.
pub fn registry_host(image: &str) -> Option<String> {
    ImageRef::parse(image).ok().map(|r| r.registry)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_config_carries_basic_auth_for_the_host() {
        let a = RegistryAuth { username: "u".into(), password: "p:w".into() };
        let v: serde_json::Value = serde_json::from_str(&docker_config_json("reg:5000", &a)).unwrap();
        assert_eq!(v["auths"]["reg:5000"]["auth"], "dTpwOnc=");
        let s = regcred_secret("ns", "reg:5000", &a);
        assert_eq!(s.type_.as_deref(), Some("kubernetes.io/dockerconfigjson"));
        assert!(s.data.unwrap().contains_key(".dockerconfigjson"));
        assert_eq!(registry_host("reg:5000/b/c:t").as_deref(), Some("reg:5000"));
    }
}
