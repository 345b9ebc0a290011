//! Safe extraction of bento and model archives: see the `yatai-archive` crate, shared with the
//! image builder so both extract user archives the same way.

pub use yatai_archive::{ArchiveError, extract};
