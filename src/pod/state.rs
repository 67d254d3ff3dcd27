//! The observed state of a pod's containers and its transitions. Pure: no
//! I/O, unit-tested against the kubelet's rules; the Kubernetes status
//! derived from it is in [`super::pod_status`].

use std::collections::BTreeMap;

use tokio::time::Instant;

use super::plan::{CrashBackoff, Retry};
use super::probe::ContainerHealth;

/// One container's life as the worker saw it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum RunState {
    Waiting {
        reason: String,
        message: String,
    },
    Running {
        started_at: jiff::Timestamp,
    },
    Terminated {
        exit_code: i32,
        reason: String,
        /// Why it could not start (`StartError`); empty otherwise.
        message: String,
        started_at: Option<jiff::Timestamp>,
        finished_at: Option<jiff::Timestamp>,
    },
}

impl RunState {
    /// The waiting state before anything was tried.
    pub fn creating() -> RunState {
        RunState::Waiting {
            reason: "ContainerCreating".into(),
            message: String::new(),
        }
    }

    /// The terminated state for an exit status, with containerd CRI's
    /// reasons: `Completed` for 0, `OOMKilled` when the OOM killer struck,
    /// `Error` otherwise.
    pub fn exited(
        exit_status: u32,
        oom_killed: bool,
        started_at: Option<jiff::Timestamp>,
        finished_at: Option<jiff::Timestamp>,
    ) -> RunState {
        let reason = if oom_killed {
            "OOMKilled"
        } else if exit_status == 0 {
            "Completed"
        } else {
            "Error"
        };
        RunState::Terminated {
            exit_code: exit_status as i32,
            reason: reason.into(),
            message: String::new(),
            started_at,
            finished_at,
        }
    }

    /// A run whose task could not be created or started: containerd CRI's
    /// `StartError` with exit code 128.
    pub fn start_error(message: String) -> RunState {
        let now = jiff::Timestamp::now();
        RunState::Terminated {
            exit_code: 128,
            reason: "StartError".into(),
            message,
            started_at: Some(now),
            finished_at: Some(now),
        }
    }

    fn exit_code(&self) -> Option<i32> {
        match self {
            RunState::Terminated { exit_code, .. } => Some(*exit_code),
            _ => None,
        }
    }
}

/// What the worker knows of one of the pod's containers.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerRecord {
    pub name: String,
    pub image: String,
    pub image_id: String,
    /// containerd ID of the current run, once created.
    pub container_id: Option<String>,
    pub state: RunState,
    /// The previous run's end (`lastState`), once there was a restart or a
    /// crash back-off, and that run's containerd ID.
    pub last_state: Option<RunState>,
    pub last_container_id: Option<String>,
    pub restart_count: i32,
    /// Runs started so far; the restart count is one less.
    pub runs: u32,
    /// Attempts to create this container so far; part of its containerd ID,
    /// so a retry never collides with the remains of a failed one.
    pub attempts: u32,
    /// Back-off of failed attempts to start it.
    pub retry: Retry,
    /// When the last run ended, while a restart is yet to happen.
    pub finished: Option<Instant>,
    /// Back-off between restarts after exits.
    pub crash: CrashBackoff,
    /// The signal that asks the current run to stop: the image's
    /// StopSignal, SIGTERM by default.
    pub stop_signal: i32,
    /// The current run's `started` and `ready`, as its probes say.
    pub health: ContainerHealth,
    /// When a shown `ErrImagePull` turns into `ImagePullBackOff`.
    pub pull_backoff_at: Option<Instant>,
    /// An init container with `restartPolicy: Always`: a native sidecar,
    /// started before the next init container and kept running.
    pub sidecar: bool,
}

impl ContainerRecord {
    pub fn new(name: String, image: String, state: RunState) -> ContainerRecord {
        ContainerRecord {
            name,
            image,
            image_id: String::new(),
            container_id: None,
            state,
            last_state: None,
            last_container_id: None,
            restart_count: 0,
            runs: 0,
            attempts: 0,
            retry: Retry::default(),
            finished: None,
            crash: CrashBackoff::default(),
            stop_signal: libc::SIGTERM,
            health: ContainerHealth::default(),
            pull_backoff_at: None,
            sidecar: false,
        }
    }

