//! What a reconcile of a BentoRequest does next, decided from its spec, its conditions and the
//! builds this operator runs: a pure function, so every branch has a fast test.

use std::time::Duration;

use yatai_kube_api::condition::{self, FALSE, TRUE};
use yatai_kube_api::names;
use yatai_kube_api::resources::{BentoRequest, BentoRequestStatus, annotations, conditions as c};

/// Condition reasons this controller writes (beside Yatai's condition types).
pub mod reasons {
    pub const IMAGE_FOUND: &str = "ImageFound";
    pub const IMAGE_NOT_FOUND: &str = "ImageNotFound";
    pub const FORCE_BUILD: &str = "ForceBuild";
    pub const IMAGE_BUILT: &str = "ImageBuilt";
    pub const BUILDING: &str = "Building";
    pub const BUILD_FAILED: &str = "BuildFailed";
    /// The bento cannot be built this way; only a spec change helps.
    pub const UNBUILDABLE: &str = "Unbuildable";
    pub const TIMEOUT: &str = "Timeout";
    pub const REGISTRY_UNREACHABLE: &str = "RegistryUnreachable";
    pub const NO_IMAGE_REGISTRY: &str = "NoImageRegistry";
    pub const INVALID_SPEC: &str = "InvalidSpec";
    pub const BENTO_WRITTEN: &str = "BentoWritten";
    /// A Secret (or its key) that `spec.imageBuilderExtraContainerEnv` names is missing.
    pub const SECRET_NOT_FOUND: &str = "SecretNotFound";
    /// Reading a Secret that `spec.imageBuilderExtraContainerEnv` names failed.
    pub const SECRET_UNREADABLE: &str = "SecretUnreadable";
}

/// What the reconcile does now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Ask the registry whether the image exists (or record that a build is forced).
    Check,
    /// Build and push the image.
    Build,
    /// A build of this request runs in this operator.
    WaitForBuild,
    /// The last build failed in a way only a spec change fixes.
    GaveUp,
    /// The image exists: write (or keep) the Bento.
    WriteBento,
}

/// The image a request produces: `spec.image`, else Yatai's name under `--image-registry`.
pub fn image(req: &BentoRequest, registry: Option<&str>) -> Result<String, (&'static str, String)> {
    let tag = &req.spec.bento_tag;
    if names::split_tag(tag).is_none() {
        return Err((
            reasons::INVALID_SPEC,
            format!("spec.bentoTag {tag:?} must be repository:version (e.g. iris_classifier:4jwnpq2ia6g3baav)"),
        ));
    }
    if !req.spec.image.is_empty() {
        return Ok(req.spec.image.clone());
    }
    match registry {
        Some(r) => Ok(names::image_name(r, tag)),
        None => Err((
            reasons::NO_IMAGE_REGISTRY,
            "no image registry: start the operator with --image-registry HOST[:PORT]/REPOSITORY \
             (YATAI_IMAGE_REGISTRY), or set spec.image"
                .into(),
        )),
    }
}

/// Whether `yatai.ai/force-build-image` asks for a build even when the tag exists.
pub fn force_build(req: &BentoRequest) -> bool {
    req.metadata.annotations.as_ref().and_then(|a| a.get(annotations::FORCE_BUILD_IMAGE)).is_some_and(|v| v == "true")
}

/// The status to reconcile from: the stored one, or a fresh one when the spec changed since the
/// conditions were written (a new generation is checked and built again from the start).
pub fn current_status(req: &BentoRequest) -> BentoRequestStatus {
    let generation = req.metadata.generation;
    match &req.status {
        Some(s) if s.observed_generation == generation => s.clone(),
        _ => BentoRequestStatus { observed_generation: generation, ..Default::default() },
    }
}

/// The next step for a request whose image is `image`.
pub fn decide(status: &BentoRequestStatus, image: &str, build_running: bool) -> Step {
    let cs = &status.conditions;
    let checked = condition::find(cs, c::IMAGE_EXISTS_CHECKED).is_some_and(|x| x.status == TRUE && x.message == image);
    if !checked {
        return Step::Check;
    }
    if condition::is_true(cs, c::IMAGE_EXISTS) {
        return Step::WriteBento;
    }
    if build_running {
        return Step::WaitForBuild;
    }
    match condition::find(cs, c::IMAGE_BUILDING) {
        Some(b) if b.status == FALSE && b.reason == reasons::UNBUILDABLE => Step::GaveUp,
        _ => Step::Build,
    }
}

/// Records the answer of the registry check; a new check forgets what the old image did.
pub fn record_check(status: &mut BentoRequestStatus, image: &str, exists: bool, forced: bool) {
    let generation = status.observed_generation;
    let cs = &mut status.conditions;
    condition::remove(cs, c::IMAGE_BUILDING);
    condition::remove(cs, c::BENTO_AVAILABLE);
    condition::set(cs, c::IMAGE_EXISTS_CHECKED, TRUE, "Checked", image, generation);
    let (st, reason, msg) = match (forced, exists) {
        (true, _) => {
            (FALSE, reasons::FORCE_BUILD, format!("{} is \"true\": building {image}", annotations::FORCE_BUILD_IMAGE))
        }
        (false, true) => (TRUE, reasons::IMAGE_FOUND, format!("{image} is in the registry; not building it again")),
        (false, false) => (FALSE, reasons::IMAGE_NOT_FOUND, format!("{image} is not in the registry; building it")),
    };
    condition::set(cs, c::IMAGE_EXISTS, st, reason, &msg, generation);
}

/// Exponential backoff for retries of one object: 5 s, 10 s, 20 s … at most 5 min.
pub fn backoff(attempt: u32) -> Duration {
    let secs = 5u64.saturating_mul(1u64 << attempt.min(6));
    Duration::from_secs(secs.min(300))
}

