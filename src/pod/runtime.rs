//! The seam between pod workers and the node: everything a worker asks of
//! images and containers. The agent plugs in containerd and the image
//! service ([`super::node::NodeRuntime`]); worker tests plug in a fake that
//! records calls.

use std::future::Future;
use std::time::Duration;

use tokio::sync::watch;

use crate::images::policy::{Ensured, ImageError, OnPull, PullPolicy};
use crate::runtime::containerd::images::ResolvedImage;
use crate::runtime::containerd::tasks::{NewContainer, TaskState};
use crate::runtime::containerd::RuntimeError;

pub trait PodRuntime: Send + Sync + 'static {
    /// Makes `image` available by `policy`; `on_pull` runs if a pull starts.
    fn ensure_image(
        &self,
        image: &str,
        policy: PullPolicy,
        on_pull: OnPull,
    ) -> impl Future<Output = Result<Ensured, ImageError>> + Send;

    /// Changes whenever an image arrives (pulled or imported).
    fn image_arrivals(&self) -> watch::Receiver<u64>;

    /// The image every sandbox runs.
    fn sandbox_image(&self) -> &ResolvedImage;

    /// Creates a container and its task and starts it; returns the PID.
    fn run_container(
        &self,
        new: NewContainer<'_>,
    ) -> impl Future<Output = Result<u32, RuntimeError>> + Send;

    /// SIGTERM, then SIGKILL to all its processes once `grace` has passed;
    /// returns when the task has exited or is gone.
    fn stop_container(&self, id: &str, grace: Duration) -> impl Future<Output = ()> + Send;

    /// Removes a container's task, record and snapshot; idempotent.
    fn remove_container(&self, id: &str) -> impl Future<Output = Result<(), RuntimeError>> + Send;

    /// Removes every container labelled with this pod UID, app containers
    /// before the sandbox.
    fn remove_pod(&self, uid: &str) -> impl Future<Output = ()> + Send;

    /// UIDs of all pods that have containers.
    fn pod_uids(&self) -> impl Future<Output = Result<Vec<String>, RuntimeError>> + Send;

    fn task_state(&self, id: &str) -> impl Future<Output = Result<TaskState, RuntimeError>> + Send;
}
