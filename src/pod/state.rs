//! The observed state of a pod's containers and the Kubernetes status
//! derived from it. Pure: no I/O, unit-tested against the kubelet's rules.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting,
    ContainerStatus, PodCondition, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use tokio::time::Instant;

use super::plan::Retry;

/// One container's life as the worker saw it.
#[derive(Debug, Clone, PartialEq)]
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
            started_at,
            finished_at,
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
    pub restart_count: i32,
    /// Runs started so far; the restart count is one less.
    pub runs: u32,
    /// Attempts to create this container so far; part of its containerd ID,
    /// so a retry never collides with the remains of a failed one.
    pub attempts: u32,
    /// Back-off of failed attempts to start it.
    pub retry: Retry,
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
            restart_count: 0,
            runs: 0,
            attempts: 0,
            retry: Retry::default(),
            pull_backoff_at: None,
            sidecar: false,
        }
    }

    pub fn is_running(&self) -> bool {
        matches!(self.state, RunState::Running { .. })
    }

    pub fn succeeded(&self) -> bool {
        matches!(self.state, RunState::Terminated { exit_code: 0, .. })
    }

    pub fn failed(&self) -> bool {
        matches!(self.state, RunState::Terminated { exit_code, .. } if exit_code != 0)
    }

    /// Done as an init step: a regular init container that succeeded, or
    /// a sidecar that runs.
    pub fn initialized(&self) -> bool {
        if self.sidecar {
            self.is_running()
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
    /// Kubernetes' pod phase (`getPhase` in kubelet_pods.go, without init
    /// containers).
    pub fn phase(&self) -> &'static str {
        if self.init_failed_for_good() {
            return "Failed";
        }
        if !self.initialized() {
            return "Pending";
        }
        let waiting = |c: &&ContainerRecord| matches!(c.state, RunState::Waiting { .. });
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

    /// The `v1.PodStatus` the API shows.
    pub fn to_status(&self) -> PodStatus {
        let statuses: Vec<ContainerStatus> = self.containers.iter().map(container_status).collect();
        let ready = statuses.iter().all(|s| s.ready);
        let unready: Vec<&str> = statuses
            .iter()
            .filter(|s| !s.ready)
            .map(|s| s.name.as_str())
            .collect();
        let condition =
            |type_: &str, ok: bool, reason: Option<&str>, message: Option<String>| PodCondition {
                type_: type_.into(),
                status: if ok { "True" } else { "False" }.into(),
                reason: (!ok).then(|| reason.map(String::from)).flatten(),
                message: (!ok).then_some(message).flatten(),
                last_transition_time: self.start_time.map(Time),
                ..Default::default()
            };
        let not_ready_message = format!("containers with unready status: [{}]", unready.join(" "));
        let incomplete: Vec<&str> = self
            .init_containers
            .iter()
            .filter(|c| !c.initialized())
            .map(|c| c.name.as_str())
            .collect();
        let init_message = format!(
            "containers with incomplete status: [{}]",
            incomplete.join(" ")
        );
        PodStatus {
            phase: Some(self.phase().into()),
            host_ip: self.host_ip.clone(),
            host_ips: self
                .host_ip
                .clone()
                .map(|ip| vec![k8s_openapi::api::core::v1::HostIP { ip }]),
            pod_ip: self.pod_ip.clone(),
            pod_ips: self
                .pod_ip
                .clone()
                .map(|ip| vec![k8s_openapi::api::core::v1::PodIP { ip }]),
            qos_class: self.qos.map(String::from),
            start_time: self.start_time.map(Time),
            conditions: Some(vec![
                condition(
                    "PodReadyToStartContainers",
                    self.sandbox_pid.is_some(),
                    None,
                    None,
                ),
                condition(
                    "Initialized",
                    incomplete.is_empty(),
                    Some("ContainersNotInitialized"),
                    Some(init_message),
                ),
                condition(
                    "Ready",
                    ready,
                    Some("ContainersNotReady"),
                    Some(not_ready_message.clone()),
                ),
                condition(
                    "ContainersReady",
                    ready,
                    Some("ContainersNotReady"),
                    Some(not_ready_message),
                ),
                condition("PodScheduled", true, None, None),
            ]),
            container_statuses: Some(statuses),
            init_container_statuses: (!self.init_containers.is_empty())
                .then(|| self.init_containers.iter().map(container_status).collect()),
            ..Default::default()
        }
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

fn container_status(c: &ContainerRecord) -> ContainerStatus {
    let time = |t: &Option<jiff::Timestamp>| t.map(Time);
    let state = match &c.state {
        RunState::Waiting { reason, message } => ContainerState {
            waiting: Some(ContainerStateWaiting {
                reason: Some(reason.clone()),
                message: (!message.is_empty()).then(|| message.clone()),
            }),
            ..Default::default()
        },
        RunState::Running { started_at } => ContainerState {
            running: Some(ContainerStateRunning {
                started_at: Some(Time(*started_at)),
            }),
            ..Default::default()
        },
        RunState::Terminated {
            exit_code,
            reason,
            started_at,
            finished_at,
        } => ContainerState {
            terminated: Some(ContainerStateTerminated {
                exit_code: *exit_code,
                reason: Some(reason.clone()),
                started_at: time(started_at),
                finished_at: time(finished_at),
                container_id: c
                    .container_id
                    .as_ref()
                    .map(|id| format!("containerd://{id}")),
                ..Default::default()
            }),
            ..Default::default()
        },
    };
    let running = matches!(c.state, RunState::Running { .. });
    ContainerStatus {
        name: c.name.clone(),
        image: c.image.clone(),
        image_id: c.image_id.clone(),
        container_id: c
            .container_id
            .as_ref()
            .map(|id| format!("containerd://{id}")),
        ready: running,
        started: Some(running),
        restart_count: c.restart_count,
        state: Some(state),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(policy: &str, states: Vec<RunState>) -> PodRecord {
        PodRecord {
            restart_policy: policy.into(),
            host_ip: None,
            pod_ip: None,
            qos: None,
            start_time: None,
            sandbox_pid: Some(1),
            sandbox_retry: Retry::default(),
            init_containers: Vec::new(),
            containers: states
                .into_iter()
                .enumerate()
                .map(|(i, state)| ContainerRecord {
                    container_id: Some(format!("id{i}")),
                    ..ContainerRecord::new(format!("c{i}"), "busybox".into(), state)
                })
                .collect(),
        }
    }

    fn running() -> RunState {
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
    fn status_reports_states_and_readiness() {
        let status = record("Always", vec![running(), RunState::creating()]).to_status();
        assert_eq!(status.phase.as_deref(), Some("Pending"));
        let containers = status.container_statuses.unwrap();
        assert!(containers[0].ready);
        assert!(containers[0].state.as_ref().unwrap().running.is_some());
        assert_eq!(
            containers[0].container_id.as_deref(),
            Some("containerd://id0")
        );
        assert!(!containers[1].ready);
        let waiting = containers[1]
            .state
            .as_ref()
            .unwrap()
            .waiting
            .as_ref()
            .unwrap();
        assert_eq!(waiting.reason.as_deref(), Some("ContainerCreating"));
        let conditions = status.conditions.unwrap();
        let ready = conditions.iter().find(|c| c.type_ == "Ready").unwrap();
        assert_eq!(ready.status, "False");
        assert_eq!(
            ready.message.as_deref(),
            Some("containers with unready status: [c1]")
        );
        let types: Vec<_> = conditions.iter().map(|c| c.type_.as_str()).collect();
        assert_eq!(
            types,
            [
                "PodReadyToStartContainers",
                "Initialized",
                "Ready",
                "ContainersReady",
                "PodScheduled"
            ]
        );
    }

    #[test]
    fn ids_map_to_names() {
        let r = record("Always", vec![running(), running()]);
        assert_eq!(r.ids().get("id1").map(String::as_str), Some("c1"));
    }
}
