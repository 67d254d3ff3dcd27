//! Everything that touches containers: the pure OCI spec builder, labels and
//! IDs, the built-in pause image, and the one module that talks to
//! containerd.

pub mod cgroups;
pub mod containerd;
pub mod env;
pub mod labels;
pub mod network;
pub mod pause;
pub mod pod_files;
pub mod quantity;
pub mod resources;
pub mod spec;

/// The parts of an image's config a container's process is built from.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ImageConfig {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub working_dir: String,
    pub user: String,
}
