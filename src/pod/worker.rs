//! One pod's worker: brings up the sandbox and the pod's containers, each
//! container on its own (one waiting for its image does not hold back the
//! others), follows their exits, and tears everything down when the pod is
//! no longer desired.
//!
//! The loop is "decide, act, wait": [`plan`] says what is due, the worker
//! does it through the [`PodRuntime`] seam, then sleeps until the plan's
//! next deadline, a containerd event, an image arrival or the stop signal.
//! A worker owns its pod's state outright (no locks) and is the only writer
//! of its status.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Container;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tracing::{info, warn};

use super::plan::{plan, PULL_ERROR_VISIBLE};
use super::runtime::{PodRuntime, SandboxEnvironment};
use super::state::{ContainerRecord, PodRecord, RunState};
use super::volumes;
use crate::desired::DesiredPod;
use crate::images::policy::{Ensured, ImageError, Provenance, PullPolicy};
use crate::runtime::containerd::events::RuntimeEvent;
use crate::runtime::containerd::tasks::{NewContainer, TaskState};
use crate::runtime::spec::{ContainerInputs, SandboxFacts, SandboxInputs};
use crate::runtime::{cgroups, labels, resources, spec};
use crate::status::events::{EventType, ObjectRef, Recorder};
use crate::status::store::StatusStore;

/// How long the pause process gets to exit on SIGTERM before SIGKILL.
const SANDBOX_STOP_TIMEOUT: Duration = Duration::from_secs(2);

/// What every worker shares.
pub struct WorkerContext<R> {
    pub runtime: Arc<R>,
    pub status: Arc<StatusStore>,
    pub recorder: Recorder,
    pub pod_log_dir: PathBuf,
}

/// Why one container could not be started.
struct StartFailure {
    /// Waiting reason, e.g. `ErrImagePull`, `CreateContainerError`.
    reason: &'static str,
    message: String,
}

/// A container that was started.
struct Started {
    id: String,
    image_id: String,
    at: jiff::Timestamp,
}

pub struct Worker<R> {
    ctx: Arc<WorkerContext<R>>,
    pod: Arc<DesiredPod>,
    record: PodRecord,
    sandbox_id: String,
    /// What the running sandbox stands on; set once it runs.
    environment: Option<SandboxEnvironment>,
    /// Containers the OOM killer hit during their current run.
    oom_killed: std::collections::HashSet<String>,
    events: mpsc::UnboundedReceiver<RuntimeEvent>,
    arrivals: watch::Receiver<u64>,
    stop: oneshot::Receiver<()>,
}

impl<R: PodRuntime> Worker<R> {
    pub fn new(
        ctx: Arc<WorkerContext<R>>,
        pod: Arc<DesiredPod>,
        events: mpsc::UnboundedReceiver<RuntimeEvent>,
        stop: oneshot::Receiver<()>,
    ) -> Worker<R> {
        let spec = pod.pod.spec.clone().unwrap_or_default();
        let inits = spec.init_containers.clone().unwrap_or_default();
        // The kubelet's waiting reason while init containers run.
        let initial = if inits.is_empty() {
            RunState::creating()
        } else {
            RunState::Waiting {
                reason: "PodInitializing".into(),
                message: String::new(),
            }
        };
        let record_of = |c: &Container| {
            let image = c.image.clone().unwrap_or_default();
            ContainerRecord {
                sidecar: c.restart_policy.as_deref() == Some("Always"),
                ..ContainerRecord::new(c.name.clone(), image, initial.clone())
            }
        };
        let record = PodRecord {
            restart_policy: spec
                .restart_policy
                .clone()
                .unwrap_or_else(|| "Always".into()),
            host_ip: None,
            pod_ip: None,
            qos: None,
            start_time: None,
            sandbox_pid: None,
            sandbox_retry: Default::default(),
            init_containers: inits.iter().map(record_of).collect(),
            containers: spec.containers.iter().map(record_of).collect(),
        };
        Worker {
            sandbox_id: labels::sandbox_id(pod.uid()),
            environment: None,
            arrivals: ctx.runtime.image_arrivals(),
            ctx,
            pod,
            record,
            oom_killed: Default::default(),
            events,
            stop,
        }
    }

