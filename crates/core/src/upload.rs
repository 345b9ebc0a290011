//! The states of an upload, as stored: a version's `upload_status`, and the
//! `mode` and `state` of each row of `uploads` (one attempt to write one
//! object of the blob store).

use crate::text_enum::text_enum;

text_enum!(
    /// Whether a version has content (the `upload_status` column, also sent
    /// to clients). A version that is `success` keeps its content through a
    /// later failed or abandoned upload.
    UploadStatus, "upload status" {
        /// Created, no upload started yet.
        Pending = "pending",
        Uploading = "uploading",
        /// The archive's size and sha256 are recorded and the version points at it.
        Success = "success",
        Failed = "failed",
    }
);

text_enum!(
    /// How an upload's bytes reach the blob store (the `mode` column).
    UploadMode, "upload mode" {
        /// Streamed through yatai.
        Proxy = "proxy",
        /// One presigned PUT.
        Presigned = "presigned",
        /// Parts, each to its own presigned URL.
        Multipart = "multipart",
    }
);

text_enum!(
    /// Where one upload is in its life (the `state` column). The store moves
    /// it with conditional updates, so of concurrent writers exactly one
    /// makes each step.
    UploadState, "upload state" {
        /// Bytes may arrive.
        Open = "open",
        /// The one writer that claimed it streams bytes (or assembles parts).
        Receiving = "receiving",
        /// The bytes are complete and their digest and size recorded.
        Received = "received",
        /// Its object is to be deleted (by the caller or the janitor), then the row.
        Discard = "discard",
    }
);

impl UploadStatus {
    /// Whether a failed or abandoned upload leaves the status as it is: stored
    /// content stays the version's content.
    pub fn survives_failed_upload(self) -> bool {
        self == UploadStatus::Success
    }

    /// The status after another upload starts.
    pub fn on_upload_started(self) -> UploadStatus {
        if self.survives_failed_upload() { self } else { UploadStatus::Uploading }
    }

    /// The status after an upload failed or was abandoned.
    pub fn on_upload_failed(self) -> UploadStatus {
        if self.survives_failed_upload() { self } else { UploadStatus::Failed }
    }
}

impl UploadState {
    /// The states from which bytes may still become the version's content
    /// (the current upload of a version is one of these).
    pub const LIVE: &'static [UploadState] = &[UploadState::Open, UploadState::Receiving, UploadState::Received];

    /// The steps the store makes: a writer claims an open upload and gives it
    /// back if it fails; the claimed bytes are verified; anything may be
    /// discarded, and nothing comes back from being discarded. (A received
    /// upload that becomes a blob is deleted, which is no state.)
    pub fn can_become(self, next: UploadState) -> bool {
        use UploadState::*;
        matches!(
            (self, next),
            (Open, Receiving) | (Receiving, Open) | (Receiving, Received) | (Open | Receiving | Received, Discard)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_round_trip_through_their_text() {
        for (v, s) in UploadStatus::ALL {
            assert_eq!(s.parse::<UploadStatus>().unwrap(), *v);
            assert_eq!(v.to_string(), *s);
        }
        for (v, s) in UploadMode::ALL {
            assert_eq!(s.parse::<UploadMode>().unwrap(), *v);
            assert_eq!(v.as_str(), *s);
        }
        for (v, s) in UploadState::ALL {
            assert_eq!(s.parse::<UploadState>().unwrap(), *v);
            assert_eq!(v.as_str(), *s);
        }
        // The stored text, which must never change.
        assert_eq!(UploadStatus::NAMES, ["pending", "uploading", "success", "failed"]);
        assert_eq!(UploadMode::NAMES, ["proxy", "presigned", "multipart"]);
        assert_eq!(UploadState::NAMES, ["open", "receiving", "received", "discard"]);
        assert!("Open".parse::<UploadState>().unwrap_err().contains("upload state"));
        let column = "success".to_owned(); // as a row's field holds it
        assert!(column == UploadStatus::Success);
        assert!("discard" == UploadState::Discard);
    }

    #[test]
    fn upload_state_steps_are_the_stored_ones() {
        use UploadState::*;
        assert!(Open.can_become(Receiving));
        assert!(Receiving.can_become(Open));
        assert!(Receiving.can_become(Received));
        assert!(Received.can_become(Discard));
        // Bytes are verified only by the writer that claimed the upload.
        assert!(!Open.can_become(Received));
        // A verified upload is not written again, and a discarded one stays discarded.
        assert!(!Received.can_become(Receiving));
        assert!(!Received.can_become(Open));
        for next in [Open, Receiving, Received, Discard] {
            assert!(!Discard.can_become(next), "discard -> {next}");
        }
    }

    #[test]
    fn stored_content_survives_a_failed_upload() {
        assert_eq!(UploadStatus::Success.on_upload_failed(), UploadStatus::Success);
        assert_eq!(UploadStatus::Success.on_upload_started(), UploadStatus::Success);
        assert_eq!(UploadStatus::Uploading.on_upload_failed(), UploadStatus::Failed);
        assert_eq!(UploadStatus::Pending.on_upload_started(), UploadStatus::Uploading);
        assert_eq!(UploadStatus::Failed.on_upload_started(), UploadStatus::Uploading);
    }
}
