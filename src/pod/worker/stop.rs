//! Stopping one container the kubelet's way (`killContainer`): a `Killing`
//! event, the preStop hook (its time taken from the grace period), then
//! the stop signal (SIGTERM or the image's StopSignal), then SIGKILL once
//! what is left of the grace period is over.

use std::time::Duration;

use tokio::time::Instant;
use tracing::warn;

use super::Worker;
use crate::pod::probe::{run_hook, Hook};
use crate::pod::runtime::PodRuntime;
use crate::status::events::{EventType, ObjectRef};

/// No container is given less than this to stop, whatever the spec says
/// (the kubelet's `minimumGracePeriodInSeconds`).
const MINIMUM_GRACE: Duration = Duration::from_secs(2);

impl<R: PodRuntime> Worker<R> {
    /// The grace period: a probe's own `terminationGracePeriodSeconds` for
    /// a kill it caused, else the pod's (30 s by default).
    pub(super) fn grace_period(&self, probe_override: Option<Duration>) -> Duration {
        probe_override.unwrap_or_else(|| {
            let seconds = self
                .pod
                .pod
                .spec
                .as_ref()
                .and_then(|s| s.termination_grace_period_seconds)
                .unwrap_or(crate::manifest::parse::DEFAULT_GRACE_PERIOD_SECONDS);
            Duration::from_secs(seconds.max(0) as u64)
        })
    }

    /// Stops container `name`'s current run; `message` is the `Killing`
    /// event's. Returns once the task has exited.
    pub(super) async fn kill_container(&self, name: &str, grace: Duration, message: String) {
        let Some(record) = self.record.all().find(|c| c.name == name) else {
            return;
        };
        let Some(id) = record.container_id.as_deref() else {
            return;
        };
        let init = self.record.init_containers.iter().any(|c| c.name == name);
        let object = ObjectRef::container(&self.pod, name, init);
        self.ctx
            .recorder
            .record(object.clone(), EventType::Normal, "Killing", message);
        let started = Instant::now();
        let target = self.container_spec(name).and_then(|(container, _)| {
            let handler = Hook::PreStop.handler_of(&container)?.clone();
            Some((handler, self.probe_target_of(&container)?))
        });
        if let Some((handler, target)) = target {
            let runtime = self.ctx.runtime.as_ref();
            if let Err(message) = run_hook(runtime, &handler, &target, Some(grace)).await {
                warn!(pod = %self.pod.name(), container = name, "preStop hook failed: {message}");
                self.ctx.recorder.record(
                    object,
                    EventType::Warning,
                    Hook::PreStop.event_reason(),
                    Hook::PreStop.event_message(),
                );
            }
        }
        let left = grace.saturating_sub(started.elapsed());
        let killed = self
            .ctx
            .runtime
            .stop_container(id, record.stop_signal, left.max(MINIMUM_GRACE))
            .await;
        if killed {
            self.record_pod_event(
                EventType::Warning,
                "ExceededGracePeriod",
                "Container runtime did not kill the pod within specified grace period.",
            );
        }
    }
}