    /// Runs the pod until it is told to stop, then removes it.
    pub async fn run(mut self) {
        self.publish();
        self.ctx.runtime.remove_pod(self.pod.uid()).await;
        self.ctx.runtime.release_sandbox(&self.pod).await;
        loop {
            let now = Instant::now();
            let plan = plan(&self.record, now);
            if plan.create_sandbox {
                self.create_sandbox().await;
                self.publish();
                continue;
            }
            for name in &plan.show_pull_backoff {
                self.show_pull_backoff(name);
            }
            if !plan.start.is_empty() {
                self.start_containers(&plan.start).await;
            }
            if !plan.show_pull_backoff.is_empty() || !plan.start.is_empty() {
                self.publish();
                continue;
            }
            let far = now + Duration::from_secs(86400);
            tokio::select! {
                _ = &mut self.stop => break,
                event = self.events.recv() => match event {
                    Some(event) => self.on_runtime_event(event).await,
                    None => break,
                },
                Ok(()) = self.arrivals.changed() => self.retry_image_waits(),
                _ = tokio::time::sleep_until(plan.wake_at.unwrap_or(far)) => {}
            }
        }
        self.stop_pod().await;
        self.ctx.status.remove(self.pod.uid());
        info!(pod = %self.pod.name(), uid = %self.pod.uid(), "pod removed");
    }

    /// A container of the pod by name, and whether it is an init container.
    fn container_spec(&self, name: &str) -> Option<(Container, bool)> {
        let spec = self.pod.pod.spec.as_ref()?;
        let init = spec
            .init_containers
            .iter()
            .flatten()
            .find(|c| c.name == name);
        match init {
            Some(c) => Some((c.clone(), true)),
            None => spec
                .containers
                .iter()
                .find(|c| c.name == name)
                .map(|c| (c.clone(), false)),
        }
    }

    fn publish(&self) {
        self.ctx.status.set(self.pod.uid(), self.record.to_status());
    }

    /// Prepares what the sandbox stands on (cgroup, volumes, network,
    /// files), then runs the pause container in the pod's network
    /// namespace. A failure undoes the preparation and backs off.
    async fn create_sandbox(&mut self) {
        let runtime = &self.ctx.runtime;
        let environment = match runtime.prepare_sandbox(&self.pod).await {
            Ok(environment) => environment,
            Err(failure) => {
                runtime.release_sandbox(&self.pod).await;
                let wait = self.record.sandbox_retry.failed(Instant::now());
                warn!(pod = %self.pod.name(), file = %self.pod.source.display(), reason = failure.reason, "cannot prepare the pod: {}; retrying in {wait:?}", failure.message);
                let message = match failure.reason {
                    "FailedMount" => failure.message,
                    _ => format!("Failed to create pod sandbox: {}", failure.message),
                };
                self.record_pod_event(EventType::Warning, failure.reason, &message);
                return;
            }
        };
        for (reason, message) in &environment.warnings {
            self.record_pod_event(EventType::Warning, reason, message);
        }
        let image = runtime.sandbox_image().clone();
        let inputs = SandboxInputs {
            cgroup_path: cgroups::container_cgroup_path(
                &environment.cgroup_parent,
                &self.sandbox_id,
            ),
            netns: environment.netns.clone(),
            resources: Some(sandbox_resources()),
            oom_score_adj: Some(
                resources::SANDBOX_OOM_SCORE_ADJ.max(environment.min_oom_score_adj),
            ),
        };
        let result = match spec::sandbox_spec(&self.pod, &image.config, &inputs) {
            Ok(oci) => {
                let new = NewContainer {
                    id: &self.sandbox_id,
                    image: &image.name,
                    chain_id: &image.chain_id,
                    spec: &oci,
                    labels: labels::for_container(&self.pod, labels::SANDBOX_NAME),
                    log_target: None,
                };
                runtime.run_container(new).await.map_err(|e| e.to_string())
            }
            Err(e) => Err(e.to_string()),
        };
        match result {
            Ok(pid) => {
                self.record.sandbox_pid = Some(pid);
                self.record.start_time = Some(jiff::Timestamp::now());
                self.record.pod_ip = environment.facts.pod_ip.clone();
                self.record.host_ip = environment.facts.host_ip.clone();
                self.record.qos = Some(environment.qos.as_str());
                self.environment = Some(environment);
            }
            Err(message) => {
                let _ = runtime.remove_container(&self.sandbox_id).await;
                runtime.release_sandbox(&self.pod).await;
                let wait = self.record.sandbox_retry.failed(Instant::now());
                warn!(pod = %self.pod.name(), file = %self.pod.source.display(), "cannot create the pod sandbox: {message}; retrying in {wait:?}");
                self.record_pod_event(
                    EventType::Warning,
                    "FailedCreatePodSandBox",
                    &format!("Failed to create pod sandbox: {message}"),
                );
            }
        }
    }

