//! `meta.k8s.io/v1` Tables of pods and events, with the cells kubectl's
//! own printers compute (`pkg/printers/internalversion/printers.go`), so
//! `kubectl get` shows exactly what it shows against an API server. Pure:
//! the time is an argument.

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{ContainerState, ContainerStatus, Event, Pod, PodSpec, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde_json::{json, Value};

/// One row of a Table: the cells, kubectl's row conditions (for
/// finished pods), and the object's JSON text.
pub struct Row {
    pub cells: Vec<Value>,
    conditions: Option<Value>,
    object: String,
}

/// A Table of `rows` with `columns` (name, priority: 1 is `-o wide` only),
/// as JSON text: the objects are spliced in as they were serialized.
pub fn table(columns: &[(&str, u8)], rows: &[Row], resource_version: &str) -> String {
    let columns: Vec<Value> = columns
        .iter()
        .map(|(name, priority)| {
            let format = if *name == "Name" { "name" } else { "" };
            json!({"name": name, "type": "string", "format": format, "description": "", "priority": priority})
        })
        .collect();
    let head = json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": resource_version},
        "columnDefinitions": columns,
    })
    .to_string();
    let mut out = String::with_capacity(
        head.len() + rows.iter().map(|r| r.object.len() + 256).sum::<usize>(),
    );
    // The head without its closing brace, then the rows.
    out.push_str(head.strip_suffix('}').unwrap_or(&head));
    out.push_str(",\"rows\":[");
    for (i, row) in rows.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str("{\"cells\":");
        out.push_str(&serde_json::to_string(&row.cells).unwrap_or_else(|_| "[]".into()));
        if let Some(conditions) = &row.conditions {
            out.push_str(",\"conditions\":");
            out.push_str(&conditions.to_string());
        }
        out.push_str(",\"object\":");
        out.push_str(&row.object);
        out.push('}');
    }
    out.push_str("]}");
    out
}

pub const POD_COLUMNS: &[(&str, u8)] = &[
    ("Name", 0),
    ("Ready", 0),
    ("Status", 0),
    ("Restarts", 0),
    ("Age", 0),
    ("IP", 1),
    ("Node", 1),
    ("Nominated Node", 1),
    ("Readiness Gates", 1),
];

pub const EVENT_COLUMNS: &[(&str, u8)] = &[
    ("Last Seen", 0),
    ("Type", 0),
    ("Reason", 0),
    ("Object", 0),
    ("Subobject", 1),
    ("Source", 1),
    ("Message", 0),
    ("First Seen", 1),
    ("Count", 1),
    ("Name", 1),
];