    pub fn is_running(&self) -> bool {
        matches!(self.state, RunState::Running { .. })
    }

    /// `started` in status: running, and past its startup probe if any.
    pub fn is_started(&self) -> bool {
        self.is_running() && self.health.started
    }

    /// `ready` in status: started, and passing its readiness probe if any.
    pub fn is_ready(&self) -> bool {
        self.is_running() && self.health.ready
    }

    /// The exit code of the run that ended last: the current state's, or,
    /// while waiting to restart, the previous run's.
    fn last_exit_code(&self) -> Option<i32> {
        self.state.exit_code().or_else(|| match self.state {
            RunState::Waiting { .. } => self.last_state.as_ref()?.exit_code(),
            _ => None,
        })
    }

    pub fn succeeded(&self) -> bool {
        self.last_exit_code() == Some(0)
    }

    pub fn failed(&self) -> bool {
        self.last_exit_code().is_some_and(|code| code != 0)
    }

    /// Stopped for now: terminated, or waiting to restart after a run.
    pub fn stopped(&self) -> bool {
        self.last_exit_code().is_some()
    }

    /// Whether an exited run is followed by another (the kubelet's
    /// `ShouldContainerBeRestarted`); a sidecar always restarts.
    pub fn should_restart(&self, policy: &str) -> bool {
        if self.sidecar {
            return true;
        }
        match policy {
            "Never" => false,
            "OnFailure" => self.failed(),
            _ => true,
        }
    }

    pub fn in_crash_backoff(&self) -> bool {
        matches!(&self.state, RunState::Waiting { reason, .. } if reason == "CrashLoopBackOff")
    }

    /// An attempt at a new run begins: after an exit, the crash back-off
    /// grows and the run that ended becomes `lastState`.
    /// Returns the container of the run before, which is no longer needed.
    #[must_use]
    pub fn begin_attempt(&mut self) -> Option<String> {
        if let Some(finished) = self.finished.take() {
            self.crash.restarting(finished);
        }
        self.keep_as_last_state()
    }

    /// A run started; the restart count counts the runs before it.
    pub fn started(&mut self, id: String, image_id: String, at: jiff::Timestamp) {
        self.restart_count = self.runs as i32;
        self.runs += 1;
        self.container_id = Some(id);
        self.image_id = image_id;
        self.state = RunState::Running { started_at: at };
        self.retry = Retry::default();
        self.pull_backoff_at = None;
    }

    /// The container was made but its task would not start: a run that
    /// ended at once, restarted (or not) like any other exit.
    pub fn failed_to_start(&mut self, id: String, message: String, now: Instant) {
        self.restart_count = self.runs as i32;
        self.runs += 1;
        self.container_id = Some(id);
        self.retry = Retry::default();
        self.ended(RunState::start_error(message), now);
    }

    /// The run that ended becomes `lastState`; returns the container ID of
    /// the run it replaces there, if that was another.
    #[must_use]
    pub fn keep_as_last_state(&mut self) -> Option<String> {
        if let RunState::Terminated { .. } = self.state {
            self.last_state = Some(self.state.clone());
            let replaced =
                std::mem::replace(&mut self.last_container_id, self.container_id.clone());
            return replaced.filter(|id| Some(id) != self.last_container_id.as_ref());
        }
        None
    }

    /// The current run's container vanished unseen (the kubelet's
    /// `ContainerStatusUnknown`, exit code 137).
    pub fn lost(&mut self, now: Instant) {
        let started_at = match self.state {
            RunState::Running { started_at } => Some(started_at),
            _ => None,
        };
        let state = RunState::Terminated {
            exit_code: 137,
            reason: "ContainerStatusUnknown".into(),
            message: "The container could not be located when the pod was terminated".into(),
            started_at,
            finished_at: Some(jiff::Timestamp::now()),
        };
        self.ended(state, now);
    }

    /// A run found already running by an agent that restarted before it
    /// could note it.
    pub fn adopted_run(
        &mut self,
        id: String,
        restart_count: Option<u32>,
        started_at: Option<jiff::Timestamp>,
    ) {
        // The replaced run's container is not kept by adoption anyway.
        let _ = self.begin_attempt();
        self.started(
            id,
            self.image_id.clone(),
            started_at.unwrap_or_else(jiff::Timestamp::now),
        );
        if let Some(n) = restart_count {
            self.restart_count = n as i32;
            self.runs = n + 1;
        }
    }

