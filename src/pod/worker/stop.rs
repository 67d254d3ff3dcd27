//! Stopping containers the kubelet's way (`killContainer`): a `Killing`
//! event, the preStop hook (its time taken from the grace period), then
//! the stop signal (SIGTERM or the image's StopSignal), then SIGKILL once
//! what is left of the grace period is over.
//!
//! One [`stop_container`] serves both a worker stopping its pod and
//! [`stop_orphan`], which stops a pod whose manifest went away while the
//! agent was down. Such a pod has no spec left, so each of its containers
//! is stopped as its labels say ([`StopLabels`], written at start by
//! [`Worker::run_labels`]): a pod gets its preStop hook and grace period
//! whether it is removed while the agent runs or while it is down.

use std::collections::HashMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Lifecycle, LifecycleHandler};
use tokio::time::Instant;
use tracing::{info, warn};

use super::{Worker, SANDBOX_STOP_TIMEOUT};
use crate::pod::probe::{run_hook, Hook, ProbeTarget};
use crate::pod::runtime::{ExistingContainer, LabelledPod, PodRuntime};
use crate::runtime::containerd::tasks::TaskState;
use crate::runtime::labels;
use crate::runtime::stop_labels::StopLabels;
use crate::status::events::{EventType, ObjectRef, Recorder};

/// No container is given less than this to stop, whatever the spec says
/// (the kubelet's `minimumGracePeriodInSeconds`).
const MINIMUM_GRACE: Duration = Duration::from_secs(2);

/// No container is given more: far beyond any real grace period, and it
/// keeps every deadline computed from it representable (a grace period of
/// `i64::MAX` seconds is valid in a manifest).
const MAXIMUM_GRACE: Duration = Duration::from_secs(366 * 24 * 3600);

const EXCEEDED_GRACE: &str =
    "Container runtime did not kill the pod within specified grace period.";

/// One container to stop, and how.
pub(crate) struct StopRequest<'a> {
    pub id: &'a str,
    pub container: &'a str,
    /// The container, for events.
    pub object: ObjectRef,
    /// The `Killing` event's message.
    pub message: String,
    /// The preStop handler, and where it goes.
    pub pre_stop: Option<(LifecycleHandler, ProbeTarget)>,
    pub signal: i32,
    pub grace: Duration,
}

/// Stops one container's task: `Killing`, preStop within the grace
/// period, the stop signal, SIGKILL once the grace period is over. Returns
/// once the task has exited, and whether SIGKILL was needed.
pub(crate) async fn stop_container<R: PodRuntime>(
    runtime: &R,
    recorder: &Recorder,
    request: StopRequest<'_>,
) -> bool {
    let grace = request.grace.min(MAXIMUM_GRACE);
    let object = request.object;
    recorder.record(
        object.clone(),
        EventType::Normal,
        "Killing",
        request.message,
    );
    let started = Instant::now();
    if let Some((handler, target)) = &request.pre_stop {
        if let Err(message) = run_hook(runtime, handler, target, Some(grace)).await {
            warn!(pod = %object.name, uid = %object.uid, container = request.container, "preStop hook failed: {message}");
            recorder.record(
                object,
                EventType::Warning,
                Hook::PreStop.event_reason(),
                Hook::PreStop.event_message(),
            );
        }
    }
    let left = grace.saturating_sub(started.elapsed());
    runtime
        .stop_container(request.id, request.signal, left.max(MINIMUM_GRACE))
        .await
}

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
        let pre_stop = self.container_spec(name).and_then(|(container, _)| {
            let handler = Hook::PreStop.handler_of(&container)?.clone();
            Some((handler, self.probe_target_of(&container)?))
        });
        let request = StopRequest {
            id,
            container: name,
            object: ObjectRef::container(&self.pod, name, init),
            message,
            pre_stop,
            signal: record.stop_signal,
            grace,
        };
        if stop_container(self.ctx.runtime.as_ref(), &self.ctx.recorder, request).await {
            self.record_pod_event(EventType::Warning, "ExceededGracePeriod", EXCEEDED_GRACE);
        }
    }

    /// The labels of one run of `container`: who it belongs to, and how to
    /// stop it should the pod's manifest go away while the agent is down.
    pub(super) fn run_labels(
        &self,
        container: &Container,
        restart_count: u32,
        stop_signal: i32,
    ) -> HashMap<String, String> {
        let mut run = labels::for_run(&self.pod, &container.name, restart_count);
        let stop = StopLabels {
            pre_stop: crate::pod::probe::hooks::kept_pre_stop(container),
            grace_period: Some(self.grace_period(None)),
            stop_signal: Some(stop_signal),
        };
        if let Err(e) = stop.insert_into(&mut run) {
            warn!(pod = %self.pod.name(), container = %container.name, file = %self.pod.source.display(), "lifecycle.preStop: {e}; should the manifest go while the agent is down, the hook will not run");
        }
        run
    }
}