/// One pod's row: NAME READY STATUS RESTARTS AGE, then IP NODE
/// NOMINATED NODE READINESS GATES. kubectl reads the namespace (for `-A`)
/// and labels (for `-L`) from `object`, the pod's JSON.
pub fn pod_row(pod: &Pod, object: String, now: Timestamp) -> Row {
    // Borrowed, not cloned: this runs for every pod of every list.
    let default_spec = PodSpec::default();
    let default_status = PodStatus::default();
    let spec = pod.spec.as_ref().unwrap_or(&default_spec);
    let status = pod.status.as_ref().unwrap_or(&default_status);
    let phase = status.phase.clone().unwrap_or_default();
    let mut reason = status.reason.clone().unwrap_or_else(|| phase.clone());
    let init_specs = spec.init_containers.as_deref().unwrap_or_default();
    let restartable = |name: &str| {
        init_specs
            .iter()
            .any(|c| c.name == name && c.restart_policy.as_deref() == Some("Always"))
    };
    let total = spec.containers.len() + init_specs.iter().filter(|c| restartable(&c.name)).count();
    let mut ready = 0;
    let mut restarts = 0;
    let mut last_restart: Option<Timestamp> = None;
    let mut sidecar_restarts = 0;
    let mut sidecar_last_restart: Option<Timestamp> = None;
    let mut initializing = false;
    let default_state = ContainerState::default();
    let init_statuses = status
        .init_container_statuses
        .as_deref()
        .unwrap_or_default();
    for (i, container) in init_statuses.iter().enumerate() {
        let state = container.state.as_ref().unwrap_or(&default_state);
        restarts += container.restart_count;
        let finished = last_finished(container);
        last_restart = last_restart.max(finished);
        let sidecar = restartable(&container.name);
        if sidecar {
            sidecar_restarts += container.restart_count;
            sidecar_last_restart = sidecar_last_restart.max(finished);
        }
        let waiting_reason = state
            .waiting
            .as_ref()
            .and_then(|w| w.reason.clone())
            .unwrap_or_default();
        match &state.terminated {
            Some(t) if t.exit_code == 0 => continue,
            _ if sidecar && container.started == Some(true) => {
                if container.ready {
                    ready += 1;
                }
                continue;
            }
            Some(t) => {
                reason = match t.reason.as_deref() {
                    Some(r) if !r.is_empty() => format!("Init:{r}"),
                    _ => match t.signal {
                        Some(signal) if signal != 0 => format!("Init:Signal:{signal}"),
                        _ => format!("Init:ExitCode:{}", t.exit_code),
                    },
                }
            }
            None if !waiting_reason.is_empty() && waiting_reason != "PodInitializing" => {
                reason = format!("Init:{waiting_reason}");
            }
            None => reason = format!("Init:{i}/{}", init_specs.len()),
        }
        initializing = true;
        break;
    }
    let conditions = status.conditions.as_deref().unwrap_or_default();
    let condition_true = |kind: &str| {
        conditions
            .iter()
            .any(|c| c.type_ == kind && c.status == "True")
    };
    if !initializing || condition_true("Initialized") {
        restarts = sidecar_restarts;
        last_restart = sidecar_last_restart;
        let mut has_running = false;
        for container in status.container_statuses.iter().flatten().rev() {
            let state = container.state.as_ref().unwrap_or(&default_state);
            restarts += container.restart_count;
            last_restart = last_restart.max(last_finished(container));
            let waiting = state
                .waiting
                .as_ref()
                .and_then(|w| w.reason.clone())
                .filter(|r| !r.is_empty());
            if let Some(waiting) = waiting {
                reason = waiting;
            } else if let Some(t) = &state.terminated {
                reason = match t.reason.as_deref() {
                    Some(r) if !r.is_empty() => r.to_string(),
                    _ => match t.signal {
                        Some(signal) if signal != 0 => format!("Signal:{signal}"),
                        _ => format!("ExitCode:{}", t.exit_code),
                    },
                };
            } else if container.ready && state.running.is_some() {
                has_running = true;
                ready += 1;
            }
        }
        if reason == "Completed" && has_running {
            reason = if condition_true("Ready") {
                "Running"
            } else {
                "NotReady"
            }
            .to_string();
        }
    }
    if pod.metadata.deletion_timestamp.is_some() {
        if status.reason.as_deref() == Some("NodeLost") {
            reason = "Unknown".into();
        } else if phase != "Succeeded" && phase != "Failed" {
            reason = "Terminating".into();
        }
    }
    let restarts = match last_restart {
        Some(at) if restarts != 0 => format!("{restarts} ({} ago)", human_duration(now, at)),
        _ => restarts.to_string(),
    };
    let or_none = |s: Option<String>| {
        s.filter(|s| !s.is_empty())
            .unwrap_or_else(|| "<none>".into())
    };
    let ip = or_none(
        status
            .pod_ips
            .as_ref()
            .and_then(|ips| ips.first())
            .map(|ip| ip.ip.clone()),
    );
    let gates = match spec.readiness_gates.as_deref() {
        None | Some([]) => "<none>".to_string(),
        Some(gates) => {
            let passed = gates
                .iter()
                .filter(|g| condition_true(&g.condition_type))
                .count();
            format!("{passed}/{}", gates.len())
        }
    };
    let cells = vec![
        json!(pod.metadata.name.clone().unwrap_or_default()),
        json!(format!("{ready}/{total}")),
        json!(reason),
        json!(restarts),
        json!(since(now, pod.metadata.creation_timestamp.as_ref())),
        json!(ip),
        json!(or_none(spec.node_name.clone())),
        json!(or_none(status.nominated_node_name.clone())),
        json!(gates),
    ];
    let conditions = match phase.as_str() {
        "Succeeded" => Some(("Completed", "The pod has completed successfully.")),
        "Failed" => Some(("Error", "The pod failed.")),
        _ => None,
    };
    Row {
        cells,
        conditions: conditions.map(|(reason, message)| {
            json!([{"type": "Completed", "status": "True", "reason": reason, "message": message}])
        }),
        object,
    }
}

fn last_finished(container: &ContainerStatus) -> Option<Timestamp> {
    container
        .last_state
        .as_ref()
        .and_then(|s| s.terminated.as_ref())
        .and_then(|t| t.finished_at.as_ref())
        .map(|t| t.0)
}

/// One event's row, with every column (kubectl hides the wide ones).
pub fn event_row(event: &Event, object: String, now: Timestamp) -> Row {
    let first = match &event.first_timestamp {
        Some(t) => since(now, Some(t)),
        None => event
            .event_time
            .as_ref()
            .map_or_else(|| "<unknown>".into(), |t| human_duration(now, t.0)),
    };
    let mut last = match &event.last_timestamp {
        Some(t) => since(now, Some(t)),
        None => first.clone(),
    };
    let count = event.count.unwrap_or(1);
    if count > 1 {
        last = format!("{last} (x{count} over {first})");
    }
    let involved = &event.involved_object;
    let kind = involved.kind.clone().unwrap_or_default().to_lowercase();
    let target = match involved.name.as_deref() {
        Some(name) if !name.is_empty() => format!("{kind}/{name}"),
        _ => kind,
    };
    let source = event.source.clone().unwrap_or_default();
    let component = source
        .component
        .filter(|c| !c.is_empty())
        .or_else(|| event.reporting_component.clone())
        .unwrap_or_default();
    let source = match source.host.filter(|h| !h.is_empty()) {
        Some(host) => format!("{component}, {host}"),
        None => component,
    };
    let cells = vec![
        json!(last),
        json!(event.type_.clone().unwrap_or_default()),
        json!(event.reason.clone().unwrap_or_default()),
        json!(target),
        json!(involved.field_path.clone().unwrap_or_default()),
        json!(source),
        json!(event.message.clone().unwrap_or_default().trim()),
        json!(first),
        json!(count),
        json!(event.metadata.name.clone().unwrap_or_default()),
    ];
    Row {
        cells,
        conditions: None,
        object,
    }
}

