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

/// Property tests: manifests are whatever JSON a client sends.
#[cfg(test)]
pub(crate) mod properties {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    const PART: &str = "[a-z0-9]([-._a-z0-9]{0,20}[a-z0-9])?";

    /// Strings that are often tags, sometimes almost.
    fn tagish() -> impl Strategy<Value = String> {
        prop_oneof![
            (PART, PART).prop_map(|(n, v)| format!("{n}:{v}")),
            PART.prop_map(String::from),
            "[a-zA-Z0-9:._/ -]{0,30}",
            any::<String>(),
        ]
    }

    /// Any JSON value, with keys drawn from the ones the registry reads so that arbitrary
    /// values land where it looks.
    pub fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from), // NaN and infinities become null
            tagish().prop_map(Value::from),
        ];
        leaf.prop_recursive(4, 64, 6, |inner| {
            let key = prop_oneof![
                Just("models".to_owned()),
                Just("services".to_owned()),
                Just("runners".to_owned()),
                Just("tag".to_owned()),
                Just("size_bytes".to_owned()),
                "[a-z]{0,6}",
            ];
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
                prop::collection::btree_map(key, inner, 0..6).prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// Every string anywhere in `v`.
    fn strings(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::String(s) => out.push(s.clone()),
            Value::Array(a) => a.iter().for_each(|x| strings(x, out)),
            Value::Object(o) => o.values().for_each(|x| strings(x, out)),
            _ => {}
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 1024, failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn model_refs_of_any_json_are_valid_versioned_tags(manifest in json_value()) {
            let refs = bento_model_refs(&manifest);
            let mut texts = Vec::new();
            strings(&manifest, &mut texts);
            for tag in &refs {
                prop_assert!(tag.version.is_some(), "{}", tag);
                prop_assert_eq!(Tag::parse(&tag.to_string()), Ok(tag.clone()));
                // Found, not made up: the manifest holds the tag's exact text.
                prop_assert!(texts.contains(&tag.to_string()), "{} is not in {}", tag, manifest);
            }
            prop_assert!(refs.windows(2).all(|w| w[0] < w[1]), "not sorted and deduplicated: {:?}", refs);
            prop_assert_eq!(manifest_size_bytes(&manifest), manifest.get("size_bytes").and_then(Value::as_i64));
        }

        #[test]
        fn every_placed_model_is_found(
            top in prop::collection::vec((PART, PART), 0..4),
            service in prop::collection::vec((PART, PART), 0..4),
            runner in prop::collection::vec((PART, PART), 0..4),
            junk in json_value(),
        ) {
            let text = |v: &[(String, String)]| v.iter().map(|(n, v)| format!("{n}:{v}")).collect::<Vec<_>>();
            let models = [text(&top), vec!["unversioned".to_owned()]].concat();
            let manifest = json!({
                "models": models,
                "services": [{"models": text(&service).iter().map(|t| json!({"tag": t})).collect::<Vec<_>>()}, junk],
                "runners": [{"models": text(&runner)}, {"models": "not-a-list:v1"}],
            });
            let mut want: Vec<String> = [text(&top), text(&service), text(&runner)].concat();
            want.sort();
            want.dedup();
            let got: Vec<String> = bento_model_refs(&manifest).iter().map(Tag::to_string).collect();
            // `junk` may name more models; the placed ones are all there, in order.
            prop_assert!(want.iter().all(|t| got.contains(t)), "{:?} missing from {:?}", want, got);
            prop_assert!(!got.contains(&"not-a-list:v1".to_owned()));
        }
    }
}