/// `spec.imageBuildTimeout` (Go's nanoseconds); none or non-positive means no limit.
pub fn build_timeout(req: &BentoRequest) -> Option<Duration> {
    req.spec.image_build_timeout.filter(|n| *n > 0).map(|n| Duration::from_nanos(n as u64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use yatai_kube_api::resources::BentoRequestSpec;

    fn req(tag: &str, image: &str, generation: i64) -> BentoRequest {
        let mut r = BentoRequest::new(
            "r",
            BentoRequestSpec { bento_tag: tag.into(), image: image.into(), ..Default::default() },
        );
        r.metadata.generation = Some(generation);
        r
    }

    #[test]
    fn image_follows_spec_then_registry_and_explains_what_is_missing() {
        assert_eq!(image(&req("iris:v1", "", 1), Some("reg:5000/bentos")).unwrap(), "reg:5000/bentos:yatai.iris.v1");
        assert_eq!(image(&req("iris:v1", "x/y:z", 1), None).unwrap(), "x/y:z");
        let (reason, msg) = image(&req("iris:v1", "", 1), None).unwrap_err();
        assert_eq!(reason, reasons::NO_IMAGE_REGISTRY);
        assert!(msg.contains("--image-registry"), "{msg}");
        let (reason, msg) = image(&req("iris", "", 1), Some("r:5000/b")).unwrap_err();
        assert_eq!(reason, reasons::INVALID_SPEC);
        assert!(msg.contains("repository:version"), "{msg}");
    }

    #[test]
    fn a_new_request_is_checked_then_built_or_written() {
        let img = "r:5000/b:yatai.iris.v1";
        let mut st = current_status(&req("iris:v1", "", 1));
        assert_eq!(st.observed_generation, Some(1));
        assert_eq!(decide(&st, img, false), Step::Check);

        let mut found = st.clone();
        record_check(&mut found, img, true, false);
        assert_eq!(decide(&found, img, false), Step::WriteBento);
        assert_eq!(condition::find(&found.conditions, c::IMAGE_EXISTS).unwrap().reason, reasons::IMAGE_FOUND);

        record_check(&mut st, img, false, false);
        assert_eq!(decide(&st, img, false), Step::Build);
        assert_eq!(decide(&st, img, true), Step::WaitForBuild);
    }

    #[test]
    fn force_builds_even_when_the_image_exists() {
        let img = "r:5000/b:yatai.iris.v1";
        let mut r = req("iris:v1", "", 1);
        r.metadata.annotations = Some(BTreeMap::from([(annotations::FORCE_BUILD_IMAGE.into(), "true".into())]));
        assert!(force_build(&r));
        let mut st = current_status(&r);
        record_check(&mut st, img, true, force_build(&r));
        assert_eq!(decide(&st, img, false), Step::Build);
        assert_eq!(condition::find(&st.conditions, c::IMAGE_EXISTS).unwrap().reason, reasons::FORCE_BUILD);
    }

    #[test]
    fn a_changed_image_name_is_checked_again() {
        let mut st = BentoRequestStatus::default();
        record_check(&mut st, "a/b:yatai.iris.v1", true, false);
        condition::set(&mut st.conditions, c::BENTO_AVAILABLE, TRUE, "", "", None);
        assert_eq!(decide(&st, "a/b:yatai.iris.v1", false), Step::WriteBento);
        assert_eq!(decide(&st, "c/d:yatai.iris.v1", false), Step::Check);
        record_check(&mut st, "c/d:yatai.iris.v1", false, false);
        assert!(condition::find(&st.conditions, c::BENTO_AVAILABLE).is_none(), "the old Bento no longer counts");
    }

    #[test]
    fn a_new_generation_starts_over_and_the_same_one_keeps_its_conditions() {
        let img = "r/b:yatai.iris.v1";
        let mut r = req("iris:v1", "", 1);
        let mut st = current_status(&r);
        record_check(&mut st, img, true, false);
        r.status = Some(st);
        assert_eq!(decide(&current_status(&r), img, false), Step::WriteBento);
        r.metadata.generation = Some(2);
        let fresh = current_status(&r);
        assert!(fresh.conditions.is_empty());
        assert_eq!(fresh.observed_generation, Some(2));
        assert_eq!(decide(&fresh, img, false), Step::Check);
    }

    #[test]
    fn an_unbuildable_bento_is_not_retried_but_other_failures_are() {
        let img = "r/b:yatai.iris.v1";
        let mut st = BentoRequestStatus::default();
        record_check(&mut st, img, false, false);
        condition::set(&mut st.conditions, c::IMAGE_BUILDING, FALSE, reasons::BUILD_FAILED, "x", None);
        assert_eq!(decide(&st, img, false), Step::Build);
        condition::set(&mut st.conditions, c::IMAGE_BUILDING, FALSE, reasons::UNBUILDABLE, "x", None);
        assert_eq!(decide(&st, img, false), Step::GaveUp);
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        assert_eq!(backoff(0), Duration::from_secs(5));
        assert_eq!(backoff(1), Duration::from_secs(10));
        assert_eq!(backoff(3), Duration::from_secs(40));
        assert_eq!(backoff(30), Duration::from_secs(300));
    }

    #[test]
    fn build_timeout_is_go_nanoseconds() {
        let mut r = req("iris:v1", "", 1);
        assert_eq!(build_timeout(&r), None);
        r.spec.image_build_timeout = Some(90_000_000_000);
        assert_eq!(build_timeout(&r), Some(Duration::from_secs(90)));
        r.spec.image_build_timeout = Some(0);
        assert_eq!(build_timeout(&r), None);
    }
}