    /// Starts the named containers in parallel and records the outcomes.
    async fn start_containers(&mut self, names: &[String]) {
        let (Some(pid), Some(environment)) = (self.record.sandbox_pid, &self.environment) else {
            return;
        };
        let sandbox = SandboxFacts {
            pid,
            addresses: environment.facts.clone(),
            files: environment.files.clone(),
        };
        let mut attempts = Vec::new();
        for name in names {
            let Some((container, init)) = self.container_spec(name) else {
                continue;
            };
            let Some(record) = self.record.container_mut(name) else {
                continue;
            };
            let attempt = record.attempts;
            record.attempts += 1;
            // The kubelet names a run's log file by its restart count.
            attempts.push((container, init, attempt, record.runs));
        }
        let starts = attempts.iter().map(|(container, init, attempt, restarts)| {
            self.start_container(container, *init, *attempt, *restarts, &sandbox)
        });
        let results = futures::future::join_all(starts).await;
        let now = Instant::now();
        for ((container, _, _, _), result) in attempts.iter().zip(results) {
            let Some(record) = self.record.container_mut(&container.name) else {
                continue;
            };
            match result {
                Ok(started) => {
                    record.restart_count = record.runs as i32;
                    record.runs += 1;
                    record.container_id = Some(started.id);
                    record.image_id = started.image_id;
                    record.state = RunState::Running {
                        started_at: started.at,
                    };
                    record.retry = Default::default();
                    record.pull_backoff_at = None;
                }
                Err(failure) => {
                    let wait = record.retry.failed(now);
                    record.pull_backoff_at = (failure.reason == "ErrImagePull")
                        .then(|| now + PULL_ERROR_VISIBLE.min(wait / 2));
                    record.container_id = None;
                    warn!(pod = %self.pod.name(), container = %container.name, file = %self.pod.source.display(), reason = failure.reason, "cannot start container: {}; retrying in {wait:?}", failure.message);
                    record.state = RunState::Waiting {
                        reason: failure.reason.into(),
                        message: failure.message,
                    };
                }
            }
        }
    }

    /// Image, spec, log file, container, task: one attempt.
    async fn start_container(
        &self,
        container: &Container,
        init: bool,
        attempt: u32,
        restart_count: u32,
        sandbox: &SandboxFacts,
    ) -> Result<Started, StartFailure> {
        let object = ObjectRef::container(&self.pod, &container.name, init);
        let list = if init {
            "spec.initContainers"
        } else {
            "spec.containers"
        };
        let ensured = self.ensure_image(container, &object).await?;
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
        let id = labels::container_id(self.pod.uid(), &container.name, attempt);
        let image = &ensured.image;
        let inputs = self
            .container_inputs(container, init, &id, sandbox)
            .map_err(|message| fail("CreateContainerConfigError", message))?;
        let oci = spec::container_spec(&self.pod, container, list, &image.config, sandbox, &inputs)
            .map_err(|e| fail("CreateContainerConfigError", e.to_string()))?;
        let log_file = self
            .prepare_log_file(&container.name, restart_count)
            .map_err(|e| {
                fail(
                    "CreateContainerError",
                    format!("creating the log file: {e}"),
                )
            })?;
        let log_target = self.ctx.runtime.log_target(&log_file);
        let new = NewContainer {
            id: &id,
            image: &image.name,
            chain_id: &image.chain_id,
            spec: &oci,
            labels: labels::for_container(&self.pod, &container.name),
            log_target: Some(&log_target),
        };
        match self.ctx.runtime.run_container(new).await {
            Ok(_) => {}
            Err(e) => {
                let _ = self.ctx.runtime.remove_container(&id).await;
                return Err(fail("RunContainerError", e.to_string()));
            }
        }
        let name = &container.name;
        recorder.record(
            object.clone(),
            EventType::Normal,
            "Created",
            format!("Created container: {name}"),
        );
        recorder.record(
            object,
            EventType::Normal,
            "Started",
            format!("Started container {name}"),
        );
        Ok(Started {
            id,
            image_id: image.digest.clone(),
            at: jiff::Timestamp::now(),
        })
    }

