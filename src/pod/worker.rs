//! One pod's worker: creates the sandbox and the pod's containers, follows
//! their exits, and tears everything down when the pod is no longer desired.
//!
//! A worker owns its pod's state outright (no locks): it is the only task
//! that changes the pod's containers and the only writer of its status.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Container;
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

use super::state::{ContainerRecord, PodRecord, RunState};
use crate::desired::DesiredPod;
use crate::runtime::containerd::events::RuntimeEvent;
use crate::runtime::containerd::images::ResolvedImage;
use crate::runtime::containerd::tasks::{NewContainer, TaskState};
use crate::runtime::containerd::Containerd;
use crate::images::reference;
use crate::runtime::{labels, spec, SandboxFacts};
use crate::status::events::{EventType, ObjectRef, Recorder};
use crate::status::store::StatusStore;

/// First and longest wait between attempts to start a pod that failed.
const RETRY_INITIAL: Duration = Duration::from_secs(10);
const RETRY_MAX: Duration = Duration::from_secs(300);

/// How long the pause process gets to exit on SIGTERM before SIGKILL.
const SANDBOX_STOP_TIMEOUT: Duration = Duration::from_secs(2);

/// What every worker shares.
pub struct WorkerContext {
    pub runtime: Containerd,
    pub status: Arc<StatusStore>,
    pub recorder: Recorder,
    pub pod_log_dir: PathBuf,
    pub sandbox_image: ResolvedImage,
}

/// Why a pod could not be started; the worker retries after a back-off.
struct StartFailure {
    /// Waiting reason shown on the containers, e.g. `ErrImagePull`.
    reason: &'static str,
    message: String,
}

pub struct Worker {
    ctx: Arc<WorkerContext>,
    pod: Arc<DesiredPod>,
    record: PodRecord,
    sandbox_id: String,
    /// Containers the OOM killer hit during their current run.
    oom_killed: HashSet<String>,
    events: mpsc::UnboundedReceiver<RuntimeEvent>,
    stop: oneshot::Receiver<()>,
}

impl Worker {
    pub fn new(
        ctx: Arc<WorkerContext>,
        pod: Arc<DesiredPod>,
        events: mpsc::UnboundedReceiver<RuntimeEvent>,
        stop: oneshot::Receiver<()>,
    ) -> Worker {
        let spec = pod.pod.spec.clone().unwrap_or_default();
        let containers = spec
            .containers
            .iter()
            .map(|c| ContainerRecord {
                name: c.name.clone(),
                image: c.image.clone().unwrap_or_default(),
                image_id: String::new(),
                container_id: None,
                state: RunState::creating(),
                restart_count: 0,
            })
            .collect();
        let record = PodRecord {
            restart_policy: spec.restart_policy.unwrap_or_else(|| "Always".into()),
            host_ip: None,
            start_time: None,
            sandbox_ready: false,
            containers,
        };
        Worker {
            sandbox_id: labels::sandbox_id(pod.uid()),
            ctx,
            pod,
            record,
            oom_killed: HashSet::new(),
            events,
            stop,
        }
    }

    /// Runs the pod until it is told to stop, then removes it.
    pub async fn run(mut self) {
        self.publish();
        self.remove_all_objects().await;
        let mut retry = RETRY_INITIAL;
        loop {
            match self.start_pod().await {
                Ok(()) => break,
                Err(failure) => {
                    warn!(pod = %self.pod.name(), file = %self.pod.source.display(), reason = failure.reason, "cannot start pod: {}; retrying in {retry:?}", failure.message);
                    self.set_waiting(failure.reason, &failure.message);
                    self.remove_all_objects().await;
                    if self.stopped_within(retry).await {
                        return self.finish().await;
                    }
                    retry = (retry * 2).min(RETRY_MAX);
                }
            }
        }
        loop {
            tokio::select! {
                _ = &mut self.stop => break,
                event = self.events.recv() => match event {
                    Some(event) => self.on_runtime_event(event).await,
                    None => break,
                },
            }
        }
        self.finish().await;
    }

