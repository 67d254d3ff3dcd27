//! Pod workers: one task per pod UID brings the pod to its desired state on
//! containerd and keeps its status. [`state`] is the pure model of a pod's
//! containers and the status derived from it; [`worker`] executes; [`workers`]
//! starts and stops workers as the desired set changes.

pub mod state;
pub mod worker;
pub mod workers;
