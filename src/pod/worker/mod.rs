//! One pod's worker: brings up the sandbox and the pod's containers, each
//! container on its own (one waiting for its image does not hold back the
//! others), follows their exits, and tears everything down when the pod is
//! no longer desired.
//!
//! The loop is "decide, act, wait": [`plan`] says what is due, the worker
//! does it through the [`PodRuntime`] seam, then sleeps until the plan's
//! next deadline, a containerd event, an image arrival or the stop signal.
//! A worker owns its pod's state outright (no locks) and is the only writer
//! of its status. Starting containers (image, spec, mounts, limits, log
//! target) lives in [`start`].

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Container;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tracing::{info, warn};

mod adopt;
mod probes;
mod start;
mod stop;

pub(crate) use stop::stop_orphan;

use super::checkpoint::{Checkpoint, Clocks};
use super::plan::plan;
use super::probe::{ContainerProbes, ProbeUpdate};
use super::runtime::{PodRuntime, SandboxEnvironment, SandboxFailure};
use super::state::{ContainerRecord, PodRecord, RunState};
use crate::desired::DesiredPod;
use crate::host::{blocking, remove_tree, SafePath, UnsafeComponent};
use crate::metrics::POD_SYNCS;
use crate::runtime::containerd::events::RuntimeEvent;
use crate::runtime::containerd::tasks::{NewContainer, TaskState};
use crate::runtime::spec::SandboxInputs;
use crate::runtime::{cgroups, labels, resources, spec};
use crate::status::events::{EventType, ObjectRef, Recorder};
use crate::status::store::StatusStore;

/// How long the pause process gets to exit on SIGTERM before SIGKILL.
const SANDBOX_STOP_TIMEOUT: Duration = Duration::from_secs(2);

/// How often a worker asks containerd about its running containers, in
/// case the event stream lost an exit: a safety net, not the way exits are
/// normally learned.
const RECHECK_INTERVAL: Duration = Duration::from_secs(60);

/// What every worker shares.
pub struct WorkerContext<R> {
    pub runtime: Arc<R>,
    pub status: Arc<StatusStore>,
    pub recorder: Recorder,
    pub pod_log_dir: PathBuf,
    /// Where pod checkpoints are kept (`<state-dir>`).
    pub state_dir: PathBuf,
}

/// Why one container could not be started.
struct StartFailure {
    /// Waiting reason, e.g. `ErrImagePull`, `CreateContainerError`.
    reason: &'static str,
    message: String,
    /// The container's ID when it was made but its task failed to start
    /// (`RunContainerError`): that attempt counts as a run.
    id: Option<String>,
}

