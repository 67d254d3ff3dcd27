//! The seam between pod workers and the node: everything a worker asks of
//! images and containers. The agent plugs in containerd and the image
//! service ([`super::node::NodeRuntime`]); worker tests plug in a fake that
//! records calls.

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::sync::watch;

use super::volumes::PreparedVolumes;
use crate::desired::DesiredPod;
use crate::runtime::env::PodFacts;
use crate::runtime::pod_files::PodFiles;
use crate::runtime::resources::QosClass;

use crate::images::policy::{Ensured, ImageError, OnPull, PullPolicy};
use crate::runtime::containerd::exec::ExecOutput;
use crate::runtime::containerd::images::ResolvedImage;
use crate::runtime::containerd::tasks::{NewContainer, TaskState};
use crate::runtime::containerd::RuntimeError;

/// Everything a pod's sandbox and containers stand on, prepared before the
/// sandbox task starts and released after the pod's last container.
#[derive(Debug, Clone)]
pub struct SandboxEnvironment {
    /// Pod and host IP and the node's capacity, for the downward API.
    pub facts: PodFacts,
    /// `/etc/hosts`, `/etc/resolv.conf`, `/etc/hostname`, `/dev/shm`.
    pub files: Option<PodFiles>,
    /// The pod's network namespace (`None` with `hostNetwork`).
    pub netns: Option<PathBuf>,
    /// The pod's cgroup; containers go below it.
    pub cgroup_parent: String,
    pub qos: QosClass,
    pub volumes: PreparedVolumes,
    /// Warnings to record as events, e.g. `MissingClusterDNS`.
    pub warnings: Vec<(&'static str, String)>,
    /// The lowest `oom_score_adj` this node lets containers have.
    pub min_oom_score_adj: i32,
}

/// Why a sandbox could not be prepared.
#[derive(Debug, Clone)]
pub struct SandboxFailure {
    /// The event reason: `FailedMount` or `FailedCreatePodSandBox`.
    pub reason: &'static str,
    pub message: String,
}

/// One of a pod's containers as containerd has it, for adoption.
#[derive(Debug, Clone, PartialEq)]
pub struct ExistingContainer {
    pub id: String,
    /// The pod's container name; [`crate::runtime::labels::SANDBOX_NAME`]
    /// for the sandbox.
    pub name: String,
    /// The restart count label of the run, if set.
    pub restart_count: Option<u32>,
    pub created_at: Option<jiff::Timestamp>,
    /// `None`: no task (never started, or deleted after its exit).
    pub task: Option<TaskState>,
    /// The container's labels, which say how to stop it
    /// ([`crate::runtime::stop_labels::StopLabels`]) when no spec is left.
    pub labels: HashMap<String, String>,
}

/// A pod that has containers, as their labels name it: all the agent knows
/// of a pod whose manifest went away while it was down.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelledPod {
    pub uid: String,
    pub namespace: String,
    pub name: String,
}

pub trait PodRuntime: Send + Sync + 'static {
    /// Cgroup, volumes, hostPort claim and network namespace of a pod: what
    /// its sandbox task needs to be created.
    fn prepare_sandbox(
        &self,
        pod: &DesiredPod,
    ) -> impl Future<Output = Result<SandboxEnvironment, SandboxFailure>> + Send;

    /// The pod's network (CNI ADD into the prepared namespace) and then its
    /// shared files, which name its IP. Independent of the sandbox task, so
    /// the two proceed side by side.
    fn connect_sandbox(
        &self,
        pod: &DesiredPod,
        environment: &mut SandboxEnvironment,
    ) -> impl Future<Output = Result<(), SandboxFailure>> + Send;

    /// What an earlier run of the agent prepared for a pod whose sandbox
    /// still runs, found again without changing it (the network keeps its
    /// address, volumes their content).
    fn adopt_sandbox(
        &self,
        pod: &DesiredPod,
    ) -> impl Future<Output = Result<SandboxEnvironment, SandboxFailure>> + Send;

    /// Undoes [`PodRuntime::prepare_sandbox`]; idempotent, also for a pod
    /// that was only partly prepared. Refused (`false`) while any container
    /// of the pod is left: its volumes, files and network must not go from
    /// under a process that may still use them.
    fn release_sandbox(&self, pod: &DesiredPod) -> impl Future<Output = bool> + Send;

    /// The stdout/stderr target for a container whose log file is `path`.
    fn log_target(&self, path: &Path) -> String;

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

    /// `signal` (SIGTERM or the image's StopSignal), then SIGKILL to all
    /// its processes once `grace` has passed; returns when the task has
    /// exited or is gone, and whether SIGKILL was needed.
    fn stop_container(
        &self,
        id: &str,
        signal: i32,
        grace: Duration,
    ) -> impl Future<Output = bool> + Send;

    /// Deletes an exited task, keeping the container record.
    fn delete_task(&self, id: &str) -> impl Future<Output = Result<(), RuntimeError>> + Send;

    /// Removes a container's task, record and snapshot; idempotent.
    fn remove_container(&self, id: &str) -> impl Future<Output = Result<(), RuntimeError>> + Send;

    /// Removes every container labelled with this pod UID, app containers
    /// before the sandbox, then what the sandbox held (network, volumes,
    /// the pod's files, cgroup): for pods no worker knows. `true` once no
    /// container of the pod is left and what the sandbox held is released.
    fn remove_pod(&self, uid: &str) -> impl Future<Output = bool> + Send;

    /// Every container of the pod, with its task's state.
    fn pod_containers(
        &self,
        uid: &str,
    ) -> impl Future<Output = Result<Vec<ExistingContainer>, RuntimeError>> + Send;

    /// Every pod that has containers, once each.
    fn pods(&self) -> impl Future<Output = Result<Vec<LabelledPod>, RuntimeError>> + Send;

    /// The address a pod's hooks reach it at when no spec is left: the
    /// pod's network address, the node's for a pod without a network of
    /// its own; `None` if unknown.
    fn pod_ip(&self, uid: &str) -> Option<String>;

    fn task_state(&self, id: &str) -> impl Future<Output = Result<TaskState, RuntimeError>> + Send;

    /// Runs `command` in the running container `id` (probes and lifecycle
    /// hooks), killing it after `timeout`.
    fn exec(
        &self,
        id: &str,
        command: &[String],
        timeout: Duration,
    ) -> impl Future<Output = Result<ExecOutput, RuntimeError>> + Send;
}