    /// Waits `delay`, returning early (true) if the pod is to stop.
    async fn stopped_within(&mut self, delay: Duration) -> bool {
        tokio::select! {
            _ = &mut self.stop => true,
            _ = tokio::time::sleep(delay) => false,
        }
    }

    async fn finish(mut self) {
        self.stop_pod().await;
        self.ctx.status.remove(self.pod.uid());
        info!(pod = %self.pod.name(), uid = %self.pod.uid(), "pod removed");
    }

    fn publish(&self) {
        self.ctx.status.set(self.pod.uid(), self.record.to_status());
    }

    fn set_waiting(&mut self, reason: &str, message: &str) {
        for c in &mut self.record.containers {
            c.state = RunState::Waiting {
                reason: reason.into(),
                message: message.into(),
            };
            c.container_id = None;
        }
        self.record.sandbox_ready = false;
        self.publish();
    }

    /// Sandbox first, then every container in parallel.
    async fn start_pod(&mut self) -> Result<(), StartFailure> {
        if self
            .pod
            .pod
            .spec
            .as_ref()
            .is_some_and(|s| s.init_containers.as_ref().is_some_and(|i| !i.is_empty()))
        {
            let message =
                "initContainers are not supported by this version of podkeeper".to_string();
            self.record_pod_event(EventType::Warning, "FailedCreate", &message);
            return Err(StartFailure {
                reason: "CreateContainerConfigError",
                message,
            });
        }
        let images = self.resolve_images().await?;
        let sandbox = self.start_sandbox().await?;
        let containers = self.pod.pod.spec.clone().unwrap_or_default().containers;
        let starts = containers
            .iter()
            .zip(&images)
            .map(|(container, image)| self.start_container(container, image, sandbox));
        let results = futures::future::join_all(starts).await;
        for (container, result) in containers.iter().zip(results) {
            let Some(record) = self.record.container_mut(&container.name) else {
                continue;
            };
            match result {
                Ok((id, started_at)) => {
                    record.container_id = Some(id);
                    record.state = RunState::Running { started_at };
                }
                Err(failure) => {
                    record.state = RunState::Waiting {
                        reason: failure.reason.into(),
                        message: failure.message,
                    };
                }
            }
        }
        for (c, image) in self.record.containers.iter_mut().zip(&images) {
            c.image_id = image.digest.clone();
        }
        self.publish();
        info!(pod = %self.pod.name(), uid = %self.pod.uid(), phase = self.record.phase(), "pod started");
        Ok(())
    }

    async fn resolve_images(&self) -> Result<Vec<ResolvedImage>, StartFailure> {
        let containers = self.pod.pod.spec.clone().unwrap_or_default().containers;
        let mut images = Vec::with_capacity(containers.len());
        for container in &containers {
            let image = container.image.clone().unwrap_or_default();
            let object = ObjectRef::container(&self.pod, &container.name, false);
            let name = reference::normalize(&image).map_err(|message| {
                self.ctx.recorder.record(
                    object.clone(),
                    EventType::Warning,
                    "InspectFailed",
                    format!("Failed to apply default image tag {image:?}: {message}"),
                );
                StartFailure {
                    reason: "InvalidImageName",
                    message,
                }
            })?;
            match self.ctx.runtime.resolve_image(&name).await {
                Ok(resolved) => images.push(resolved),
                Err(e) if e.is_not_found() => {
                    let message = format!("image {name:?} is not present on this node and pulling is not available yet");
                    self.ctx.recorder.record(
                        object,
                        EventType::Warning,
                        "Failed",
                        format!("Failed to pull image {image:?}: {message}"),
                    );
                    return Err(StartFailure {
                        reason: "ErrImagePull",
                        message,
                    });
                }
                Err(e) => {
                    let message = e.to_string();
                    self.ctx.recorder.record(
                        object,
                        EventType::Warning,
                        "InspectFailed",
                        format!("Failed to inspect image {image:?}: {message}"),
                    );
                    return Err(StartFailure {
                        reason: "ImageInspectError",
                        message,
                    });
                }
            }
        }
        Ok(images)
    }

