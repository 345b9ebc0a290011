//! What a cluster has, for its page and for the moment a user registers it: reachable and
//! its version, the CRDs, yatai's permissions in the namespace, the namespace itself, a running
//! operator, and the ingress domain suffix. Every problem is a sentence saying what to do.
//!
//! Only what yatai's own Role needs is asked: the CRDs are found through discovery (open to
//! every authenticated user), permissions through SelfSubjectAccessReviews.

use std::time::Duration;

use k8s_openapi::api::authorization::v1::{ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::{ListParams, PostParams};
use yatai_core::deploy::{ClusterHealth, KubeClusterConfig};

/// The operator's Lease (crates/operator/src/leader.rs) and its default namespace.
pub const OPERATOR_LEASE: &str = "yatai-operator";
pub const OPERATOR_NAMESPACE: &str = "yatai-system";
/// The operator's `network` ConfigMap and its key (crates/operator/src/network.rs).
const NETWORK_CONFIG_MAP: &str = "network";
const DOMAIN_SUFFIX_KEY: &str = "domain-suffix";
/// A Lease renewed within this long has a live holder (the operator renews every 5 s and
/// lets it expire after 15 s; the slack covers clock skew between the nodes and yatai).
const LEASE_FRESH: Duration = Duration::from_secs(60);
/// One probe step's limit: an unreachable cluster answers in seconds, not minutes.
const STEP: Duration = Duration::from_secs(10);

/// The CRDs yatai writes, as `(group/version, plural, CRD name)`.
pub const CRDS: [(&str, &str, &str); 3] = [
    ("serving.yatai.ai/v2alpha1", "bentodeployments", "bentodeployments.serving.yatai.ai"),
    ("resources.yatai.ai/v1alpha1", "bentorequests", "bentorequests.resources.yatai.ai"),
    ("resources.yatai.ai/v1alpha1", "bentoes", "bentoes.resources.yatai.ai"),
];

/// What yatai does in a deployment namespace: `(verb, group, resource, subresource)`.
pub const PERMISSIONS: [(&str, &str, &str, &str); 18] = [
    ("get", "serving.yatai.ai", "bentodeployments", ""),
    ("list", "serving.yatai.ai", "bentodeployments", ""),
    ("watch", "serving.yatai.ai", "bentodeployments", ""),
    ("create", "serving.yatai.ai", "bentodeployments", ""),
    ("patch", "serving.yatai.ai", "bentodeployments", ""),
    ("delete", "serving.yatai.ai", "bentodeployments", ""),
    ("list", "resources.yatai.ai", "bentorequests", ""),
    ("watch", "resources.yatai.ai", "bentorequests", ""),
    ("create", "resources.yatai.ai", "bentorequests", ""),
    ("patch", "resources.yatai.ai", "bentorequests", ""),
    ("delete", "resources.yatai.ai", "bentorequests", ""),
    ("list", "resources.yatai.ai", "bentoes", ""),
    ("watch", "resources.yatai.ai", "bentoes", ""),
    ("create", "resources.yatai.ai", "bentoes", ""),
    ("patch", "resources.yatai.ai", "bentoes", ""),
    ("list", "", "pods", ""),
    ("watch", "", "pods", ""),
    ("get", "", "pods", "log"),
];

pub async fn probe(cluster: &KubeClusterConfig) -> ClusterHealth {
    let mut health = ClusterHealth::default();
    let (client, url) = match crate::client::client(cluster, Default::default()).await {
        Ok(c) => c,
        Err(problem) => {
            health.problems.push(problem);
            return health;
        }
    };
    match tokio::time::timeout(STEP, client.apiserver_version()).await {
        Ok(Ok(info)) => {
            health.reachable = true;
            health.version = Some(info.git_version);
        }
        Ok(Err(e)) => {
            health.problems.push(unreachable(&url, &e.to_string()));
            return health;
        }
        Err(_) => {
            health.problems.push(unreachable(&url, &format!("no answer within {}s", STEP.as_secs())));
            return health;
        }
    }
    let ns = cluster.namespace.as_str();

    let mut found = Vec::new();
    for (group_version, plural, _) in CRDS {
        if let Ok(Ok(list)) = tokio::time::timeout(STEP, client.list_api_group_resources(group_version)).await
            && list.resources.iter().any(|r| r.name == plural)
        {
            found.push(plural);
        }
    }
    let crd_problem = crd_problem(&found);
    health.crds_installed = crd_problem.is_none();
    health.problems.extend(crd_problem);

    let denied = denied_permissions(&client, ns).await;
    if !denied.is_empty() {
        health.problems.push(rbac_problem(ns, &denied));
    }
    if let Some(problem) = namespace_problem(&client, ns, health.crds_installed).await {
        health.problems.push(problem);
    }

    let (running, operator_ns, problem) = operator(&client, ns, cluster.operator_namespace.as_deref()).await;
    health.operator_running = running;
    health.problems.extend(problem);

    health.domain_suffix = match cluster.domain_suffix.clone() {
        Some(s) => Some(s),
        None => {
            let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &operator_ns);
            let cm =
                tokio::time::timeout(STEP, cms.get_opt(NETWORK_CONFIG_MAP)).await.ok().and_then(Result::ok).flatten();
            cm.and_then(|cm| cm.data?.get(DOMAIN_SUFFIX_KEY).cloned())
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
        }
    };
    if health.domain_suffix.is_none() {
        health.problems.push(format!(
            "the ingress domain suffix is not known, so deployments get no URL: set the cluster's domain suffix, or \
             `{DOMAIN_SUFFIX_KEY}` in ConfigMap {operator_ns}/{NETWORK_CONFIG_MAP} (the operator writes it there once \
             the ingress controller publishes its address)"
        ));
    }
    health
}

