//! Pods as the API shows them: the desired object with its latest status.

use k8s_openapi::api::core::v1::{Pod, PodStatus};

use super::ApiState;
use crate::desired::DesiredPod;
use crate::proto;

/// Every desired pod with its status, sorted by namespace and name.
pub fn list(state: &ApiState) -> Vec<(std::sync::Arc<DesiredPod>, Pod)> {
    let snapshot = state.desired.snapshot();
    let mut pods: Vec<_> = snapshot
        .pods
        .values()
        .map(|desired| {
            let status = state.status.get(desired.uid());
            (desired.clone(), with_status(desired, status.as_deref()))
        })
        .collect();
    pods.sort_by(|(a, _), (b, _)| (a.namespace(), a.name()).cmp(&(b.namespace(), b.name())));
    pods
}

/// The pod object of `desired` with `status`; a pod no worker has
/// reported on yet is `Pending`.
pub fn with_status(desired: &DesiredPod, status: Option<&PodStatus>) -> Pod {
    let mut pod = desired.pod.clone();
    pod.status = Some(match status {
        Some(status) => status.clone(),
        None => PodStatus {
            phase: Some("Pending".into()),
            ..Default::default()
        },
    });
    pod
}

/// Finds a pod by namespace and name; the short name without the
/// `-<node>` suffix is accepted too.
pub fn find(
    state: &ApiState,
    namespace: &str,
    name: &str,
) -> Option<(std::sync::Arc<DesiredPod>, Pod)> {
    find_in(list(state), |(d, _)| d, namespace, name)
}

/// [`find`] among `items`, each holding the desired pod `desired_of`
/// gives (for callers that keep pods in their own form).
pub fn find_in<T>(
    items: Vec<T>,
    desired_of: impl Fn(&T) -> &DesiredPod,
    namespace: &str,
    name: &str,
) -> Option<T> {
    let namespace = if namespace.is_empty() {
        "default"
    } else {
        namespace
    };
    let node = |p: &DesiredPod| {
        p.pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_default()
    };
    let exact = items.iter().position(|item| {
        let d = desired_of(item);
        d.namespace() == namespace && d.name() == name
    });
    let short = || {
        items.iter().position(|item| {
            let d = desired_of(item);
            d.namespace() == namespace && d.name() == format!("{name}-{}", node(d))
        })
    };
    let index = exact.or_else(short)?;
    items.into_iter().nth(index)
}

/// The gRPC summary of a pod.
pub fn summary(
    desired: &DesiredPod,
    pod: &Pod,
    pod_log_root: &std::path::Path,
) -> proto::PodSummary {
    let status = pod.status.clone().unwrap_or_default();
    let log_dir = crate::pod::worker::pod_log_dir(pod_log_root, desired)
        .map(|dir| dir.path())
        .unwrap_or_default();
    let specs = pod
        .spec
        .as_ref()
        .map(|s| s.containers.clone())
        .unwrap_or_default();
    let statuses = status.container_statuses.clone().unwrap_or_default();
    let containers = specs
        .iter()
        .map(|c| {
            let s = statuses.iter().find(|s| s.name == c.name);
            let state = s.and_then(|s| s.state.clone()).unwrap_or_default();
            let (state_name, reason, exit_code) = if state.running.is_some() {
                ("Running", String::new(), 0)
            } else if let Some(t) = &state.terminated {
                (
                    "Terminated",
                    t.reason.clone().unwrap_or_default(),
                    t.exit_code,
                )
            } else {
                let reason = state
                    .waiting
                    .and_then(|w| w.reason)
                    .unwrap_or_else(|| "ContainerCreating".into());
                ("Waiting", reason, 0)
            };
            let restart_count = s.map(|s| s.restart_count).unwrap_or(0);
            proto::ContainerSummary {
                name: c.name.clone(),
                image: c.image.clone().unwrap_or_default(),
                state: state_name.into(),
                reason,
                exit_code,
                restart_count,
                ready: s.is_some_and(|s| s.ready),
                container_id: s.and_then(|s| s.container_id.clone()).unwrap_or_default(),
                log_path: log_dir
                    .join(&c.name)
                    .join(format!("{restart_count}.log"))
                    .display()
                    .to_string(),
            }
        })
        .collect();
    proto::PodSummary {
        namespace: desired.namespace().into(),
        name: desired.name().into(),
        uid: desired.uid().into(),
        phase: status.phase.clone().unwrap_or_default(),
        pod_ip: status.pod_ip.clone().unwrap_or_default(),
        manifest_path: desired.source.display().to_string(),
        containers,
        start_time: status
            .start_time
            .as_ref()
            .map(|t| t.0.to_string())
            .unwrap_or_default(),
        pod_json: serde_json::to_string(pod).unwrap_or_default(),
        created: pod
            .metadata
            .creation_timestamp
            .as_ref()
            .map(|t| t.0.to_string())
            .unwrap_or_default(),
    }
}