    async fn start_sandbox(&mut self) -> Result<SandboxFacts, StartFailure> {
        let image = &self.ctx.sandbox_image;
        let fail = |this: &Self, message: String| {
            this.record_pod_event(
                EventType::Warning,
                "FailedCreatePodSandBox",
                &format!("Failed to create pod sandbox: {message}"),
            );
            StartFailure {
                reason: "ContainerCreating",
                message,
            }
        };
        let oci = spec::sandbox_spec(&self.pod, &image.config, &self.sandbox_id)
            .map_err(|e| fail(self, e.to_string()))?;
        let new = NewContainer {
            id: &self.sandbox_id,
            image: &image.name,
            chain_id: &image.chain_id,
            spec: &oci,
            labels: labels::for_container(&self.pod, labels::SANDBOX_NAME),
            log_file: None,
        };
        let runtime = &self.ctx.runtime;
        let pid = match runtime.create_container(new).await {
            Ok(_) => runtime.start_task(&self.sandbox_id).await,
            Err(e) => Err(e),
        }
        .map_err(|e| fail(self, e.to_string()))?;
        self.record.sandbox_ready = true;
        self.record.start_time = Some(jiff::Timestamp::now());
        Ok(SandboxFacts { pid })
    }

    /// Creates and starts one container; returns its ID and start time.
    async fn start_container(
        &self,
        container: &Container,
        image: &ResolvedImage,
        sandbox: SandboxFacts,
    ) -> Result<(String, jiff::Timestamp), StartFailure> {
        let object = ObjectRef::container(&self.pod, &container.name, false);
        let recorder = &self.ctx.recorder;
        let fail = |reason: &'static str, message: String| {
            recorder.record(
                object.clone(),
                EventType::Warning,
                "Failed",
                format!("Error: {message}"),
            );
            StartFailure { reason, message }
        };
        let id = labels::container_id(self.pod.uid(), &container.name, 0);
        let oci = spec::container_spec(&self.pod, container, &image.config, sandbox, &id)
            .map_err(|e| fail("CreateContainerConfigError", e.to_string()))?;
        let log_file = self.prepare_log_file(&container.name, 0).map_err(|e| {
            fail(
                "CreateContainerError",
                format!("creating the log file: {e}"),
            )
        })?;
        let new = NewContainer {
            id: &id,
            image: &image.name,
            chain_id: &image.chain_id,
            spec: &oci,
            labels: labels::for_container(&self.pod, &container.name),
            log_file: Some(&log_file),
        };
        self.ctx
            .runtime
            .create_container(new)
            .await
            .map_err(|e| fail("CreateContainerError", e.to_string()))?;
        recorder.record(
            object.clone(),
            EventType::Normal,
            "Created",
            format!("Created container: {}", container.name),
        );
        self.ctx
            .runtime
            .start_task(&id)
            .await
            .map_err(|e| fail("RunContainerError", e.to_string()))?;
        recorder.record(
            object,
            EventType::Normal,
            "Started",
            format!("Started container {}", container.name),
        );
        Ok((id, jiff::Timestamp::now()))
    }

    /// `<pod-log-dir>/<namespace>_<name>_<uid>/<container>/<restart>.log`,
    /// the kubelet's layout, created empty (the shim opens it without
    /// O_CREAT).
    fn prepare_log_file(&self, container: &str, restart: u32) -> std::io::Result<PathBuf> {
        let dir = self.pod_log_dir().join(container);
        std::fs::create_dir_all(&dir)?;
        let path = dir.join(format!("{restart}.log"));
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)?;
        Ok(path)
    }

    fn pod_log_dir(&self) -> PathBuf {
        pod_log_dir(&self.ctx.pod_log_dir, &self.pod)
    }

    async fn on_runtime_event(&mut self, event: RuntimeEvent) {
        match event {
            RuntimeEvent::TaskOom { container_id } => {
                self.oom_killed.insert(container_id);
            }
            RuntimeEvent::TaskExit {
                container_id,
                exit_status,
                exited_at,
            } => {
                self.on_exit(&container_id, exit_status, exited_at);
            }
            RuntimeEvent::Resubscribed => self.recheck_tasks().await,
        }
    }

    fn on_exit(
        &mut self,
        container_id: &str,
        exit_status: u32,
        exited_at: Option<jiff::Timestamp>,
    ) {
        if container_id == self.sandbox_id {
            warn!(pod = %self.pod.name(), exit_status, "the pod sandbox exited");
            self.record.sandbox_ready = false;
            self.publish();
            return;
        }
        let oom = self.oom_killed.remove(container_id);
        let Some(name) = self.record.ids().remove(container_id) else {
            return;
        };
        let Some(record) = self.record.container_mut(&name) else {
            return;
        };
        let started_at = match record.state {
            RunState::Running { started_at } => Some(started_at),
            _ => None,
        };
        record.state = RunState::exited(exit_status, oom, started_at, exited_at);
        info!(pod = %self.pod.name(), container = %name, exit_status, "container exited");
        self.publish();
    }

    /// After the event stream was re-established: exits may have been
    /// missed, so ask containerd about every container believed running.
    async fn recheck_tasks(&mut self) {
        let running: Vec<String> = self
            .record
            .containers
            .iter()
            .filter(|c| matches!(c.state, RunState::Running { .. }))
            .filter_map(|c| c.container_id.clone())
            .collect();
        for id in running {
            match self.ctx.runtime.task_state(&id).await {
                Ok(TaskState::Stopped(exit)) => self.on_exit(&id, exit.exit_status, exit.exited_at),
                Ok(_) => {}
                Err(e) if e.is_not_found() => self.on_exit(&id, 255, None),
                Err(e) => warn!(pod = %self.pod.name(), error = %e, "cannot check container"),
            }
        }
    }

    /// Stops the containers (in parallel, SIGTERM then SIGKILL after the
    /// grace period), then the sandbox, and removes every object of the pod.
    async fn stop_pod(&mut self) {
        let grace = self
            .pod
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.termination_grace_period_seconds)
            .unwrap_or(crate::manifest::parse::DEFAULT_GRACE_PERIOD_SECONDS)
            .max(0) as u64;
        let running: Vec<(String, String)> = self
            .record
            .containers
            .iter()
            .filter(|c| matches!(c.state, RunState::Running { .. }))
            .filter_map(|c| Some((c.name.clone(), c.container_id.clone()?)))
            .collect();
        let stops = running.iter().map(|(name, id)| {
            self.ctx.recorder.record(
                ObjectRef::container(&self.pod, name, false),
                EventType::Normal,
                "Killing",
                format!("Stopping container {name}"),
            );
            self.stop_task(id, Duration::from_secs(grace))
        });
        futures::future::join_all(stops).await;
        if self.record.sandbox_ready {
            self.stop_task(&self.sandbox_id, SANDBOX_STOP_TIMEOUT).await;
        }
        self.remove_all_objects().await;
        if let Err(e) = std::fs::remove_dir_all(self.pod_log_dir()) {
            if e.kind() != std::io::ErrorKind::NotFound {
                warn!(pod = %self.pod.name(), error = %e, "cannot remove the pod's log directory");
            }
        }
    }

    /// SIGTERM, then SIGKILL to every process once `grace` has passed.
    async fn stop_task(&self, id: &str, grace: Duration) {
        let runtime = &self.ctx.runtime;
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

    /// Removes every containerd object labelled with this pod's UID: what a
    /// failed start left, or what an earlier agent run left behind.
    async fn remove_all_objects(&self) {
        remove_pod_objects(&self.ctx.runtime, self.pod.uid()).await;
    }

    fn record_pod_event(&self, event_type: EventType, reason: &str, message: &str) {
        self.ctx
            .recorder
            .record(ObjectRef::pod(&self.pod), event_type, reason, message);
    }
}

/// The kubelet's per-pod log directory.
pub fn pod_log_dir(root: &std::path::Path, pod: &DesiredPod) -> PathBuf {
    root.join(format!("{}_{}_{}", pod.namespace(), pod.name(), pod.uid()))
}

/// Removes all containers of pod `uid`, app containers before the sandbox
/// whose namespaces they use.
pub async fn remove_pod_objects(runtime: &Containerd, uid: &str) {
    let filter = labels::pod_filter(uid);
    let containers = match runtime.list_containers(&filter).await {
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