fn unreachable(url: &str, error: &str) -> String {
    format!(
        "cannot reach the Kubernetes API server at {url}: {error}: check the server address in the kubeconfig and that \
         yatai's host can connect to it"
    )
}

/// The problem when some CRDs are not served, from the plurals discovery found.
pub fn crd_problem(found: &[&str]) -> Option<String> {
    let missing: Vec<&str> = CRDS.iter().filter(|(_, p, _)| !found.contains(p)).map(|(_, _, name)| *name).collect();
    (!missing.is_empty()).then(|| {
        format!(
            "the yatai CRDs are not installed (missing: {}): install them with `yatai crds | kubectl apply -f -` or the \
             Helm chart, then check again",
            missing.join(", ")
        )
    })
}

/// The permissions yatai lacks in `ns`, as `verb group/resource[/subresource]`.
async fn denied_permissions(client: &kube::Client, ns: &str) -> Vec<String> {
    let api: Api<SelfSubjectAccessReview> = Api::all(client.clone());
    let checks = PERMISSIONS.iter().map(|(verb, group, resource, sub)| {
        let api = api.clone();
        async move {
            let review = SelfSubjectAccessReview {
                spec: SelfSubjectAccessReviewSpec {
                    resource_attributes: Some(ResourceAttributes {
                        namespace: Some(ns.to_string()),
                        verb: Some(verb.to_string()),
                        group: Some(group.to_string()),
                        resource: Some(resource.to_string()),
                        subresource: Some(sub.to_string()).filter(|s| !s.is_empty()),
                        ..Default::default()
                    }),
                    non_resource_attributes: None,
                },
                ..Default::default()
            };
            let allowed = match tokio::time::timeout(STEP, api.create(&PostParams::default(), &review)).await {
                Ok(Ok(r)) => r.status.is_some_and(|s| s.allowed),
                _ => false,
            };
            (!allowed).then(|| permission_text(verb, group, resource, sub))
        }
    });
    futures::future::join_all(checks).await.into_iter().flatten().collect()
}

fn permission_text(verb: &str, group: &str, resource: &str, sub: &str) -> String {
    let mut r = if group.is_empty() { resource.to_string() } else { format!("{resource}.{group}") };
    if !sub.is_empty() {
        r = format!("{r}/{sub}");
    }
    format!("{verb} {r}")
}

pub fn rbac_problem(ns: &str, denied: &[String]) -> String {
    format!(
        "the credentials lack permissions in namespace {ns}: {}: bind them the Role of the Helm chart \
         (deploy/helm/yatai) or of deploy/manifests/yatai.yaml, or use a kubeconfig that has them",
        denied.join(", ")
    )
}

/// Whether the namespace exists: read directly when allowed, else through a dry-run create
/// (which a Role limited to the namespace may do, and which fails on a missing namespace).
async fn namespace_problem(client: &kube::Client, ns: &str, crds: bool) -> Option<String> {
    let missing =
        || format!("namespace {ns} does not exist: create it (kubectl create namespace {ns}) or choose another");
    let namespaces: Api<Namespace> = Api::all(client.clone());
    match tokio::time::timeout(STEP, namespaces.get_opt(ns)).await {
        Ok(Ok(Some(_))) => return None,
        Ok(Ok(None)) => return Some(missing()),
        _ => {}
    }
    if !crds {
        return None;
    }
    let requests: Api<yatai_kube_api::BentoRequest> = Api::namespaced(client.clone(), ns);
    let probe = yatai_kube_api::BentoRequest::new(
        "yatai-namespace-probe",
        yatai_kube_api::resources::BentoRequestSpec { bento_tag: "probe:probe".into(), ..Default::default() },
    );
    let params = PostParams { dry_run: true, ..Default::default() };
    match tokio::time::timeout(STEP, requests.create(&params, &probe)).await {
        Ok(Err(kube::Error::Api(e))) if e.code == 404 && e.message.contains("namespace") => Some(missing()),
        _ => None,
    }
}

