//! The agent's API: read-only HTTP (the kubelet's `/pods`, health, metrics
//! and a read-only Kubernetes API subset for kubectl) and podkeeper's own
//! gRPC service on a root-only unix socket. Pod and event handlers read
//! snapshots of the desired set, the status store and the event log; only
//! the image calls of the gRPC service act, through the image service.
//! Nothing here changes pods: the manifest directory does.

pub mod auth;
pub mod describe;
pub mod grpc;
pub mod http;
pub mod kubeconfig;
pub mod pki;
pub mod pods;
pub mod tls;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use crate::desired::DesiredReader;
use crate::images::service::ImageService;
use crate::status::events::EventLog;
use crate::status::store::StatusStore;
use crate::supervise::Health;

/// What API handlers may read.
#[derive(Clone)]
pub struct ApiState {
    pub desired: DesiredReader,
    pub status: Arc<StatusStore>,
    pub events: Arc<EventLog>,
    /// Root of the pod log directories, to tell clients where logs are.
    pub pod_log_dir: std::path::PathBuf,
    pub images: Arc<ImageService>,
    /// Name of the sandbox image, which every pod uses.
    pub sandbox_image: String,
    /// Whether containerd's event stream is up, kept by the agent; `/readyz`
    /// and `/metrics` report it. A cheap signal: no call to containerd.
    pub containerd_reachable: Arc<AtomicBool>,
    /// The agent's supervised tasks that are down; `/healthz` and `/readyz`
    /// report them.
    pub tasks: Health,
    /// What the HTTP API keeps between requests (serialized pods,
    /// request metrics), shared by its listeners.
    pub http: Arc<http::Shared>,
}
