//! One `ConversionReview` in, one out: the pure part of the webhook.

use kube::core::Status;
use kube::core::conversion::{ConversionRequest, ConversionResponse, ConversionReview};
use serde_json::Value;
use yatai_kube_api::serving::{GROUP, conversion, v1alpha3, v2alpha1};

const V1ALPHA3: &str = "serving.yatai.ai/v1alpha3";
const V2ALPHA1: &str = "serving.yatai.ai/v2alpha1";

/// Answers a review body. Never panics and never fails as a whole: what cannot be converted
/// becomes a `Failure` result whose message the API server passes on to the client.
pub fn answer(body: &[u8]) -> ConversionReview {
    let review: ConversionReview = match serde_json::from_slice(body) {
        Ok(review) => review,
        Err(e) => {
            return ConversionResponse::invalid(Status::failure(
                &format!("the body is not a ConversionReview: {e}"),
                "BadRequest",
            ))
            .into_review();
        }
    };
    let request = match ConversionRequest::from_review(review) {
        Ok(request) => request,
        Err(e) => return ConversionResponse::invalid(Status::failure(&e.to_string(), "BadRequest")).into_review(),
    };
    let desired = request.desired_api_version.clone();
    let objects = request.objects.clone();
    let response = ConversionResponse::for_request(request);
    let converted: Result<Vec<Value>, String> = objects.into_iter().map(|o| convert(o, &desired)).collect();
    match converted {
        Ok(objects) => response.success(objects),
        Err(message) => {
            tracing::warn!("conversion to {desired} failed: {message}");
            response.failure(Status::failure(&message, "ConversionFailed"))
        }
    }
    .into_review()
}

/// One object to `desired`. An object already in that version passes through untouched.
pub fn convert(object: Value, desired: &str) -> Result<Value, String> {
    let from = object.get("apiVersion").and_then(Value::as_str).unwrap_or_default().to_string();
    let kind = object.get("kind").and_then(Value::as_str).unwrap_or_default().to_string();
    let name = object.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("?").to_string();
    if from == desired {
        return Ok(object);
    }
    if kind != "BentoDeployment" {
        return Err(format!("{kind} {name}: this webhook converts only BentoDeployment ({GROUP} v1alpha3 ⇄ v2alpha1)"));
    }
    let converted = match (from.as_str(), desired) {
        (V1ALPHA3, V2ALPHA1) => {
            let old: v1alpha3::BentoDeployment = parse(&object, &from, &name)?;
            let new = conversion::to_v2alpha1(&old).map_err(|e| format!("BentoDeployment {name}: {e}"))?;
            serde_json::to_value(new)
        }
        (V2ALPHA1, V1ALPHA3) => {
            let new: v2alpha1::BentoDeployment = parse(&object, &from, &name)?;
            serde_json::to_value(conversion::to_v1alpha3(&new))
        }
        _ => {
            return Err(format!(
                "BentoDeployment {name}: cannot convert from {from:?} to {desired:?}; this webhook converts between {V1ALPHA3} and {V2ALPHA1}"
            ));
        }
    };
    let mut converted = converted.map_err(|e| format!("BentoDeployment {name}: serializing the result: {e}"))?;
    // The API server keeps the original metadata apart from labels and annotations; hand it
    // back verbatim so that nothing our types do not model is lost on the way.
    if let (Some(out), Some(original)) = (converted.as_object_mut(), object.get("metadata")) {
        let mut metadata = original.clone();
        let annotations = out.get("metadata").and_then(|m| m.get("annotations")).cloned();
        if let (Some(m), Some(a)) = (metadata.as_object_mut(), annotations) {
            m.insert("annotations".into(), a);
        }
        out.insert("metadata".into(), metadata);
        out.insert("apiVersion".into(), Value::String(desired.into()));
        out.insert("kind".into(), Value::String(kind));
    }
    Ok(converted)
}

