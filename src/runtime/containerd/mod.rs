//! The only module that talks to containerd. One long-lived gRPC channel;
//! every request carries podkeeper's namespace (and a lease where content is
//! written) through [`client::Containerd::request`], the one place that sets
//! containerd metadata.

pub mod client;
pub mod content;
pub mod events;
pub mod exec;
pub mod images;
pub mod tasks;

pub use client::{Containerd, RuntimeError};