/// A container that was started.
struct Started {
    id: String,
    image_id: String,
    at: jiff::Timestamp,
    /// The image's stop signal.
    stop_signal: i32,
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
    /// The running probes of each container's current run.
    probes: std::collections::HashMap<String, ContainerProbes>,
    probe_updates: mpsc::UnboundedSender<ProbeUpdate>,
    probe_results: mpsc::UnboundedReceiver<ProbeUpdate>,
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
        let record = PodRecord::new(
            spec.restart_policy
                .clone()
                .unwrap_or_else(|| "Always".into()),
            inits.iter().map(record_of).collect(),
            spec.containers.iter().map(record_of).collect(),
        );
        let (probe_updates, probe_results) = mpsc::unbounded_channel();
        Worker {
            sandbox_id: labels::sandbox_id(pod.uid()),
            environment: None,
            arrivals: ctx.runtime.image_arrivals(),
            ctx,
            pod,
            record,
            oom_killed: Default::default(),
            probes: Default::default(),
            probe_updates,
            probe_results,
            events,
            stop,
        }
    }

    /// Runs the pod until it is told to stop, then removes it.
    ///
    /// Every step that awaits containerd is boxed: a pod spends nearly all
    /// its life waiting in the `select!` below, and an unboxed step would
    /// make each idle worker's task as large as its largest step (17 KiB,
    /// 1.9 MiB for 110 pods, measured with heaptrack) instead of only what
    /// waiting needs.
    pub async fn run(mut self) {
        Box::pin(self.adopt()).await;
        self.publish().await;
        let mut recheck = tokio::time::interval(RECHECK_INTERVAL);
        recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        recheck.tick().await;
        loop {
            let now = Instant::now();
            let plan = plan(&self.record, now);
            if plan.create_sandbox {
                let started = Instant::now();
                Box::pin(self.create_sandbox()).await;
                POD_SYNCS.record("sandbox", started.elapsed());
                self.publish().await;
                continue;
            }
            for name in &plan.show_pull_backoff {
                self.show_pull_backoff(name);
            }
            for name in &plan.show_crash_backoff {
                Box::pin(self.show_crash_backoff(name)).await;
            }
            if !plan.start.is_empty() {
                let started = Instant::now();
                Box::pin(self.start_containers(&plan.start)).await;
                POD_SYNCS.record("start", started.elapsed());
            }
            if !plan.show_pull_backoff.is_empty()
                || !plan.show_crash_backoff.is_empty()
                || !plan.start.is_empty()
            {
                self.publish().await;
                continue;
            }
            let far = now + Duration::from_secs(86400);
            tokio::select! {
                _ = &mut self.stop => break,
                event = self.events.recv() => match event {
                    Some(event) => Box::pin(self.on_runtime_event(event)).await,
                    None => break,
                },
                Ok(()) = self.arrivals.changed() => self.retry_image_waits(),
                Some(update) = self.probe_results.recv() => Box::pin(self.on_probe_update(update)).await,
                _ = recheck.tick() => Box::pin(self.recheck_tasks()).await,
                _ = tokio::time::sleep_until(plan.wake_at.unwrap_or(far)) => {}
            }
        }
        Box::pin(self.stop_pod()).await;
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

    /// Shows the pod's status and saves its checkpoint, on a blocking
    /// thread (fsyncs) and awaited, so saves of the pod never overlap.
    async fn publish(&self) {
        self.ctx.status.set(self.pod.uid(), self.record.to_status());
        let checkpoint = Checkpoint::of(&self.record, Clocks::now());
        let saved = match self.checkpoint_path() {
            Ok(path) => blocking::unblock(move || checkpoint.save(&path)).await,
            Err(e) => Err(std::io::Error::other(e)),
        };
        if let Err(e) = saved {
            warn!(pod = %self.pod.name(), error = %e, "cannot save the pod's checkpoint");
        }
    }

    /// Prepares what the sandbox stands on (cgroup, volumes, network
    /// namespace), then runs the pause container while the network is set
    /// up in its namespace (CNI does not need the task, nor the task the
    /// address), then writes the pod's files. A failure undoes everything
    /// and backs off.
    async fn create_sandbox(&mut self) {
        let runtime = self.ctx.runtime.clone();
        let mut environment = match runtime.prepare_sandbox(&self.pod).await {
            Ok(environment) => environment,
            Err(failure) => return self.sandbox_failed(failure, false).await,
        };
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
        let oci = match spec::sandbox_spec(&self.pod, &image.config, &inputs) {
            Ok(oci) => oci,
            Err(e) => {
                return self
                    .sandbox_failed(sandbox_failure(e.to_string()), false)
                    .await
            }
        };
        let new = NewContainer {
            id: &self.sandbox_id,
            image: &image.name,
            chain_id: &image.chain_id,
            spec: &oci,
            labels: labels::for_container(&self.pod, labels::SANDBOX_NAME),
            log_target: None,
        };
        let (started, connected) = tokio::join!(
            runtime.run_container(new),
            runtime.connect_sandbox(&self.pod, &mut environment)
        );
        let pid = match (started, connected) {
            (Ok(pid), Ok(())) => pid,
            (Err(e), _) => {
                return self
                    .sandbox_failed(sandbox_failure(e.to_string()), true)
                    .await
            }
            (Ok(_), Err(failure)) => return self.sandbox_failed(failure, true).await,
        };
        for (reason, message) in &environment.warnings {
            self.record_pod_event(EventType::Warning, reason, message);
        }
        self.record.sandbox_pid = Some(pid);
        self.record.start_time = Some(jiff::Timestamp::now());
        self.record.pod_ip = environment.facts.pod_ip.clone();
        self.record.host_ip = environment.facts.host_ip.clone();
        self.record.qos = Some(environment.qos.as_str());
        self.environment = Some(environment);
    }

    /// Undoes a failed sandbox creation and backs off, with the kubelet's
    /// event.
    async fn sandbox_failed(&mut self, failure: SandboxFailure, created: bool) {
        let runtime = &self.ctx.runtime;
        if created {
            let _ = runtime.remove_container(&self.sandbox_id).await;
        }
        // Refused by the runtime while the sandbox container is still there.
        runtime.release_sandbox(&self.pod).await;
        let wait = self.record.sandbox_retry.failed(Instant::now());
        warn!(pod = %self.pod.name(), file = %self.pod.source.display(), reason = failure.reason, "cannot create the pod sandbox: {}; retrying in {wait:?}", failure.message);
        let message = match failure.reason {
            "FailedMount" => failure.message,
            _ => format!("Failed to create pod sandbox: {}", failure.message),
        };
        self.record_pod_event(EventType::Warning, failure.reason, &message);
    }

    fn pod_log_dir(&self) -> Result<SafePath, UnsafeComponent> {
        pod_log_dir(&self.ctx.pod_log_dir, &self.pod)
    }

    async fn on_runtime_event(&mut self, event: RuntimeEvent) {
        match event {
            RuntimeEvent::TaskOom { container_id } => self.on_oom(container_id).await,
            RuntimeEvent::TaskExit {
                container_id,
                pid,
                exit_status,
                exited_at,
            } => {
                if container_id == self.sandbox_id {
                    // The sandbox ID is reused across sandboxes: ignore the
                    // exit of an earlier one's pause process.
                    if Some(pid) == self.record.sandbox_pid {
                        self.on_sandbox_exit(exit_status).await;
                    }
                } else {
                    self.on_exit(&container_id, exit_status, exited_at).await;
                    // As containerd's CRI plugin does: an exited task only
                    // holds its shim and log writer.
                    if let Err(e) = self.ctx.runtime.delete_task(&container_id).await {
                        warn!(container = %container_id, error = %e, "cannot delete the exited task");
                    }
                }
            }
            RuntimeEvent::Resubscribed => self.recheck_tasks().await,
        }
    }

    /// containerd publishes `/tasks/oom` and `/tasks/exit` in either order:
    /// an OOM for a container already seen exiting corrects its reason (as
    /// containerd's CRI plugin does), otherwise it is kept for the exit.
    async fn on_oom(&mut self, container_id: String) {
        let Some(name) = self.record.ids().remove(&container_id) else {
            return;
        };
        match self.record.container_mut(&name).map(|c| &mut c.state) {
            Some(RunState::Terminated { reason, .. }) => {
                *reason = "OOMKilled".into();
                self.publish().await;
            }
            _ => {
                self.oom_killed.insert(container_id);
            }
        }
    }

    async fn on_exit(
        &mut self,
        container_id: &str,
        exit_status: u32,
        exited_at: Option<jiff::Timestamp>,
    ) {
        let oom = self.oom_killed.remove(container_id);
        let Some(name) = self.record.ids().remove(container_id) else {
            return;
        };
        let Some(record) = self.record.container_mut(&name) else {
            return;
        };
        if !record.is_running() {
            // Already seen, e.g. by a re-check racing the event.
            return;
        }
        self.probes.remove(&name);
        let started_at = match record.state {
            RunState::Running { started_at } => Some(started_at),
            _ => None,
        };
        record.ended(
            RunState::exited(exit_status, oom, started_at, exited_at),
            Instant::now(),
        );
        info!(pod = %self.pod.name(), container = %name, exit_status, "container exited");
        self.publish().await;
    }

    /// The pause process died, taking the pod's namespaces with it: as the
    /// kubelet, kill the containers, remove the sandbox and make a new one;
    /// the containers restart in it by their restart policy.
    async fn on_sandbox_exit(&mut self, exit_status: u32) {
        warn!(pod = %self.pod.name(), exit_status, "the pod sandbox exited; re-creating it");
        self.record_pod_event(
            EventType::Normal,
            "SandboxChanged",
            "Pod sandbox changed, it will be killed and re-created.",
        );
        self.probes.clear();
        // Releasing is the runtime's to refuse while a container remains.
        self.ctx.runtime.remove_pod(self.pod.uid()).await;
        self.ctx.runtime.release_sandbox(&self.pod).await;
        self.environment = None;
        self.record.sandbox_lost(Instant::now());
        self.publish().await;
    }

    /// An exited container must wait before its restart: `CrashLoopBackOff`
    /// and a `BackOff` Warning, as the kubelet's `doBackOff`.
    async fn show_crash_backoff(&mut self, name: &str) {
        let pod = format!(
            "{}_{}({})",
            self.pod.name(),
            self.pod.namespace(),
            self.pod.uid()
        );
        let init = self.record.init_containers.iter().any(|c| c.name == name);
        let Some(record) = self.record.container_mut(name) else {
            return;
        };
        let superseded = record.wait_crash_backoff(&pod);
        self.ctx.recorder.record(
            ObjectRef::container(&self.pod, name, init),
            EventType::Warning,
            "BackOff",
            format!("Back-off restarting failed container {name} in pod {pod}"),
        );
        self.remove_superseded(superseded).await;
    }

    /// After the event stream was re-established, and now and then: exits
    /// may have been missed, so ask containerd about the sandbox and every
    /// container believed running.
    async fn recheck_tasks(&mut self) {
        if self.record.sandbox_pid.is_some() {
            match self.ctx.runtime.task_state(&self.sandbox_id).await {
                Ok(TaskState::Running { .. }) => {}
                Ok(TaskState::Stopped(exit)) => {
                    return self.on_sandbox_exit(exit.exit_status).await
                }
                Ok(TaskState::Other) => {}
                Err(e) if e.is_not_found() => return self.on_sandbox_exit(255).await,
                Err(e) => warn!(pod = %self.pod.name(), error = %e, "cannot check the sandbox"),
            }
        }
        let running: Vec<String> = self
            .record
            .running()
            .filter_map(|c| c.container_id.clone())
            .collect();
        for id in running {
            match self.ctx.runtime.task_state(&id).await {
                Ok(TaskState::Stopped(exit)) => {
                    self.on_exit(&id, exit.exit_status, exit.exited_at).await;
                    if let Err(e) = self.ctx.runtime.delete_task(&id).await {
                        warn!(container = %id, error = %e, "cannot delete the exited task");
                    }
                }
                Ok(_) => {}
                Err(e) if e.is_not_found() => {
                    if let Some(name) = self.record.ids().remove(&id) {
                        if let Some(record) = self.record.container_mut(&name) {
                            record.lost(Instant::now());
                        }
                        self.publish().await;
                    }
                }
                Err(e) => warn!(pod = %self.pod.name(), error = %e, "cannot check container"),
            }
        }
    }

    /// Stops the containers (in parallel, each as [`Worker::kill_container`]
    /// does), then the sandbox, and removes every object of the pod. The
    /// pod's directories (volumes, files, logs) and checkpoint go only once
    /// its containers are gone: a container left running keeps what it
    /// stands on, and the next start of the agent collects it as an orphan.
    async fn stop_pod(&mut self) {
        self.probes.clear();
        // App containers first, then sidecars and a running init container,
        // as the kubelet orders termination.
        let grace = self.grace_period(None);
        for list in [&self.record.containers, &self.record.init_containers] {
            let running: Vec<&str> = list
                .iter()
                .filter(|c| c.is_running())
                .map(|c| c.name.as_str())
                .collect();
            let stops = running
                .iter()
                .map(|name| self.kill_container(name, grace, format!("Stopping container {name}")));
            futures::future::join_all(stops).await;
        }
        let runtime = &self.ctx.runtime;
        if self.record.sandbox_pid.is_some() {
            runtime
                .stop_container(&self.sandbox_id, libc::SIGTERM, SANDBOX_STOP_TIMEOUT)
                .await;
        }
        let gone = runtime.remove_pod(self.pod.uid()).await;
        if !(gone && runtime.release_sandbox(&self.pod).await) {
            warn!(pod = %self.pod.name(), "containers of the pod remain; keeping its directories and checkpoint");
            return;
        }
        let removed = self
            .checkpoint_path()
            .map_err(std::io::Error::other)
            .and_then(|path| Checkpoint::remove(&path));
        if let Err(e) = removed {
            warn!(pod = %self.pod.name(), error = %e, "cannot remove the pod's checkpoint");
        }
        let removed = match self.pod_log_dir() {
            Ok(dir) => blocking::unblock(move || remove_tree(&dir)).await,
            Err(e) => Err(std::io::Error::other(e)),
        };
        if let Err(e) = removed {
            warn!(pod = %self.pod.name(), error = %e, "cannot remove the pod's log directory");
        }
    }

    fn record_pod_event(&self, event_type: EventType, reason: &str, message: &str) {
        self.ctx
            .recorder
            .record(ObjectRef::pod(&self.pod), event_type, reason, message);
    }
}

fn sandbox_failure(message: String) -> SandboxFailure {
    SandboxFailure {
        reason: "FailedCreatePodSandBox",
        message,
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

/// The kubelet's per-pod log directory, `<root>/<namespace>_<name>_<uid>`;
/// refused if those do not make one plain name.
pub fn pod_log_dir(root: &std::path::Path, pod: &DesiredPod) -> Result<SafePath, UnsafeComponent> {
    let name = format!("{}_{}_{}", pod.namespace(), pod.name(), pod.uid());
    SafePath::base(root).join(&[&name])
}

#[cfg(test)]
mod tests;