    /// The current run ended at `now` (by the clock of back-offs).
    pub fn ended(&mut self, state: RunState, now: Instant) {
        self.state = state;
        self.finished = Some(now);
    }

    /// Waiting out the crash back-off: the kubelet shows `CrashLoopBackOff`
    /// with the previous run as `lastState`.
    /// Returns the container no longer needed, as [`Self::begin_attempt`].
    #[must_use]
    pub fn wait_crash_backoff(&mut self, pod: &str) -> Option<String> {
        let delay = self.crash.delay();
        let replaced = self.keep_as_last_state();
        self.state = RunState::Waiting {
            reason: "CrashLoopBackOff".into(),
            message: format!(
                "back-off {} restarting failed container={} pod={pod}",
                go_duration(delay),
                self.name
            ),
        };
        replaced
    }

    /// Done as an init step: a regular init container that succeeded, or
    /// a sidecar that runs.
    pub fn initialized(&self) -> bool {
        if self.sidecar {
            self.is_started()
        } else {
            self.succeeded()
        }
    }
}

/// Everything the worker knows about its pod, from which status is derived.
#[derive(Debug, Clone, PartialEq)]
pub struct PodRecord {
    pub restart_policy: String,
    pub host_ip: Option<String>,
    pub pod_ip: Option<String>,
    /// `status.qosClass`, once computed.
    pub qos: Option<&'static str>,
    pub start_time: Option<jiff::Timestamp>,
    /// PID of the running sandbox's pause process.
    pub sandbox_pid: Option<u32>,
    /// Back-off of failed attempts to create the sandbox.
    pub sandbox_retry: Retry,
    /// Init containers in order, run one at a time before `containers`.
    pub init_containers: Vec<ContainerRecord>,
    pub containers: Vec<ContainerRecord>,
}

impl PodRecord {
    /// A pod not started yet.
    pub fn new(
        restart_policy: String,
        init_containers: Vec<ContainerRecord>,
        containers: Vec<ContainerRecord>,
    ) -> PodRecord {
        PodRecord {
            restart_policy,
            host_ip: None,
            pod_ip: None,
            qos: None,
            start_time: None,
            sandbox_pid: None,
            sandbox_retry: Retry::default(),
            init_containers,
            containers,
        }
    }

    /// Kubernetes' pod phase (`getPhase` in kubelet_pods.go, without init
    /// containers).
    pub fn phase(&self) -> &'static str {
        if self.init_failed_for_good() {
            return "Failed";
        }
        if !self.initialized() {
            return "Pending";
        }
        // A container waiting to restart counts as stopped, as in getPhase.
        let waiting =
            |c: &&ContainerRecord| matches!(c.state, RunState::Waiting { .. }) && !c.stopped();
        if self.containers.is_empty() || self.containers.iter().any(|c| waiting(&c)) {
            return "Pending";
        }
        if self.containers.iter().any(ContainerRecord::is_running) {
            return "Running";
        }
        // Every container has terminated.
        let any_failed = self.containers.iter().any(ContainerRecord::failed);
        match (self.restart_policy.as_str(), any_failed) {
            ("Never", true) => "Failed",
            ("Never", false) | ("OnFailure", false) => "Succeeded",
            _ => "Running",
        }
    }

    /// Every init step is done (vacuously true without init containers).
    pub fn initialized(&self) -> bool {
        self.init_containers
            .iter()
            .all(ContainerRecord::initialized)
    }

    /// A regular init container failed and `restartPolicy: Never` forbids a
    /// retry: the pod has failed.
    pub fn init_failed_for_good(&self) -> bool {
        self.restart_policy == "Never"
            && self
                .init_containers
                .iter()
                .any(|c| !c.sidecar && c.failed())
    }

    /// The sandbox is gone, and with it every container: running ones
    /// count as killed, and init containers run again in the new sandbox,
    /// as the kubelet does after `SandboxChanged`.
    pub fn sandbox_lost(&mut self, now: Instant) {
        self.sandbox_pid = None;
        for c in self
            .init_containers
            .iter_mut()
            .chain(self.containers.iter_mut())
        {
            if let RunState::Running { started_at } = c.state {
                let killed =
                    RunState::exited(137, false, Some(started_at), Some(jiff::Timestamp::now()));
                c.ended(killed, now);
            }
        }
        for c in self.init_containers.iter_mut().filter(|c| !c.sidecar) {
            // The sandbox's removal took every container with it.
            let _ = c.keep_as_last_state();
            c.finished = None;
            c.state = RunState::Waiting {
                reason: "PodInitializing".into(),
                message: String::new(),
            };
        }
    }

    /// Every container, init containers first.
    pub fn all(&self) -> impl Iterator<Item = &ContainerRecord> {
        self.init_containers.iter().chain(&self.containers)
    }

    /// Containers whose current run is running.
    pub fn running(&self) -> impl Iterator<Item = &ContainerRecord> {
        self.all().filter(|c| c.is_running())
    }

    /// An init or app container by name (names are unique across both).
    pub fn container_mut(&mut self, name: &str) -> Option<&mut ContainerRecord> {
        self.init_containers
            .iter_mut()
            .chain(self.containers.iter_mut())
            .find(|c| c.name == name)
    }

    /// Names of containers by their current containerd ID.
    pub fn ids(&self) -> BTreeMap<String, String> {
        self.init_containers
            .iter()
            .chain(&self.containers)
            .filter_map(|c| Some((c.container_id.clone()?, c.name.clone())))
            .collect()
    }
}

