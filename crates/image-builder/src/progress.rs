//! Build progress and log, for whoever drives a build: the CLI prints it, the server stores it
//! as the build log and streams it to the dashboard.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LayerKind {
    Base,
    /// What `image.commands` / system packages changed, run in a sandbox.
    Commands,
    User,
    Deps,
    Shim,
    Model,
    Bento,
    /// yatai's own binary (`yatai image build`).
    Binary,
}

impl fmt::Display for LayerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LayerKind::Base => "base",
            LayerKind::Commands => "commands",
            LayerKind::User => "user",
            LayerKind::Deps => "deps",
            LayerKind::Shim => "venv",
            LayerKind::Model => "model",
            LayerKind::Bento => "bento",
            LayerKind::Binary => "binary",
        })
    }
}

/// What happened to one blob on its way to the target repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BlobAction {
    /// Already in the target repository (HEAD answered 200).
    Present,
    /// Mounted from another repository of the same registry.
    Mounted,
    /// Copied from the base image's registry.
    Copied,
    /// Uploaded from the builder.
    Uploaded,
}

#[derive(Debug, Clone)]
pub enum Event {
    /// A human-readable step of the build.
    Step(String),
    /// A layer is ready locally (`cached`: taken from the builder's cache, not rebuilt).
    Layer {
        kind: LayerKind,
        name: String,
        digest: String,
        size: u64,
        cached: bool,
    },
    Blob {
        digest: String,
        size: u64,
        action: BlobAction,
    },
    /// All blobs are in the registry; the manifest (the commit) is next.
    PushingManifest {
        reference: String,
    },
    Done {
        reference: String,
        bytes_pushed: u64,
        already_built: bool,
    },
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Event::Step(s) => f.write_str(s),
            Event::Layer { kind, name, digest, size, cached } => write!(
                f,
                "layer {kind} {name}: {} ({}){}",
                short(digest),
                human(*size),
                if *cached { ", from cache" } else { "" }
            ),
            Event::Blob { digest, size, action } => {
                let what = match action {
                    BlobAction::Present => "already in the registry",
                    BlobAction::Mounted => "mounted",
                    BlobAction::Copied => "copied from the base registry",
                    BlobAction::Uploaded => "uploaded",
                };
                write!(f, "blob {} ({}): {what}", short(digest), human(*size))
            }
            Event::PushingManifest { reference } => write!(f, "pushing manifest {reference}"),
            Event::Done { reference, bytes_pushed, already_built } => {
                if *already_built {
                    write!(f, "already built: {reference}")
                } else {
                    write!(f, "pushed {reference} ({} uploaded)", human(*bytes_pushed))
                }
            }
        }
    }
}

fn short(d: &str) -> &str {
    &d[..d.len().min(19)]
}

pub fn human(n: u64) -> String {
    match n {
        n if n >= 1 << 30 => format!("{:.1} GiB", n as f64 / (1u64 << 30) as f64),
        n if n >= 1 << 20 => format!("{:.1} MiB", n as f64 / (1u64 << 20) as f64),
        n if n >= 1 << 10 => format!("{:.1} KiB", n as f64 / 1024.0),
        n => format!("{n} B"),
    }
}

/// Receives build events. Must be cheap and must not block (called from the build task).
pub trait Progress: Send + Sync {
    fn event(&self, e: &Event);
}

/// Logs every event through `tracing` at INFO.
pub struct TracingProgress;

impl Progress for TracingProgress {
    fn event(&self, e: &Event) {
        tracing::info!(target: "yatai_build", "{e}");
    }
}

/// Forwards events to a channel (the server's build-log writer, a test).
pub struct ChannelProgress(pub tokio::sync::mpsc::UnboundedSender<Event>);

impl Progress for ChannelProgress {
    fn event(&self, e: &Event) {
        let _ = self.0.send(e.clone());
    }
}

/// Sends every event to two sinks.
pub struct Tee<'a>(pub &'a dyn Progress, pub &'a dyn Progress);

impl Progress for Tee<'_> {
    fn event(&self, e: &Event) {
        self.0.event(e);
        self.1.event(e);
    }
}

impl<F: Fn(&Event) + Send + Sync> Progress for F {
    fn event(&self, e: &Event) {
        self(e)
    }
}
