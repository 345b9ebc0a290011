//! Labels on repositories, versions and deployments: `{key, value}` pairs,
//! stored as a canonical JSON list so that label filters can match them.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct Label {
    #[schema(min_length = 1, max_length = 256)]
    pub key: String,
    #[schema(max_length = 4096)]
    pub value: String,
}

/// Parses labels as stored (a JSON list of `{key, value}`).
pub fn labels_from_json(s: &str) -> Vec<Label> {
    serde_json::from_str(s).unwrap_or_default()
}

/// Serialises labels canonically (`[{"key":…,"value":…}]`, in order), the
/// form label filters match against.
pub fn labels_to_json(labels: &[Label]) -> String {
    serde_json::to_string(labels).expect("labels serialise")
}
