//! The real [`PodRuntime`]: containerd for containers, the image service
//! for images.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tracing::warn;

use super::runtime::PodRuntime;
use crate::images::policy::{Ensured, ImageError, OnPull, PullPolicy};
use crate::images::service::ImageService;
use crate::runtime::containerd::images::ResolvedImage;
use crate::runtime::containerd::tasks::{NewContainer, TaskState};
use crate::runtime::containerd::{Containerd, RuntimeError};
use crate::runtime::labels;

pub struct NodeRuntime {
    pub containerd: Containerd,
    pub images: Arc<ImageService>,
    pub sandbox_image: ResolvedImage,
}

impl PodRuntime for NodeRuntime {
    async fn ensure_image(
        &self,
        image: &str,
        policy: PullPolicy,
        on_pull: OnPull,
    ) -> Result<Ensured, ImageError> {
        self.images.ensure(image, policy, on_pull).await
    }

    fn image_arrivals(&self) -> watch::Receiver<u64> {
        self.images.arrivals()
    }

    fn sandbox_image(&self) -> &ResolvedImage {
        &self.sandbox_image
    }

    async fn run_container(&self, new: NewContainer<'_>) -> Result<u32, RuntimeError> {
        let id = new.id.to_string();
        self.containerd.create_container(new).await?;
        self.containerd.start_task(&id).await
    }

    async fn stop_container(&self, id: &str, grace: Duration) {
        let runtime = &self.containerd;
        if let Err(e) = runtime.kill_task(id, libc::SIGTERM as u32, false).await {
            if !e.is_not_found() {
                warn!(container = id, error = %e, "cannot send SIGTERM");
            }
            return;
        }
        if tokio::time::timeout(grace, runtime.wait_task(id))
            .await
            .is_ok()
        {
            return;
        }
        if let Err(e) = runtime.kill_task(id, libc::SIGKILL as u32, true).await {
            if !e.is_not_found() {
                warn!(container = id, error = %e, "cannot send SIGKILL");
            }
        }
    }

    async fn remove_container(&self, id: &str) -> Result<(), RuntimeError> {
        self.containerd.remove_container(id).await
    }

    async fn remove_pod(&self, uid: &str) {
        let runtime = &self.containerd;
        let containers = match runtime.list_containers(&labels::pod_filter(uid)).await {
            Ok(containers) => containers,
            Err(e) => {
                warn!(uid, error = %e, "cannot list the pod's containers");
                return;
            }
        };
        let (sandboxes, apps): (Vec<_>, Vec<_>) = containers.into_iter().partition(|c| {
            c.labels.get(labels::KIND).map(String::as_str) == Some(labels::KIND_SANDBOX)
        });
        for group in [apps, sandboxes] {
            let removals = group.iter().map(|c| runtime.remove_container(&c.id));
            for (c, result) in group.iter().zip(futures::future::join_all(removals).await) {
                if let Err(e) = result {
                    warn!(container = %c.id, error = %e, "cannot remove container");
                }
            }
        }
    }

    async fn pod_uids(&self) -> Result<Vec<String>, RuntimeError> {
        let containers = self
            .containerd
            .list_containers(&labels::any_pod_filter())
            .await?;
        let mut uids: Vec<String> = containers
            .iter()
            .filter_map(|c| c.labels.get(labels::POD_UID).cloned())
            .collect();
        uids.sort();
        uids.dedup();
        Ok(uids)
    }

    async fn task_state(&self, id: &str) -> Result<TaskState, RuntimeError> {
        self.containerd.task_state(id).await
    }
}
