//! What the registry reads out of the manifests the client sends. Manifests
//! are stored and returned verbatim; these helpers only look inside.

use serde_json::Value;
use std::collections::BTreeSet;

use crate::tag::Tag;

/// Every model a bento manifest refers to, from the top-level `models` list
/// (all specs), `services[].models[].tag` (spec 2) and `runners[].models`
/// (spec 1). Deduplicated and sorted. Entries that are not valid
/// `name:version` tags are skipped: they cannot name a stored model.
pub fn bento_model_refs(manifest: &Value) -> Vec<Tag> {
    let mut tags = BTreeSet::new();
    let mut add = |v: &Value| {
        if let Some(s) = v.as_str()
            && let Ok(tag) = Tag::parse(s)
            && tag.version.is_some()
        {
            tags.insert(tag);
        }
    };
    if let Some(models) = manifest.get("models").and_then(Value::as_array) {
        models.iter().for_each(&mut add);
    }
    for service in manifest.get("services").and_then(Value::as_array).into_iter().flatten() {
        for model in service.get("models").and_then(Value::as_array).into_iter().flatten() {
            if let Some(tag) = model.get("tag") {
                add(tag);
            }
        }
    }
    for runner in manifest.get("runners").and_then(Value::as_array).into_iter().flatten() {
        for model in runner.get("models").and_then(Value::as_array).into_iter().flatten() {
            add(model);
        }
    }
    tags.into_iter().collect()
}

/// `size_bytes` as the client computed it (directory size, not archive size).
pub fn manifest_size_bytes(manifest: &Value) -> Option<i64> {
    manifest.get("size_bytes").and_then(Value::as_i64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn collects_models_from_every_place_a_manifest_names_them() {
        let m = json!({
            "models": ["demo-model:v1", "other:v2"],
            "services": [{"name": "Demo", "models": [{"tag": "demo-model:v1"}, {"tag": "third:v3"}]}],
            "runners": [{"name": "r", "models": ["legacy:v0"]}]
        });
        let got: Vec<String> = bento_model_refs(&m).iter().map(Tag::to_string).collect();
        assert_eq!(got, ["demo-model:v1", "legacy:v0", "other:v2", "third:v3"]);
    }

    #[test]
    fn ignores_junk_and_missing_fields() {
        let m = json!({"models": [1, null, "no-version", "Bad:Tag"], "services": null});
        assert!(bento_model_refs(&m).is_empty());
        assert!(bento_model_refs(&json!(null)).is_empty());
    }
}