    /// Cgroup, limits and volume mounts of one container.
    fn container_inputs(
        &self,
        container: &Container,
        init: bool,
        id: &str,
        sandbox: &SandboxFacts,
    ) -> Result<ContainerInputs, String> {
        let Some(environment) = &self.environment else {
            return Err("the pod sandbox is not ready".into());
        };
        let spec = self.pod.pod.spec.clone().unwrap_or_default();
        let list = if init {
            "spec.initContainers"
        } else {
            "spec.containers"
        };
        let limits = resources::container_resources(
            &spec,
            container,
            init,
            environment.qos,
            environment.facts.node_memory,
        )
        .map_err(|e| e.to_string())?;
        let variables = crate::runtime::env::container_variables(
            &self.pod,
            container,
            list,
            &sandbox.addresses,
        )
        .map_err(|e| e.to_string())?;
        let privileged = container
            .security_context
            .as_ref()
            .and_then(|s| s.privileged)
            .unwrap_or(false);
        let mounts = volumes::container_mounts(
            &environment.volumes,
            container,
            list,
            privileged,
            &variables.into_iter().collect(),
        )
        .map_err(|e| e.to_string())?;
        Ok(ContainerInputs {
            cgroup_path: cgroups::container_cgroup_path(&environment.cgroup_parent, id),
            rootfs_propagation: volumes::rootfs_propagation(&mounts).map(String::from),
            mounts,
            resources: Some(resources::to_oci(&limits)),
            oom_score_adj: Some(limits.oom_score_adj.max(environment.min_oom_score_adj)),
        })
    }

    /// The image by the container's pull policy, with the kubelet's events.
    async fn ensure_image(
        &self,
        container: &Container,
        object: &ObjectRef,
    ) -> Result<Ensured, StartFailure> {
        let image = container.image.clone().unwrap_or_default();
        let policy = PullPolicy::parse(container.image_pull_policy.as_deref());
        let recorder = self.ctx.recorder.clone();
        let on_pull = {
            let (recorder, object, image) = (recorder.clone(), object.clone(), image.clone());
            Box::new(move || {
                recorder.record(
                    object,
                    EventType::Normal,
                    "Pulling",
                    format!("Pulling image {image:?}"),
                );
            })
        };
        match self.ctx.runtime.ensure_image(&image, policy, on_pull).await {
            Ok(ensured) => {
                let message = match &ensured.provenance {
                    Provenance::AlreadyPresent => {
                        format!("Container image {image:?} already present on machine")
                    }
                    Provenance::Pulled { duration } => format!(
                        "Successfully pulled image {image:?} in {duration:.3?} ({duration:.3?} including waiting). Image size: {} bytes.",
                        ensured.image.size
                    ),
                    Provenance::LocalFallback { error } => {
                        recorder.record(
                            object.clone(),
                            EventType::Warning,
                            "RegistryUnreachable",
                            format!("Cannot reach the registry for {image:?} ({error}); using the image already present on machine"),
                        );
                        format!("Container image {image:?} already present on machine")
                    }
                };
                recorder.record(object.clone(), EventType::Normal, "Pulled", message);
                Ok(ensured)
            }
            Err(error) => {
                let (reason, message) = match &error {
                    ImageError::InvalidName(e) => (
                        "InspectFailed",
                        format!("Failed to apply default image tag {image:?}: {e}"),
                    ),
                    ImageError::NeverPull(_) => ("ErrImageNeverPull", error.to_string()),
                    ImageError::Pull(e) => {
                        ("Failed", format!("Failed to pull image {image:?}: {e}"))
                    }
                    ImageError::Inspect(_) => ("InspectFailed", error.to_string()),
                };
                recorder.record(object.clone(), EventType::Warning, reason, message.clone());
                if let ImageError::Pull(_) = error {
                    recorder.record(
                        object.clone(),
                        EventType::Warning,
                        "Failed",
                        "Error: ErrImagePull",
                    );
                }
                Err(StartFailure {
                    reason: error.reason(),
                    message,
                })
            }
        }
    }

