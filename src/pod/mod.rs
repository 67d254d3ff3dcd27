//! Pod workers: one task per pod UID brings the pod to its desired state on
//! containerd and keeps its status. [`state`] is the pure model of a pod's
//! containers and the status derived from it; [`plan`] decides what to do
//! next; [`worker`] executes through the [`runtime::PodRuntime`] seam;
//! [`workers`] starts and stops workers as the desired set changes;
//! [`checkpoint`] keeps what containerd cannot (restart counts, back-off)
//! across agent restarts.

pub mod checkpoint;
pub mod node;
pub mod plan;
pub mod pod_status;
pub mod probe;
pub mod runtime;
pub mod state;
pub mod volumes;
pub mod worker;
pub mod workers;

#[cfg(test)]
mod fake;
