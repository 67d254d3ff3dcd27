//! The agent's read-only API: kubelet-style HTTP (`/pods`, `/healthz`) and
//! podkeeper's own gRPC service on a unix socket. Handlers read snapshots of
//! the desired set, the status store and the event log; none of them can
//! reach containerd.

pub mod grpc;
pub mod http;
pub mod pods;

use std::sync::Arc;

use crate::desired::DesiredReader;
use crate::status::events::EventLog;
use crate::status::store::StatusStore;

/// What API handlers may read.
#[derive(Clone)]
pub struct ApiState {
    pub desired: DesiredReader,
    pub status: Arc<StatusStore>,
    pub events: Arc<EventLog>,
    /// Root of the pod log directories, to tell clients where logs are.
    pub pod_log_dir: std::path::PathBuf,
}