/// Whether an operator holds its Lease: `(running, the operator's namespace, problem)`. Looked
/// for in `operator_ns` when the cluster's settings name it, else in every namespace (or, when
/// the credentials may not list Leases, in yatai-system and the deployments' namespace).
async fn operator(client: &kube::Client, ns: &str, operator_ns: Option<&str>) -> (bool, String, Option<String>) {
    let expected = operator_ns.unwrap_or(OPERATOR_NAMESPACE);
    let mut leases = Vec::new();
    let all: Api<Lease> = Api::all(client.clone());
    let by_name = ListParams::default().fields(&format!("metadata.name={OPERATOR_LEASE}"));
    let mut readable = false;
    let listed = match operator_ns {
        Some(_) => None,
        None => tokio::time::timeout(STEP, all.list(&by_name)).await.ok().and_then(Result::ok),
    };
    match listed {
        Some(list) => {
            readable = true;
            leases = list.items;
        }
        _ => {
            let candidates = match operator_ns {
                Some(o) => vec![o],
                None => vec![OPERATOR_NAMESPACE, ns],
            };
            for candidate in candidates {
                let api: Api<Lease> = Api::namespaced(client.clone(), candidate);
                if let Ok(Ok(found)) = tokio::time::timeout(STEP, api.get_opt(OPERATOR_LEASE)).await {
                    readable = true;
                    leases.extend(found);
                }
            }
        }
    }
    let now = Timestamp::now();
    let live = |l: &Lease| {
        let spec = l.spec.clone().unwrap_or_default();
        let held = spec.holder_identity.is_some_and(|h| !h.is_empty());
        let renewed = spec.renew_time.or(spec.acquire_time).map(|t| t.0);
        held && renewed.is_some_and(|t| now.duration_since(t).as_secs() < LEASE_FRESH.as_secs() as i64)
    };
    leases.sort_by_key(|l| !live(l));
    let operator_ns = leases.first().and_then(|l| l.metadata.namespace.clone()).unwrap_or_else(|| expected.to_string());
    if leases.first().is_some_and(live) {
        return (true, operator_ns, None);
    }
    let problem = if !readable {
        format!(
            "cannot tell whether the yatai operator runs: the credentials may not read Lease \
             {expected}/{OPERATOR_LEASE}; grant `get leases` there, or check the operator's pod yourself"
        )
    } else if leases.is_empty() {
        format!(
            "no yatai operator runs (no Lease {OPERATOR_LEASE} in any namespace): install it with the Helm chart \
             (deploy/helm/yatai) or deploy/manifests/yatai.yaml"
        )
    } else {
        format!(
            "the yatai operator is not running (its Lease {operator_ns}/{OPERATOR_LEASE} was not renewed in the last \
             minute): check its pod and log (kubectl -n {operator_ns} logs deploy/yatai-operator)"
        )
    };
    (false, operator_ns, Some(problem))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_crds_are_named_with_what_to_do() {
        assert_eq!(crd_problem(&["bentodeployments", "bentorequests", "bentoes"]), None);
        let p = crd_problem(&["bentodeployments"]).unwrap();
        assert!(p.contains("bentorequests.resources.yatai.ai, bentoes.resources.yatai.ai"), "{p}");
        assert!(p.contains("yatai crds | kubectl apply -f -"), "{p}");
        assert!(crd_problem(&[]).unwrap().contains("bentodeployments.serving.yatai.ai"));
    }

    #[test]
    fn permissions_read_as_kubectl_would_say_them() {
        assert_eq!(permission_text("get", "", "pods", "log"), "get pods/log");
        assert_eq!(
            permission_text("patch", "serving.yatai.ai", "bentodeployments", ""),
            "patch bentodeployments.serving.yatai.ai"
        );
        let p = rbac_problem("ml", &["get pods/log".into()]);
        assert!(p.starts_with("the credentials lack permissions in namespace ml: get pods/log"), "{p}");
    }
}
