//! Getting images onto the node: reference normalization, image archives
//! (OCI layout and `docker save` tars), registries (OCI distribution API with
//! Docker-style credentials), and the service that decides when to pull or
//! import. Writing content and unpacking layers is containerd's job and lives
//! in `runtime::containerd::images`.

pub mod archive;
pub mod credentials;
pub mod digest;
pub mod import_dir;
mod in_flight;
pub mod media_types;
pub mod platform;
pub mod policy;
pub mod reference;
pub mod registry;
pub mod service;
