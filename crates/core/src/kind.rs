//! The two kinds of artifact the registry stores. Models and bentos share one
//! storage and upload pipeline; only their names and references differ.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Model,
    Bento,
}

impl Kind {
    /// As stored in the database and used in `resource_type`.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Model => "model",
            Kind::Bento => "bento",
        }
    }

    pub fn repository_resource_type(self) -> &'static str {
        match self {
            Kind::Model => "model_repository",
            Kind::Bento => "bento_repository",
        }
    }

    /// "model name" / "bento name", for error messages.
    pub fn name_label(self) -> &'static str {
        match self {
            Kind::Model => "model name",
            Kind::Bento => "bento name",
        }
    }

    pub fn version_label(self) -> &'static str {
        match self {
            Kind::Model => "model version",
            Kind::Bento => "bento version",
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        match s {
            "model" => Some(Kind::Model),
            "bento" => Some(Kind::Bento),
            _ => None,
        }
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
