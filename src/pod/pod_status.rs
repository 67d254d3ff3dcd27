//! The Kubernetes `PodStatus` derived from a pod's record: phase (see
//! [`PodRecord::phase`]), conditions in the kubelet's order and container
//! statuses. Pure, like the record it reads.

use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting,
    ContainerStatus, PodCondition, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::state::{ContainerRecord, PodRecord, RunState};

impl PodRecord {
    /// The `v1.PodStatus` the API shows.
    pub fn to_status(&self) -> PodStatus {
        let statuses: Vec<ContainerStatus> = self.containers.iter().map(container_status).collect();
        // Sidecars count for readiness, as in the kubelet's generate.go.
        let unready: Vec<&str> = self
            .init_containers
            .iter()
            .filter(|c| c.sidecar)
            .chain(&self.containers)
            .filter(|c| !c.is_ready())
            .map(|c| c.name.as_str())
            .collect();
        let ready = unready.is_empty();
        let phase = self.phase();
        let condition =
            |type_: &str, ok: bool, reason: Option<&str>, message: Option<String>| PodCondition {
                type_: type_.into(),
                status: if ok { "True" } else { "False" }.into(),
                reason: (!ok).then(|| reason.map(String::from)).flatten(),
                message: (!ok).then_some(message).flatten(),
                last_transition_time: self.start_time.map(Time),
                ..Default::default()
            };
        // A pod that completed is not ready, for that reason.
        let (not_ready_reason, not_ready_message) = if phase == "Succeeded" {
            ("PodCompleted", None)
        } else {
            (
                "ContainersNotReady",
                Some(format!(
                    "containers with unready status: [{}]",
                    unready.join(" ")
                )),
            )
        };
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
            phase: Some(phase.into()),
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
                    Some(not_ready_reason),
                    not_ready_message.clone(),
                ),
                condition(
                    "ContainersReady",
                    ready,
                    Some(not_ready_reason),
                    not_ready_message,
                ),
                condition("PodScheduled", true, None, None),
            ]),
            container_statuses: Some(statuses),
            init_container_statuses: (!self.init_containers.is_empty())
                .then(|| self.init_containers.iter().map(container_status).collect()),
            ..Default::default()
        }
    }
}

fn container_status(c: &ContainerRecord) -> ContainerStatus {
    ContainerStatus {
        name: c.name.clone(),
        image: c.image.clone(),
        image_id: c.image_id.clone(),
        container_id: c.container_id.as_deref().map(cri_id),
        ready: c.is_ready(),
        started: Some(c.is_started()),
        restart_count: c.restart_count,
        state: Some(api_state(&c.state, c.container_id.as_deref())),
        last_state: c
            .last_state
            .as_ref()
            .map(|last| api_state(last, c.last_container_id.as_deref())),
        ..Default::default()
    }
}

/// `containerd://<id>`, as the kubelet names containers in status.
fn cri_id(id: &str) -> String {
    format!("containerd://{id}")
}

fn api_state(state: &RunState, container_id: Option<&str>) -> ContainerState {
    let time = |t: &Option<jiff::Timestamp>| t.map(Time);
    match state {
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
            message,
            started_at,
            finished_at,
        } => ContainerState {
            terminated: Some(ContainerStateTerminated {
                exit_code: *exit_code,
                // The runc shim reports a death by signal N as 128 + N.
                signal: (129..=128 + 64)
                    .contains(exit_code)
                    .then_some(exit_code - 128),
                reason: Some(reason.clone()),
                message: (!message.is_empty()).then(|| message.clone()),
                started_at: time(started_at),
                finished_at: time(finished_at),
                container_id: container_id.map(cri_id),
            }),
            ..Default::default()
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pod::state::tests::{record, running};

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
}
