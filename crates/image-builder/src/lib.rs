//! yatai-build: a bento becomes a runnable OCI image in a registry, without a daemon.
//!
//! The image is assembled from layers instead of being built by running a Dockerfile: the
//! base image by reference (its layers are never downloaded when the target registry has
//! them), a small user layer, the Python dependencies installed on the build host for the
//! target platform (`uv --target`, cached by what they contain), the `/app/.venv` shim, one
//! layer per model (content-addressed, pushed once), and the bento itself. See
//! `docs/image-builder.md`.
//!
//! Entry points: [`build`] for a program (the server, the operator), with a [`BuildConfig`], a
//! [`source::BentoSource`] and a [`progress::Progress`] sink; [`cli::BuildArgs`] + [`cli::run`]
//! for `yatai build`; [`own_image`] for `yatai image build`, yatai's own container image on the
//! same machinery.

pub mod base;
pub mod bento;
pub mod blob;
mod builder;
pub mod cli;
pub mod image;
mod layers;
pub mod own_image;
pub mod progress;
pub mod python;
pub mod registry;
pub mod sandbox;
pub mod secrets;
pub mod source;
pub mod tarball;

pub use blob::Compression;
pub use builder::{BuildConfig, BuildError, BuildOutcome, FailureKind, LayerReport, build, failure_kind};
pub use cli::{BuildArgs, run};
pub use progress::{BlobAction, Event, LayerKind, Progress};
pub use secrets::SecretEnvs;