fn parse<T: serde::de::DeserializeOwned>(object: &Value, from: &str, name: &str) -> Result<T, String> {
    T::deserialize(object).map_err(|e| format!("BentoDeployment {name} is not a valid {from} object: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn review(desired: &str, objects: Vec<Value>) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "apiVersion": "apiextensions.k8s.io/v1",
            "kind": "ConversionReview",
            "request": {"uid": "u-1", "desiredAPIVersion": desired, "objects": objects}
        }))
        .unwrap()
    }

    fn v1(name: &str, tag: &str) -> Value {
        json!({
            "apiVersion": V1ALPHA3, "kind": "BentoDeployment",
            "metadata": {"name": name, "namespace": "yatai", "uid": "abc", "resourceVersion": "7",
                         "annotations": {"keep": "me"}},
            "spec": {"bento_tag": tag, "envs": [{"key": "A", "value": "1"}],
                     "autoscaling": {"min_replicas": 1, "max_replicas": 3, "qps": 5}}
        })
    }

    fn answered(body: &[u8]) -> Value {
        serde_json::to_value(answer(body)).unwrap()
    }

    #[test]
    fn converts_each_object_and_keeps_order_and_metadata() {
        let out = answered(&review(V2ALPHA1, vec![v1("a", "iris:v1"), v1("b", "iris:v2")]));
        assert_eq!(out["response"]["uid"], "u-1");
        assert_eq!(out["response"]["result"]["status"], "Success", "{out}");
        let objects = out["response"]["convertedObjects"].as_array().unwrap();
        assert_eq!(objects.len(), 2);
        assert_eq!(objects[0]["apiVersion"], V2ALPHA1);
        assert_eq!(objects[0]["spec"]["bento"], "iris--v1");
        assert_eq!(objects[1]["spec"]["bento"], "iris--v2");
        assert_eq!(objects[0]["metadata"]["uid"], "abc");
        assert_eq!(objects[0]["metadata"]["resourceVersion"], "7");
        assert_eq!(objects[0]["metadata"]["annotations"]["keep"], "me");
        assert_eq!(objects[0]["metadata"]["annotations"][conversion::BENTO_TAG_ANNOTATION], "iris:v1");
        assert_eq!(objects[0]["spec"]["autoscaling"]["metrics"][0]["pods"]["metric"]["name"], "http_request");

        let back = answered(&review(V1ALPHA3, vec![objects[0].clone()]));
        let object = &back["response"]["convertedObjects"][0];
        assert_eq!(object["apiVersion"], V1ALPHA3);
        assert_eq!(object["spec"]["bento_tag"], "iris:v1");
        assert_eq!(object["spec"]["envs"], json!([{"key": "A", "value": "1"}]));
    }

    #[test]
    fn objects_already_in_the_desired_version_pass_through() {
        let object = v1("a", "anything goes");
        let out = answered(&review(V1ALPHA3, vec![object.clone()]));
        assert_eq!(out["response"]["convertedObjects"][0], object);
    }

    #[test]
    fn failures_are_answers_not_panics() {
        for (body, needle) in [
            (review(V2ALPHA1, vec![v1("bad", "no-version")]), "<bento name>:<version>"),
            (review("serving.yatai.ai/v1alpha1", vec![v1("a", "iris:v1")]), "cannot convert"),
            (
                review(V2ALPHA1, vec![json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}})]),
                "only BentoDeployment",
            ),
            (
                review(
                    V2ALPHA1,
                    vec![
                        json!({"apiVersion": V1ALPHA3, "kind": "BentoDeployment", "metadata": {"name": "x"}, "spec": {"bento_tag": 5}}),
                    ],
                ),
                "not a valid",
            ),
            (b"{not json".to_vec(), "not a ConversionReview"),
            (br#"{"apiVersion":"apiextensions.k8s.io/v1","kind":"ConversionReview"}"#.to_vec(), "request missing"),
        ] {
            let out = answered(&body);
            assert_eq!(out["response"]["result"]["status"], "Failure", "{out}");
            let message = out["response"]["result"]["message"].as_str().unwrap();
            assert!(message.contains(needle), "{message:?} should contain {needle:?}");
            assert!(out["response"]["convertedObjects"].as_array().is_none_or(Vec::is_empty));
        }
    }
}