/// A whole-second duration the way Go prints it (`40s`, `1m20s`, `5m0s`),
/// as the kubelet's back-off messages show it.
pub fn go_duration(d: std::time::Duration) -> String {
    let secs = d.as_secs();
    match (secs / 3600, secs % 3600 / 60, secs % 60) {
        (0, 0, s) => format!("{s}s"),
        (0, m, s) => format!("{m}m{s}s"),
        (h, m, s) => format!("{h}h{m}m{s}s"),
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// A pod whose containers `c0`, `c1`, … are in `states`, with IDs.
    pub(crate) fn record(policy: &str, states: Vec<RunState>) -> PodRecord {
        let containers = states
            .into_iter()
            .enumerate()
            .map(|(i, state)| ContainerRecord {
                container_id: Some(format!("id{i}")),
                ..ContainerRecord::new(format!("c{i}"), "busybox".into(), state)
            })
            .collect();
        PodRecord {
            sandbox_pid: Some(1),
            ..PodRecord::new(policy.into(), Vec::new(), containers)
        }
    }

    pub(crate) fn running() -> RunState {
        RunState::Running {
            started_at: jiff::Timestamp::UNIX_EPOCH,
        }
    }

    fn exited(code: u32) -> RunState {
        RunState::exited(code, false, None, None)
    }

    #[test]
    fn phase_follows_the_kubelet() {
        assert_eq!(
            record("Always", vec![RunState::creating(), running()]).phase(),
            "Pending"
        );
        assert_eq!(
            record("Always", vec![running(), exited(1)]).phase(),
            "Running"
        );
        assert_eq!(record("Always", vec![exited(0)]).phase(), "Running");
        assert_eq!(
            record("Never", vec![exited(0), exited(0)]).phase(),
            "Succeeded"
        );
        assert_eq!(
            record("Never", vec![exited(0), exited(2)]).phase(),
            "Failed"
        );
        assert_eq!(record("OnFailure", vec![exited(0)]).phase(), "Succeeded");
        assert_eq!(record("OnFailure", vec![exited(1)]).phase(), "Running");
        assert_eq!(record("Always", vec![]).phase(), "Pending");
    }

    #[test]
    fn exit_reasons_match_containerd_cri() {
        let reason = |s: RunState| match s {
            RunState::Terminated { reason, .. } => reason,
            _ => unreachable!(),
        };
        assert_eq!(reason(RunState::exited(0, false, None, None)), "Completed");
        assert_eq!(reason(RunState::exited(1, false, None, None)), "Error");
        assert_eq!(reason(RunState::exited(137, true, None, None)), "OOMKilled");
    }

    #[test]
    fn ids_map_to_names() {
        let r = record("Always", vec![running(), running()]);
        assert_eq!(r.ids().get("id1").map(String::as_str), Some("c1"));
    }
}
