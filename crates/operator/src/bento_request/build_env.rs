//! The build's environment: a BentoRequest's `spec.imageBuilderExtraContainerEnv` (Yatai gave
//! it to its image builder's container). Literal values are taken as they are, and
//! `valueFrom.secretKeyRef` is read from that Secret in the request's namespace (a missing
//! Secret or key is a failure the request's condition names, retried until it appears, unless
//! `optional: true`, which leaves the variable out). Every variable is treated as a secret:
//! the builder gives them to the dependency install and the `RUN` steps only, and masks their
//! values in its output ([`yatai_build::SecretEnvs`]).

use std::collections::HashMap;

use k8s_openapi::api::core::v1::{EnvVar, Secret};
use kube::Api;

use super::plan::reasons;

/// Why the environment could not be made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unresolved {
    /// A condition reason.
    pub reason: &'static str,
    pub message: String,
    /// Whether a retry may help (a Secret may appear); else only a spec change does.
    pub retry: bool,
}

/// The variables of `env`, with the values of the Secrets they name (read from `secrets`, the
/// API of the request's namespace).
pub async fn resolve(
    secrets: &Api<Secret>,
    namespace: &str,
    env: &[EnvVar],
) -> Result<Vec<(String, String)>, Unresolved> {
    let mut read: HashMap<String, Option<Secret>> = HashMap::new();
    let mut out = Vec::new();
    for var in env {
        let field = format!("spec.imageBuilderExtraContainerEnv {}", var.name);
        let Some(from) = &var.value_from else {
            out.push((var.name.clone(), var.value.clone().unwrap_or_default()));
            continue;
        };
        let Some(r) = &from.secret_key_ref else {
            return Err(Unresolved {
                reason: reasons::INVALID_SPEC,
                message: format!(
                    "{field}: only a value or valueFrom.secretKeyRef is supported for the image build's \
                     environment (not configMapKeyRef, fieldRef or resourceFieldRef)"
                ),
                retry: false,
            });
        };
        let optional = r.optional == Some(true);
        if !read.contains_key(&r.name) {
            let got = secrets.get_opt(&r.name).await.map_err(|e| Unresolved {
                reason: reasons::SECRET_UNREADABLE,
                message: format!(
                    "{field}: reading Secret {namespace}/{}: {}",
                    r.name,
                    match &e {
                        kube::Error::Api(s) if s.code == 403 => {
                            "the operator may not get Secrets in this namespace (see its RBAC)".to_string()
                        }
                        other => other.to_string(),
                    }
                ),
                retry: true,
            })?;
            read.insert(r.name.clone(), got);
        }
        let Some(secret) = &read[&r.name] else {
            if optional {
                continue;
            }
            return Err(Unresolved {
                reason: reasons::SECRET_NOT_FOUND,
                message: format!("{field}: Secret {namespace}/{} does not exist; waiting for it", r.name),
                retry: true,
            });
        };
        let value = secret
            .data
            .as_ref()
            .and_then(|d| d.get(&r.key))
            .map(|b| String::from_utf8(b.0.clone()).map_err(|_| ()))
            .or_else(|| secret.string_data.as_ref().and_then(|d| d.get(&r.key)).map(|s| Ok(s.clone())));
        match value {
            Some(Ok(v)) => out.push((var.name.clone(), v)),
            Some(Err(())) => {
                return Err(Unresolved {
                    reason: reasons::INVALID_SPEC,
                    message: format!(
                        "{field}: key {:?} of Secret {namespace}/{} is not UTF-8 text, which an environment \
                         variable must be",
                        r.key, r.name
                    ),
                    retry: false,
                });
            }
            None if optional => {}
            None => {
                return Err(Unresolved {
                    reason: reasons::SECRET_NOT_FOUND,
                    message: format!("{field}: Secret {namespace}/{} has no key {:?}; waiting for it", r.name, r.key),
                    retry: true,
                });
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{Request, Response};
    use k8s_openapi::api::core::v1::{EnvVarSource, SecretKeySelector};
    use kube::client::Body;
    use serde_json::json;

    type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

    fn api() -> (Api<Secret>, Handle) {
        let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        (Api::namespaced(kube::Client::new(service, "ml"), "ml"), handle)
    }

    /// Answers GETs of Secrets: `index-creds` holds `url` (base64 of a URL with a token) and
    /// `blob` (not UTF-8); any other is 404; `forbidden` is 403. Returns the paths asked.
    async fn serve(mut handle: Handle) -> Vec<String> {
        let mut seen = Vec::new();
        while let Some((request, send)) = handle.next_request().await {
            let path = request.uri().path().to_string();
            let (code, body) = match path.rsplit('/').next().unwrap() {
                "index-creds" => (
                    200,
                    json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "index-creds", "namespace": "ml"},
                           "data": {"url": "aHR0cHM6Ly91OnRvay0xMjM0QHB5cGkuZXhhbXBsZS9zaW1wbGU=", "blob": "/w=="}}),
                ),
                "forbidden" => (
                    403,
                    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Forbidden", "code": 403, "message": "forbidden"}),
                ),
                _ => (
                    404,
                    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": "not found"}),
                ),
            };
            send.send_response(
                Response::builder().status(code).body(Body::from(serde_json::to_vec(&body).unwrap())).unwrap(),
            );
            seen.push(path);
        }
        seen
    }

    fn literal(name: &str, value: &str) -> EnvVar {
        EnvVar { name: name.into(), value: Some(value.into()), value_from: None }
    }

    fn from_secret(name: &str, secret: &str, key: &str, optional: bool) -> EnvVar {
        EnvVar {
            name: name.into(),
            value: None,
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: secret.into(),
                    key: key.into(),
                    optional: optional.then_some(true),
                }),
                ..Default::default()
            }),
        }
    }

    async fn run(env: Vec<EnvVar>) -> (Result<Vec<(String, String)>, Unresolved>, Vec<String>) {
        let (api, handle) = api();
        let server = tokio::spawn(serve(handle));
        let result = resolve(&api, "ml", &env).await;
        drop(api);
        (result, server.await.unwrap())
    }

    #[tokio::test]
    async fn literals_and_secret_keys_become_the_environment_each_secret_read_once() {
        let (got, seen) = run(vec![
            literal("PLAIN", "x"),
            from_secret("UV_INDEX_URL", "index-creds", "url", false),
            from_secret("AGAIN", "index-creds", "url", false),
            from_secret("SKIPPED", "nope", "k", true),
            from_secret("SKIPPED_KEY", "index-creds", "missing", true),
        ])
        .await;
        let url = "https://u:tok-1234@pypi.example/simple".to_string();
        assert_eq!(
            got.unwrap(),
            [("PLAIN".into(), "x".into()), ("UV_INDEX_URL".into(), url.clone()), ("AGAIN".into(), url)]
        );
        assert_eq!(seen, ["/api/v1/namespaces/ml/secrets/index-creds", "/api/v1/namespaces/ml/secrets/nope"]);
    }

    #[tokio::test]
    async fn a_missing_secret_or_key_is_named_and_retried() {
        let (got, _) = run(vec![from_secret("UV_INDEX_URL", "nope", "url", false)]).await;
        let err = got.unwrap_err();
        assert_eq!((err.reason, err.retry), (reasons::SECRET_NOT_FOUND, true));
        assert!(
            err.message.contains("Secret ml/nope does not exist") && err.message.contains("UV_INDEX_URL"),
            "{err:?}"
        );

        let (got, _) = run(vec![from_secret("UV_INDEX_URL", "index-creds", "token", false)]).await;
        let err = got.unwrap_err();
        assert_eq!((err.reason, err.retry), (reasons::SECRET_NOT_FOUND, true));
        assert!(err.message.contains("has no key \"token\""), "{err:?}");

        let (got, _) = run(vec![from_secret("X", "forbidden", "k", false)]).await;
        let err = got.unwrap_err();
        assert_eq!((err.reason, err.retry), (reasons::SECRET_UNREADABLE, true));
        assert!(err.message.contains("may not get Secrets"), "{err:?}");
    }

    #[tokio::test]
    async fn other_sources_and_binary_values_are_refused_without_a_retry() {
        let mut field = literal("POD", "");
        field.value = None;
        field.value_from = Some(EnvVarSource {
            field_ref: Some(k8s_openapi::api::core::v1::ObjectFieldSelector {
                field_path: "metadata.name".into(),
                ..Default::default()
            }),
            ..Default::default()
        });
        let (got, seen) = run(vec![field]).await;
        let err = got.unwrap_err();
        assert_eq!((err.reason, err.retry), (reasons::INVALID_SPEC, false));
        assert!(seen.is_empty());

        let (got, _) = run(vec![from_secret("B", "index-creds", "blob", false)]).await;
        let err = got.unwrap_err();
        assert_eq!((err.reason, err.retry), (reasons::INVALID_SPEC, false));
        assert!(!err.message.contains('\u{ff}'));
    }
}