/// Stops a pod no manifest asks for any more, left by an earlier run of the
/// agent: its running containers in parallel, each as its labels say, then
/// its sandbox; then removes every container of the pod and what its
/// sandbox held. Returns whether nothing of the pod is left.
pub(crate) async fn stop_orphan<R: PodRuntime>(
    runtime: &R,
    recorder: &Recorder,
    pod: &LabelledPod,
) -> bool {
    let containers = match runtime.pod_containers(&pod.uid).await {
        Ok(containers) => containers,
        Err(e) => {
            warn!(pod = %pod.name, uid = %pod.uid, error = %e, "cannot list the containers of a pod no longer desired; removing them without their preStop hooks");
            return runtime.remove_pod(&pod.uid).await;
        }
    };
    let running = |c: &&ExistingContainer| matches!(c.task, Some(TaskState::Running { .. }));
    let sandbox_id = labels::sandbox_id(&pod.uid);
    let (sandboxes, apps): (Vec<_>, Vec<_>) = containers.iter().partition(|c| c.id == sandbox_id);
    let pod_ip = runtime.pod_ip(&pod.uid);
    let stops = apps
        .into_iter()
        .filter(running)
        .map(|c| stop_orphan_container(runtime, recorder, pod, c, pod_ip.as_deref()));
    futures::future::join_all(stops).await;
    for sandbox in sandboxes.into_iter().filter(running) {
        runtime
            .stop_container(&sandbox.id, libc::SIGTERM, SANDBOX_STOP_TIMEOUT)
            .await;
    }
    let gone = runtime.remove_pod(&pod.uid).await;
    info!(pod = %pod.name, uid = %pod.uid, gone, "stopped a pod that is no longer desired");
    gone
}

/// One running container of an orphaned pod, by its [`StopLabels`].
async fn stop_orphan_container<R: PodRuntime>(
    runtime: &R,
    recorder: &Recorder,
    pod: &LabelledPod,
    container: &ExistingContainer,
    pod_ip: Option<&str>,
) {
    let name = container.name.as_str();
    let (stop, problems) = StopLabels::from_labels(&container.labels);
    for problem in problems {
        warn!(pod = %pod.name, uid = %pod.uid, container = name, "{problem}; using the default");
    }
    let object = ObjectRef {
        kind: "Pod".into(),
        namespace: pod.namespace.clone(),
        name: pod.name.clone(),
        uid: pod.uid.clone(),
        field_path: String::new(),
    };
    let container_object = ObjectRef {
        field_path: format!("spec.containers{{{name}}}"),
        ..object.clone()
    };
    let pre_stop = stop.pre_stop.clone().and_then(|handler| {
        let needs_ip = handler
            .http_get
            .as_ref()
            .is_some_and(|a| a.host.as_deref().unwrap_or_default().is_empty());
        if needs_ip && pod_ip.is_none() {
            warn!(pod = %pod.name, uid = %pod.uid, container = name, "the pod's address is unknown; skipping its httpGet preStop hook");
            return None;
        }
        // All a hook needs of the spec: the container's name and handler
        // (a named port was resolved before it went into the label).
        let restored = Container {
            name: name.to_string(),
            lifecycle: Some(Lifecycle {
                pre_stop: Some(handler.clone()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let target = ProbeTarget {
            pod_ip: pod_ip.map(String::from),
            host_network: false,
            container_id: container.id.clone(),
            container: restored,
            object: container_object.clone(),
            run: 0,
        };
        Some((handler, target))
    });
    let request = StopRequest {
        id: &container.id,
        container: name,
        object: container_object,
        message: format!("Stopping container {name}"),
        pre_stop,
        signal: stop.signal(),
        grace: stop.grace(),
    };
    if stop_container(runtime, recorder, request).await {
        recorder.record(
            object,
            EventType::Warning,
            "ExceededGracePeriod",
            EXCEEDED_GRACE,
        );
    }
}