/// kubectl's `translateTimestampSince`.
fn since(now: Timestamp, at: Option<&Time>) -> String {
    at.map_or_else(|| "<unknown>".into(), |t| human_duration(now, t.0))
}

/// kubectl's `duration.HumanDuration` of `now - at`.
fn human_duration(now: Timestamp, at: Timestamp) -> String {
    crate::api::describe::human_duration(now.duration_since(at))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(value: Value) -> Pod {
        serde_json::from_value(value).expect("a pod")
    }

    fn cells(pod: &Pod, now: Timestamp) -> Vec<String> {
        pod_row(pod, "{}".into(), now)
            .cells
            .iter()
            .map(|c| c.as_str().map_or_else(|| c.to_string(), String::from))
            .collect()
    }

    const NOW: &str = "2024-01-01T01:00:00Z";

    fn now() -> Timestamp {
        NOW.parse().expect("time")
    }

    #[test]
    fn running_crashing_and_initializing_pods_print_like_kubectl() {
        let running = pod(json!({
            "metadata": {"name": "web-node1", "creationTimestamp": "2024-01-01T00:00:00Z"},
            "spec": {"nodeName": "node1", "containers": [{"name": "a"}, {"name": "b"}]},
            "status": {"phase": "Running", "podIPs": [{"ip": "10.0.0.5"}],
                "conditions": [{"type": "Ready", "status": "False"}],
                "containerStatuses": [
                    {"name": "a", "ready": true, "restartCount": 0, "image": "", "imageID": "", "state": {"running": {}}},
                    {"name": "b", "ready": false, "restartCount": 3, "image": "", "imageID": "",
                     "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                     "lastState": {"terminated": {"exitCode": 1, "finishedAt": "2024-01-01T00:59:30Z"}}}
                ]}
        }));
        assert_eq!(
            cells(&running, now()),
            [
                "web-node1",
                "1/2",
                "CrashLoopBackOff",
                "3 (30s ago)",
                "60m",
                "10.0.0.5",
                "node1",
                "<none>",
                "<none>"
            ]
        );
        let init = pod(json!({
            "metadata": {"name": "i"},
            "spec": {"initContainers": [{"name": "setup"}], "containers": [{"name": "a"}]},
            "status": {"phase": "Pending",
                "initContainerStatuses": [{"name": "setup", "ready": false, "restartCount": 0, "image": "", "imageID": "", "state": {"running": {}}}],
                "containerStatuses": [{"name": "a", "ready": false, "restartCount": 0, "image": "", "imageID": "", "state": {"waiting": {"reason": "PodInitializing"}}}]}
        }));
        assert_eq!(cells(&init, now())[..4], ["i", "0/1", "Init:0/1", "0"]);
        let done = pod(json!({
            "metadata": {"name": "d", "deletionTimestamp": "2024-01-01T00:00:00Z"},
            "spec": {"containers": [{"name": "a"}]},
            "status": {"phase": "Running",
                "containerStatuses": [{"name": "a", "ready": false, "restartCount": 0, "image": "", "imageID": "", "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}}]}
        }));
        assert_eq!(cells(&done, now())[2], "Terminating");
    }

    #[test]
    fn repeated_events_show_their_count() {
        let event: Event = serde_json::from_value(json!({
            "metadata": {"name": "web.1"},
            "involvedObject": {"kind": "Pod", "name": "web-node1", "fieldPath": "spec.containers{app}"},
            "reason": "BackOff", "type": "Warning", "message": "Back-off restarting ",
            "count": 4, "firstTimestamp": "2024-01-01T00:50:00Z", "lastTimestamp": "2024-01-01T00:59:00Z",
            "source": {"component": "podkeeper", "host": "node1"}
        }))
        .expect("event");
        let row = event_row(&event, "{}".into(), now());
        assert_eq!(
            Value::Array(row.cells),
            json!([
                "60s (x4 over 10m)",
                "Warning",
                "BackOff",
                "pod/web-node1",
                "spec.containers{app}",
                "podkeeper, node1",
                "Back-off restarting",
                "10m",
                4,
                "web.1"
            ])
        );
    }
}