    /// `ErrImagePull` becomes `ImagePullBackOff` while the next pull waits.
    fn show_pull_backoff(&mut self, name: &str) {
        let object = ObjectRef::container(&self.pod, name, false);
        let Some(record) = self.record.container_mut(name) else {
            return;
        };
        record.pull_backoff_at = None;
        let RunState::Waiting { message, .. } = &record.state else {
            return;
        };
        let image = record.image.clone();
        record.state = RunState::Waiting {
            reason: "ImagePullBackOff".into(),
            message: format!("Back-off pulling image {image:?}: {message}"),
        };
        let recorder = &self.ctx.recorder;
        recorder.record(
            object.clone(),
            EventType::Normal,
            "BackOff",
            format!("Back-off pulling image {image:?}"),
        );
        recorder.record(
            object,
            EventType::Warning,
            "Failed",
            "Error: ImagePullBackOff",
        );
    }

    /// An image arrived: containers waiting for one try again now.
    fn retry_image_waits(&mut self) {
        for c in &mut self.record.containers {
            if let RunState::Waiting { reason, .. } = &c.state {
                if matches!(
                    reason.as_str(),
                    "ErrImagePull" | "ImagePullBackOff" | "ErrImageNeverPull"
                ) {
                    c.retry.retry_now();
                }
            }
        }
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
            RuntimeEvent::TaskOom { container_id } => self.on_oom(container_id),
            RuntimeEvent::TaskExit {
                container_id,
                pid,
                exit_status,
                exited_at,
            } => {
                // The sandbox ID is reused across runs: ignore the exit of
                // an earlier run's pause process.
                let stale = container_id == self.sandbox_id && Some(pid) != self.record.sandbox_pid;
                if !stale {
                    self.on_exit(&container_id, exit_status, exited_at);
                    if container_id != self.sandbox_id {
                        // As containerd's CRI plugin does: an exited task
                        // only holds its shim and log writer.
                        if let Err(e) = self.ctx.runtime.delete_task(&container_id).await {
                            warn!(container = %container_id, error = %e, "cannot delete the exited task");
                        }
                    }
                }
            }
            RuntimeEvent::Resubscribed => self.recheck_tasks().await,
        }
    }

    /// containerd publishes `/tasks/oom` and `/tasks/exit` in either order:
    /// an OOM for a container already seen exiting corrects its reason (as
    /// containerd's CRI plugin does), otherwise it is kept for the exit.
    fn on_oom(&mut self, container_id: String) {
        let Some(name) = self.record.ids().remove(&container_id) else {
            return;
        };
        match self.record.container_mut(&name).map(|c| &mut c.state) {
            Some(RunState::Terminated { reason, .. }) => {
                *reason = "OOMKilled".into();
                self.publish();
            }
            _ => {
                self.oom_killed.insert(container_id);
            }
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
        let is_init = self.record.init_containers.iter().any(|c| c.name == name);
        let never = self.record.restart_policy == "Never";
        if let Some(record) = self.record.container_mut(&name) {
            // A failed init container, or a sidecar that stopped, is tried
            // again after a back-off (app container restarts come with the
            // lifecycle work).
            if is_init && (record.sidecar || (record.failed() && !never)) {
                record.retry.failed(Instant::now());
            }
        }
        self.publish();
    }

    /// After the event stream was re-established: exits may have been
    /// missed, so ask containerd about every container believed running.
    async fn recheck_tasks(&mut self) {
        let running: Vec<String> = self
            .record
            .init_containers
            .iter()
            .chain(&self.record.containers)
            .filter(|c| c.is_running())
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
        // App containers first, then sidecars and a running init container,
        // as the kubelet orders termination.
        let runtime = &self.ctx.runtime;
        for (list, init) in [
            (&self.record.containers, false),
            (&self.record.init_containers, true),
        ] {
            let running: Vec<(&str, &str)> = list
                .iter()
                .filter(|c| c.is_running())
                .filter_map(|c| Some((c.name.as_str(), c.container_id.as_deref()?)))
                .collect();
            let stops = running.iter().map(|(name, id)| {
                self.ctx.recorder.record(
                    ObjectRef::container(&self.pod, name, init),
                    EventType::Normal,
                    "Killing",
                    format!("Stopping container {name}"),
                );
                runtime.stop_container(id, Duration::from_secs(grace))
            });
            futures::future::join_all(stops).await;
        }
        if self.record.sandbox_pid.is_some() {
            runtime
                .stop_container(&self.sandbox_id, SANDBOX_STOP_TIMEOUT)
                .await;
        }
        runtime.remove_pod(self.pod.uid()).await;
        runtime.release_sandbox(&self.pod).await;
        if let Err(e) = std::fs::remove_dir_all(self.pod_log_dir()) {
            if e.kind() != std::io::ErrorKind::NotFound {
                warn!(pod = %self.pod.name(), error = %e, "cannot remove the pod's log directory");
            }
        }
    }

    fn record_pod_event(&self, event_type: EventType, reason: &str, message: &str) {
        self.ctx
            .recorder
            .record(ObjectRef::pod(&self.pod), event_type, reason, message);
    }
}

