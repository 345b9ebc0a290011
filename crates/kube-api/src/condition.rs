//! `status.conditions` as Kubernetes defines them (`metav1.Condition`): one entry per type,
//! `lastTransitionTime` moves only when the status changes.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

pub const TRUE: &str = "True";
pub const FALSE: &str = "False";
pub const UNKNOWN: &str = "Unknown";

/// The condition of this type, if any.
pub fn find<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// Whether the condition of this type has status `True`.
pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    find(conditions, type_).is_some_and(|c| c.status == TRUE)
}

/// Sets a condition, keeping its `lastTransitionTime` when the status did not change.
/// Returns whether anything changed (so a controller writes status only when it must).
pub fn set(
    conditions: &mut Vec<Condition>,
    type_: &str,
    status: &str,
    reason: &str,
    message: &str,
    observed_generation: Option<i64>,
) -> bool {
    let reason = if reason.is_empty() { status } else { reason };
    match conditions.iter_mut().find(|c| c.type_ == type_) {
        Some(c) => {
            if c.status == status
                && c.reason == reason
                && c.message == message
                && c.observed_generation == observed_generation
            {
                return false;
            }
            if c.status != status {
                c.last_transition_time = Time(Timestamp::now());
            }
            c.status = status.to_string();
            c.reason = reason.to_string();
            c.message = message.to_string();
            c.observed_generation = observed_generation;
            true
        }
        None => {
            conditions.push(Condition {
                type_: type_.to_string(),
                status: status.to_string(),
                reason: reason.to_string(),
                message: message.to_string(),
                observed_generation,
                last_transition_time: Time(Timestamp::now()),
            });
            true
        }
    }
}

/// Removes the condition of this type; returns whether there was one.
pub fn remove(conditions: &mut Vec<Condition>, type_: &str) -> bool {
    let before = conditions.len();
    conditions.retain(|c| c.type_ != type_);
    before != conditions.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transition_time_moves_only_when_the_status_changes() {
        let mut cs = Vec::new();
        assert!(set(&mut cs, "Available", FALSE, "Deploying", "0/1 ready", Some(1)));
        let first = cs[0].last_transition_time.clone();
        assert!(!set(&mut cs, "Available", FALSE, "Deploying", "0/1 ready", Some(1)));
        assert!(set(&mut cs, "Available", FALSE, "Deploying", "0/2 ready", Some(2)));
        assert_eq!(cs[0].last_transition_time, first);
        assert!(set(&mut cs, "Available", TRUE, "Ready", "", Some(2)));
        assert!(is_true(&cs, "Available"));
        assert_eq!(cs.len(), 1);
        assert!(remove(&mut cs, "Available"));
        assert!(find(&cs, "Available").is_none());
    }
}
