//! The generated CRDs are reviewed as a snapshot: a change to the types shows up as a diff of
//! `tests/snapshots/crds.yaml`. Regenerate with `UPDATE_SNAPSHOTS=1 cargo test -p yatai-kube-api`.

use yatai_kube_api::crds::{self, WebhookEndpoint};

#[test]
fn crds_match_the_reviewed_snapshot() {
    let yaml = crds::to_yaml(&crds::all(&WebhookEndpoint::default()));
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/snapshots/crds.yaml");
    if std::env::var_os("UPDATE_SNAPSHOTS").is_some() {
        std::fs::write(path, &yaml).unwrap();
    }
    let expected = std::fs::read_to_string(path).unwrap_or_default();
    assert!(yaml == expected, "the CRDs changed; review and run with UPDATE_SNAPSHOTS=1 to accept");
}

#[test]
fn crds_keep_yatai_groups_kinds_plurals_and_versions() {
    let crds = crds::all(&WebhookEndpoint::default());
    let summary: Vec<_> = crds
        .iter()
        .map(|c| {
            let versions: Vec<_> =
                c.spec.versions.iter().map(|v| format!("{}{}", v.name, if v.storage { "*" } else { "" })).collect();
            format!("{}/{}/{} {}", c.spec.group, c.spec.names.kind, c.spec.names.plural, versions.join(","))
        })
        .collect();
    assert_eq!(
        summary,
        [
            "serving.yatai.ai/BentoDeployment/bentodeployments v2alpha1*,v1alpha3",
            "resources.yatai.ai/BentoRequest/bentorequests v1alpha1*",
            "resources.yatai.ai/Bento/bentoes v1alpha1*",
        ]
    );
    for crd in &crds {
        assert_eq!(crd.spec.scope, "Namespaced");
        for v in &crd.spec.versions {
            assert!(v.served);
            assert!(
                v.subresources.as_ref().and_then(|s| s.status.as_ref()).is_some(),
                "{} has a status subresource",
                crd.spec.names.kind
            );
        }
    }
    let bd = &crds[0];
    let columns: Vec<_> =
        bd.spec.versions[0].additional_printer_columns.iter().flatten().map(|c| c.name.as_str()).collect();
    assert_eq!(columns, ["Bento", "Available", "Ready", "URL", "Age"]);
}