/// The pause container's limits: cpu shares 2, as containerd's CRI plugin
/// gives every sandbox.
fn sandbox_resources() -> oci_spec::runtime::LinuxResources {
    let mut cpu = oci_spec::runtime::LinuxCpu::default();
    cpu.set_shares(Some(resources::SANDBOX_CPU_SHARES));
    let mut limits = oci_spec::runtime::LinuxResources::default();
    limits.set_cpu(Some(cpu));
    limits
}

/// The kubelet's per-pod log directory.
pub fn pod_log_dir(root: &std::path::Path, pod: &DesiredPod) -> PathBuf {
    root.join(format!("{}_{}_{}", pod.namespace(), pod.name(), pod.uid()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pod::fake::FakeRuntime;
    use crate::status::events::{test_recorder, Occurrence};

    const POD: &str = "apiVersion: v1\nkind: Pod\nmetadata: {name: web}\nspec:\n  terminationGracePeriodSeconds: 3\n  containers:\n  - {name: a, image: present:1}\n  - {name: b, image: missing:1}\n";

    struct Harness {
        fake: Arc<FakeRuntime>,
        exits: mpsc::UnboundedSender<RuntimeEvent>,
        status: Arc<StatusStore>,
        events: mpsc::Receiver<Occurrence>,
        uid: String,
        stop: Option<oneshot::Sender<()>>,
        task: tokio::task::JoinHandle<()>,
        _logs: tempfile::TempDir,
    }

    fn start(images: &[&str]) -> Harness {
        start_pod(POD, images)
    }

    fn start_pod(manifest: &str, images: &[&str]) -> Harness {
        let pod = crate::manifest::parse::parse_manifest(
            manifest.as_bytes(),
            std::path::Path::new("/m/web.yaml"),
            "n",
        )
        .unwrap();
        let fake = Arc::new(FakeRuntime::new(images));
        let status = Arc::new(StatusStore::default());
        let (recorder, events) = test_recorder();
        let logs = tempfile::tempdir().unwrap();
        let ctx = Arc::new(WorkerContext {
            runtime: fake.clone(),
            status: status.clone(),
            recorder,
            pod_log_dir: logs.path().into(),
        });
        let (exits, events_rx) = mpsc::unbounded_channel();
        let (stop_tx, stop_rx) = oneshot::channel();
        let uid = pod.uid().to_string();
        let worker = Worker::new(ctx, Arc::new(pod), events_rx, stop_rx);
        let task = tokio::spawn(worker.run());
        Harness {
            fake,
            exits,
            status,
            events,
            uid,
            stop: Some(stop_tx),
            task,
            _logs: logs,
        }
    }

    impl Harness {
        /// Tells the worker that container `name`'s current run exited.
        fn exit(&self, name: &str, attempt: u32, status: u32) {
            let event = RuntimeEvent::TaskExit {
                container_id: labels::container_id(&self.uid, name, attempt),
                pid: 0,
                exit_status: status,
                exited_at: None,
            };
            self.exits.send(event).unwrap();
        }

        fn init_states(&self) -> Vec<String> {
            let Some(status) = self.status.get(&self.uid) else {
                return vec![];
            };
            status
                .init_container_statuses
                .clone()
                .unwrap_or_default()
                .iter()
                .map(|c| state_word(c.state.clone().unwrap_or_default()))
                .collect()
        }

        /// The state word of each container: Running, or the waiting/terminated reason.
        fn states(&self) -> Vec<String> {
            let Some(status) = self.status.get(&self.uid) else {
                return vec![];
            };
            status
                .container_statuses
                .clone()
                .unwrap_or_default()
                .iter()
                .map(|c| {
                    let s = c.state.clone().unwrap_or_default();
                    if s.running.is_some() {
                        "Running".to_string()
                    } else if let Some(w) = s.waiting {
                        w.reason.unwrap_or_default()
                    } else {
                        s.terminated.and_then(|t| t.reason).unwrap_or_default()
                    }
                })
                .collect()
        }

        async fn wait_for(&self, want: &[&str]) {
            for _ in 0..10_000 {
                if self.states() == want {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            panic!("states stayed {:?}, wanted {want:?}", self.states());
        }

        fn reasons(&mut self) -> Vec<String> {
            let mut reasons = Vec::new();
            while let Ok(o) = self.events.try_recv() {
                reasons.push(format!("{} {}", o.object.field_path, o.reason));
            }
            reasons
        }
    }

    fn state_word(s: k8s_openapi::api::core::v1::ContainerState) -> String {
        if s.running.is_some() {
            "Running".to_string()
        } else if let Some(w) = s.waiting {
            w.reason.unwrap_or_default()
        } else {
            s.terminated.and_then(|t| t.reason).unwrap_or_default()
        }
    }

    const WITH_INIT: &str = "apiVersion: v1\nkind: Pod\nmetadata: {name: web}\nspec:\n  initContainers:\n  - {name: setup, image: x:1}\n  - {name: side, image: x:1, restartPolicy: Always}\n  - {name: last, image: x:1}\n  containers:\n  - {name: app, image: x:1}\n";

    async fn settle() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    #[tokio::test(start_paused = true)]
    async fn init_containers_run_in_order_and_the_sidecar_keeps_running() {
        let h = start_pod(WITH_INIT, &["x:1"]);
        settle().await;
        assert_eq!(
            h.init_states(),
            ["Running", "PodInitializing", "PodInitializing"]
        );
        assert_eq!(h.states(), ["PodInitializing"]);
        h.exit("setup", 0, 0);
        settle().await;
        // The sidecar started, then the last init container right after it.
        assert_eq!(h.init_states(), ["Completed", "Running", "Running"]);
        h.exit("last", 0, 0);
        settle().await;
        assert_eq!(h.init_states(), ["Completed", "Running", "Completed"]);
        assert_eq!(h.states(), ["Running"]);
        let status = h.status.get(&h.uid).unwrap();
        let initialized = status
            .conditions
            .clone()
            .unwrap()
            .into_iter()
            .find(|c| c.type_ == "Initialized")
            .unwrap();
        assert_eq!(initialized.status, "True");
        let runs: Vec<String> = h
            .fake
            .calls()
            .into_iter()
            .filter(|c| c.starts_with("run ") && c.contains("-c-"))
            .collect();
        let order: Vec<&str> = runs
            .iter()
            .map(|c| c.split("-c-").nth(1).unwrap())
            .collect();
        assert_eq!(order, ["setup-0", "side-0", "last-0", "app-0"]);
    }

    #[tokio::test(start_paused = true)]
    async fn an_oom_event_after_the_exit_still_marks_the_container_oom_killed() {
        let manifest = POD.replace("spec:\n", "spec:\n  restartPolicy: Never\n");
        let h = start_pod(&manifest, &["present:1", "missing:1"]);
        h.wait_for(&["Running", "Running"]).await;
        h.exit("a", 0, 137);
        settle().await;
        assert_eq!(h.states(), ["Error", "Running"]);
        let event = RuntimeEvent::TaskOom {
            container_id: labels::container_id(&h.uid, "a", 0),
        };
        h.exits.send(event).unwrap();
        settle().await;
        assert_eq!(h.states(), ["OOMKilled", "Running"]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failing_init_container_is_retried_with_back_off() {
        let h = start_pod(WITH_INIT, &["x:1"]);
        settle().await;
        h.exit("setup", 0, 1);
        settle().await;
        assert_eq!(h.init_states()[0], "Error");
        assert_eq!(h.states(), ["PodInitializing"]);
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(h.init_states()[0], "Running");
        let status = h.status.get(&h.uid).unwrap();
        assert_eq!(
            status.init_container_statuses.clone().unwrap()[0].restart_count,
            1
        );
        assert_eq!(status.phase.as_deref(), Some("Pending"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_failing_init_container_fails_the_pod_under_restart_policy_never() {
        let manifest = WITH_INIT.replace("spec:\n", "spec:\n  restartPolicy: Never\n");
        let h = start_pod(&manifest, &["x:1"]);
        settle().await;
        h.exit("setup", 0, 1);
        tokio::time::sleep(Duration::from_secs(60)).await;
        let status = h.status.get(&h.uid).unwrap();
        assert_eq!(status.phase.as_deref(), Some("Failed"));
        assert_eq!(h.init_states()[0], "Error");
        assert_eq!(h.states(), ["PodInitializing"]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_container_waiting_for_its_image_does_not_hold_back_the_others() {
        let mut h = start(&["present:1"]);
        h.wait_for(&["Running", "ErrImagePull"]).await;
        let reasons = h.reasons();
        for expected in [
            "spec.containers{a} Pulling",
            "spec.containers{a} Pulled",
            "spec.containers{a} Created",
            "spec.containers{a} Started",
            "spec.containers{b} Pulling",
            "spec.containers{b} Failed",
        ] {
            assert!(
                reasons.iter().any(|r| r == expected),
                "{expected} missing from {reasons:?}"
            );
        }
        let started = Instant::now();
        h.wait_for(&["Running", "ImagePullBackOff"]).await;
        assert!(started.elapsed() <= PULL_ERROR_VISIBLE + Duration::from_millis(50));
        assert!(h
            .reasons()
            .contains(&"spec.containers{b} BackOff".to_string()));
    }

    #[tokio::test(start_paused = true)]
    async fn an_arriving_image_starts_the_waiting_container_without_waiting_out_the_back_off() {
        let h = start(&["present:1"]);
        h.wait_for(&["Running", "ErrImagePull"]).await;
        let arrived = Instant::now();
        h.fake.add_image("missing:1");
        h.wait_for(&["Running", "Running"]).await;
        assert!(
            arrived.elapsed() < Duration::from_secs(1),
            "{:?}",
            arrived.elapsed()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn failed_pulls_back_off_10s_then_20s() {
        let h = start(&["present:1"]);
        h.wait_for(&["Running", "ErrImagePull"]).await;
        let pulls = |h: &Harness| {
            h.fake
                .calls()
                .iter()
                .filter(|c| *c == "pull missing:1")
                .count()
        };
        assert_eq!(pulls(&h), 1);
        tokio::time::sleep(Duration::from_millis(9_900)).await;
        assert_eq!(pulls(&h), 1);
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(pulls(&h), 2);
        tokio::time::sleep(Duration::from_millis(19_700)).await;
        assert_eq!(pulls(&h), 2);
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(pulls(&h), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn stopping_stops_containers_then_the_sandbox_and_removes_everything() {
        let mut h = start(&["present:1", "missing:1"]);
        h.wait_for(&["Running", "Running"]).await;
        assert_eq!(h.fake.live_containers().len(), 3);
        let _ = h.stop.take().unwrap().send(());
        (&mut h.task).await.unwrap();
        let calls = h.fake.calls();
        let position = |needle: &str| {
            calls
                .iter()
                .position(|c| c.starts_with(needle))
                .unwrap_or_else(|| panic!("{needle} in {calls:?}"))
        };
        let sandbox_stop = position(&format!("stop {}", labels::sandbox_id(&h.uid)));
        let app_stop = calls
            .iter()
            .position(|c| c.starts_with("stop") && c.contains("-c-"))
            .unwrap();
        assert!(app_stop < sandbox_stop, "{calls:?}");
        let last_removal = calls
            .iter()
            .rposition(|c| c == &format!("remove-pod {}", h.uid))
            .unwrap();
        assert!(last_removal > sandbox_stop, "{calls:?}");
        assert!(h.fake.live_containers().is_empty());
        assert!(h.status.get(&h.uid).is_none());
        assert!(
            h.reasons()
                .iter()
                .filter(|r| r.ends_with("Killing"))
                .count()
                == 2
        );
    }
}
