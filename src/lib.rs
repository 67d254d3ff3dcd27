//! podkeeper: a node agent that keeps the static pods of a manifest directory
//! running on containerd, without a Kubernetes control plane.
//!
//! Data flows through the modules in this order (see ARCHITECTURE.md):
//! [`manifest`] (files → validated pods) → [`desired`] (the set of pods that
//! should run) → [`pod`] (one worker per pod) → [`runtime`] (containerd) →
//! [`status`] (pod status and events) → [`api`] (HTTP and gRPC, read-only).

pub mod agent;
pub mod api;
pub mod cli;
pub mod config;
pub mod desired;
pub mod host;
pub mod images;
pub mod logs;
pub mod manifest;
pub mod memory;
pub mod metrics;
pub mod notify;
pub mod pod;
pub mod runtime;
pub mod status;
pub mod supervise;
pub mod watch;

/// The generated code of podkeeper's own gRPC API (`proto/podkeeper/v1`).
pub mod proto {
    #![allow(clippy::all)]
    tonic::include_proto!("podkeeper.v1");
}

/// Version of the agent, also the tag of the built-in pause image.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
