//! Pull policy and the outcome of making an image available, shared by the
//! image service and the pod workers that use it.

use std::time::Duration;

use crate::runtime::containerd::images::ResolvedImage;

/// `imagePullPolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullPolicy {
    Always,
    IfNotPresent,
    Never,
}

impl PullPolicy {
    /// Parses the Kubernetes value; the parser has already defaulted it.
    pub fn parse(value: Option<&str>) -> PullPolicy {
        match value {
            Some("Always") => PullPolicy::Always,
            Some("Never") => PullPolicy::Never,
            _ => PullPolicy::IfNotPresent,
        }
    }
}

/// Why an image is not available; each maps to a Kubernetes waiting reason.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ImageError {
    #[error("{0}")]
    InvalidName(String),
    #[error("Container image {0:?} is not present with pull policy of Never")]
    NeverPull(String),
    #[error("{0}")]
    Pull(String),
    #[error("{0}")]
    Inspect(String),
}

impl ImageError {
    /// The container's waiting reason.
    pub fn reason(&self) -> &'static str {
        match self {
            ImageError::InvalidName(_) => "InvalidImageName",
            ImageError::NeverPull(_) => "ErrImageNeverPull",
            ImageError::Pull(_) => "ErrImagePull",
            ImageError::Inspect(_) => "ImageInspectError",
        }
    }
}

/// How an image came to be present.
#[derive(Debug, Clone, PartialEq)]
pub enum Provenance {
    /// It was already there and the policy did not ask for a pull.
    AlreadyPresent,
    /// Pulled now (or joined a pull in progress), taking this long.
    Pulled { duration: Duration },
    /// The registry could not be reached, so the local copy is used.
    LocalFallback { error: String },
}

/// A usable image and how it got here.
#[derive(Debug, Clone)]
pub struct Ensured {
    pub image: ResolvedImage,
    pub provenance: Provenance,
}

/// Called when an image pull actually starts, to record `Pulling`.
pub type OnPull = Box<dyn FnOnce() + Send + 'static>;
