//! Stopping one container the kubelet's way (`killContainer`): a `Killing`
//! event, then the stop signal (SIGTERM or the image's StopSignal), then
//! SIGKILL once the grace period is over.

use std::time::Duration;

use super::Worker;
use crate::pod::runtime::PodRuntime;
use crate::status::events::{EventType, ObjectRef};

/// No container is given less than this to stop, whatever the spec says
/// (the kubelet's `minimumGracePeriodInSeconds`).
const MINIMUM_GRACE: Duration = Duration::from_secs(2);

impl<R: PodRuntime> Worker<R> {
    /// The grace period: a probe's own `terminationGracePeriodSeconds` for
    /// a kill it caused, else the pod's (30 s by default).
    pub(super) fn grace_period(&self, probe_override: Option<i64>) -> Duration {
        let seconds = probe_override
            .or_else(|| {
                self.pod
                    .pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.termination_grace_period_seconds)
            })
            .unwrap_or(crate::manifest::parse::DEFAULT_GRACE_PERIOD_SECONDS);
        Duration::from_secs(seconds.max(0) as u64)
    }

    /// Stops container `name`'s current run; `message` is the `Killing`
    /// event's. Returns once the task has exited.
    pub(super) async fn kill_container(&self, name: &str, grace: Duration, message: String) {
        let Some(record) = self
            .record
            .init_containers
            .iter()
            .chain(&self.record.containers)
            .find(|c| c.name == name)
        else {
            return;
        };
        let Some(id) = record.container_id.as_deref() else {
            return;
        };
        let init = self.record.init_containers.iter().any(|c| c.name == name);
        self.ctx.recorder.record(
            ObjectRef::container(&self.pod, name, init),
            EventType::Normal,
            "Killing",
            message,
        );
        self.ctx
            .runtime
            .stop_container(id, record.stop_signal, grace.max(MINIMUM_GRACE))
            .await;
    }
}
