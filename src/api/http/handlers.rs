//! Answers to routed requests, from snapshots of the desired set, the
//! status store and the event log. Lists and gets answer at once; a watch
//! or a log streams from a task of its own (see [`super::watch`] and
//! [`super::log_stream`]).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use hyper::{Response, StatusCode};
use k8s_openapi::api::core::v1::{Event, Pod, PodStatus};
use k8s_openapi::List;
use tokio::sync::mpsc;

use super::cache::{content_version, CachedPod};
use super::response::{self, bad_request, not_found, Body};
use super::route::{ListOptions, LogOptions, Route, Scope};
use super::{discovery, log_stream, metrics, table, watch};
use crate::api::{describe, pods, ApiState};
use crate::desired::DesiredPod;
use crate::logs::read::{Format, LogReader};

pub async fn handle(route: Route, wants_table: bool, state: &ApiState) -> Response<Body> {
    match route {
        Route::Healthz => healthz(state),
        Route::Readyz => readyz(state),
        Route::Metrics => response::bytes(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            metrics::render(state),
        ),
        Route::KubeletPods => pod_list(state, &Scope::All, &ListOptions::default(), false),
        Route::Version => response::json(&discovery::version()),
        Route::ApiVersions => response::json(&discovery::api_versions()),
        Route::ApiResources => response::json(&discovery::api_resources()),
        Route::ApiGroups => response::json(&discovery::api_groups()),
        Route::OpenApi => response::status(
            StatusCode::NOT_FOUND,
            "NotFound",
            "podkeeper serves no OpenAPI document",
        ),
        Route::PodList(scope, options) if options.watch => {
            watch::pods(state.clone(), scope, options, wants_table)
        }
        Route::PodList(scope, options) => pod_list(state, &scope, &options, wants_table),
        Route::PodGet(namespace, name) => match find(state, &namespace, &name) {
            Some(cached) if wants_table => {
                let row = table::pod_row(&cached.pod, cached.json.clone(), jiff::Timestamp::now());
                json_text(table::table(table::POD_COLUMNS, &[row], &cached.version))
            }
            Some(cached) => json_text(cached.json.clone()),
            None => not_found("pods", &name),
        },
        Route::PodLog(namespace, name, options) => logs(state, &namespace, &name, options).await,
        Route::EventList(scope, options) if options.watch => {
            watch::events(state.clone(), scope, options, wants_table)
        }
        Route::EventList(scope, options) => event_list(state, &scope, &options, wants_table),
        Route::Describe(namespace, name, json) => describe(state, &namespace, &name, json),
        Route::EventGet(namespace, name) => {
            let events = state.events.list();
            let found = events.iter().find(|e| {
                e.metadata.namespace.as_deref() == Some(namespace.as_str())
                    && e.metadata.name.as_deref() == Some(name.as_str())
            });
            match found {
                Some(event) => response::object(&**event),
                None => not_found("events", &name),
            }
        }
    }
}

/// Healthy while every supervised task runs; otherwise a 500 naming the
/// tasks down, as the kubelet answers for a failed check (the reason, a
/// panic message say, stays in the agent's log).
fn healthz(state: &ApiState) -> Response<Body> {
    let dead = state.tasks.dead();
    if dead.is_empty() {
        return response::text(StatusCode::OK, "ok");
    }
    let mut body: String = dead.iter().map(|t| format!("[failed] {t}\n")).collect();
    body.push_str("healthz check failed\n");
    response::text(StatusCode::INTERNAL_SERVER_ERROR, body)
}

/// Ready once the manifest directory was read in full and containerd's
/// event stream is up (before that, what `/pods` says is incomplete), and
/// while no supervised task is down.
fn readyz(state: &ApiState) -> Response<Body> {
    let synced = state.desired.snapshot().synced;
    let containerd = state.containerd_reachable.load(Ordering::Relaxed);
    let dead = state.tasks.dead();
    let check = |ok: bool| if ok { "ok" } else { "failed" };
    let mut body = format!(
        "[{}] manifests synced\n[{}] containerd reachable\n",
        check(synced),
        check(containerd)
    );
    for task in &dead {
        body.push_str(&format!("[failed] {task}\n"));
    }
    let code = if synced && containerd && dead.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    response::text(code, body)
}

/// A pod by namespace and (full or short) name.
fn find(state: &ApiState, namespace: &str, name: &str) -> Option<Arc<CachedPod>> {
    pods::find_in(state.http.pods.pods(state), |c| &c.desired, namespace, name)
}

/// `kubectl describe pod`'s text (or its JSON form) of a pod and the
/// events about it, rendered by the agent.
fn describe(state: &ApiState, namespace: &str, name: &str, json: bool) -> Response<Body> {
    let Some(cached) = find(state, namespace, name) else {
        return not_found("pods", name);
    };
    let (desired, pod) = (&cached.desired, &cached.pod);
    let events: Vec<Event> = state
        .events
        .list()
        .into_iter()
        .filter(|e| {
            let object = &e.involved_object;
            object.kind.as_deref() == Some("Pod")
                && object.namespace.as_deref() == Some(desired.namespace())
                && object.name.as_deref() == Some(desired.name())
                && object.uid.as_deref().is_none_or(|uid| uid == desired.uid())
        })
        .map(|e| (*e).clone())
        .collect();
    let now = jiff::Timestamp::now();
    if json {
        response::json(&describe::describe_pod_json(pod, &events, now))
    } else {
        response::text(StatusCode::OK, describe::describe_pod(pod, &events, now))
    }
}

/// The value of a pod field for field selectors.
fn pod_field(pod: &Pod, field: &str) -> String {
    let spec = pod.spec.as_ref();
    let status = pod.status.as_ref();
    let value = match field {
        "metadata.name" => pod.metadata.name.clone(),
        "metadata.namespace" => pod.metadata.namespace.clone(),
        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()),
        "spec.restartPolicy" => spec.and_then(|s| s.restart_policy.clone()),
        "status.phase" => status.and_then(|s| s.phase.clone()),
        "status.podIP" => status.and_then(|s| s.pod_ip.clone()),
        _ => None,
    };
    value.unwrap_or_default()
}

/// The pods in `scope` that `options` select, with their status.
pub fn select_pods(state: &ApiState, scope: &Scope, options: &ListOptions) -> Vec<Arc<CachedPod>> {
    state
        .http
        .pods
        .pods(state)
        .into_iter()
        .filter(|cached| {
            let pod = &cached.pod;
            scope.includes(cached.desired.namespace())
                && options.fields.matches(|f| pod_field(pod, f))
                && options
                    .labels
                    .matches(pod.metadata.labels.as_ref().unwrap_or(&Default::default()))
        })
        .collect()
}

fn json_text(text: String) -> Response<Body> {
    response::bytes(StatusCode::OK, "application/json", text)
}

/// A `PodList` (the kubelet's `/pods` too) or a Table of the selected
/// pods, spliced together from each pod's cached JSON.
fn pod_list(
    state: &ApiState,
    scope: &Scope,
    options: &ListOptions,
    wants_table: bool,
) -> Response<Body> {
    let pods = select_pods(state, scope, options);
    let versions: Vec<&str> = pods.iter().map(|p| p.version.as_str()).collect();
    let version = content_version(&versions.join(","));
    if wants_table {
        let now = jiff::Timestamp::now();
        let rows: Vec<_> = pods
            .iter()
            .map(|p| table::pod_row(&p.pod, p.json.clone(), now))
            .collect();
        return json_text(table::table(table::POD_COLUMNS, &rows, &version));
    }
    let mut out = String::with_capacity(pods.iter().map(|p| p.json.len() + 1).sum::<usize>() + 128);
    out.push_str(r#"{"kind":"PodList","apiVersion":"v1","metadata":{"resourceVersion":""#);
    out.push_str(&version);
    out.push_str(r#""},"items":["#);
    for (i, pod) in pods.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&pod.json);
    }
    out.push_str("]}");
    json_text(out)
}

/// The value of an event field for field selectors.
fn event_field(event: &Event, field: &str) -> String {
    let object = &event.involved_object;
    let value = match field {
        "metadata.name" => event.metadata.name.clone(),
        "metadata.namespace" => event.metadata.namespace.clone(),
        "involvedObject.kind" => object.kind.clone(),
        "involvedObject.namespace" => object.namespace.clone(),
        "involvedObject.name" => object.name.clone(),
        "involvedObject.uid" => object.uid.clone(),
        "involvedObject.apiVersion" => object.api_version.clone(),
        "involvedObject.fieldPath" => object.field_path.clone(),
        "reason" => event.reason.clone(),
        "type" => event.type_.clone(),
        "source" => event.source.as_ref().and_then(|s| s.component.clone()),
        "reportingComponent" => event.reporting_component.clone(),
        _ => None,
    };
    value.unwrap_or_default()
}

pub fn event_selected(event: &Event, scope: &Scope, options: &ListOptions) -> bool {
    scope.includes(event.metadata.namespace.as_deref().unwrap_or_default())
        && options.fields.matches(|f| event_field(event, f))
        && options.labels.matches(
            event
                .metadata
                .labels
                .as_ref()
                .unwrap_or(&Default::default()),
        )
}

fn event_list(
    state: &ApiState,
    scope: &Scope,
    options: &ListOptions,
    wants_table: bool,
) -> Response<Body> {
    let events: Vec<Arc<Event>> = state
        .events
        .list()
        .into_iter()
        .filter(|e| event_selected(e, scope, options))
        .collect();
    if wants_table {
        let now = jiff::Timestamp::now();
        let rows: Vec<_> = events
            .iter()
            .map(|e| table::event_row(e, serde_json::to_string(&**e).unwrap_or_default(), now))
            .collect();
        return json_text(table::table(table::EVENT_COLUMNS, &rows, ""));
    }
    response::object(&List {
        items: events.iter().map(|e| (**e).clone()).collect::<Vec<Event>>(),
        metadata: Default::default(),
    })
}

/// `GET .../pods/{name}/log`: the container's current (or, with
/// `previous`, last) log file, printed and optionally followed like the
/// kubelet does, streamed in bounded chunks (see [`log_stream`]). File
/// reads run on the blocking pool.
async fn logs(
    state: &ApiState,
    namespace: &str,
    name: &str,
    options: LogOptions,
) -> Response<Body> {
    let Some(cached) = find(state, namespace, name) else {
        return not_found("pods", name);
    };
    let target = match log_target(state, &cached.desired, &cached.pod, &options) {
        Ok(target) => target,
        Err(message) => return bad_request(&message),
    };
    let since = options.since_time.or_else(|| {
        let seconds = i64::try_from(options.since_seconds?).ok()?;
        jiff::Timestamp::now()
            .checked_sub(jiff::SignedDuration::from_secs(seconds))
            .ok()
    });
    let format = Format {
        timestamps: options.timestamps,
        since,
    };
    let limit = options.limit_bytes.unwrap_or(u64::MAX);
    let path = target.path.clone();
    let tail = options.tail_lines;
    let reader =
        match tokio::task::spawn_blocking(move || LogReader::start(&path, tail, format)).await {
            Ok(Ok(reader)) => reader,
            Ok(Err(e)) => {
                return bad_request(&format!(
                    "reading the log of container {:?}: {e}",
                    target.container
                ))
            }
            Err(e) => {
                return response::status(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "InternalError",
                    &e.to_string(),
                )
            }
        };
    let (tx, rx) = mpsc::channel(log_stream::BACKLOG);
    let state = state.clone();
    tokio::task::spawn_blocking(move || {
        // Following ends when the container restarted or went away: its
        // output then continues in another file, as with the kubelet.
        let current = || {
            let now = state
                .desired
                .snapshot()
                .pods
                .get(&target.uid)
                .and_then(|_| state.status.get(&target.uid))
                .map(|status| restart_count(&status, &target.container));
            now == Some(target.restart)
        };
        let follow = options.follow.then_some(&current as &dyn Fn() -> bool);
        let _ = log_stream::send(
            reader,
            follow,
            &mut log_stream::ChannelWriter::new(tx, limit),
        );
    });
    response::stream("text/plain; charset=utf-8", rx)
}

/// The log file a request is for.
struct LogTarget {
    path: std::path::PathBuf,
    uid: String,
    container: String,
    /// The restart count the file belongs to; following ends when the
    /// container has restarted since.
    restart: i32,
}

fn log_target(
    state: &ApiState,
    desired: &DesiredPod,
    pod: &Pod,
    options: &LogOptions,
) -> Result<LogTarget, String> {
    let pod_name = desired.name();
    let spec = pod.spec.clone().unwrap_or_default();
    let names: Vec<String> = spec
        .init_containers
        .iter()
        .flatten()
        .chain(spec.containers.iter())
        .map(|c| c.name.clone())
        .collect();
    let container = match &options.container {
        Some(name) if names.contains(name) => name.clone(),
        Some(name) => return Err(format!("container {name} is not valid for pod {pod_name}")),
        None if spec.containers.len() == 1 => spec.containers[0].name.clone(),
        None => {
            return Err(format!(
                "a container name must be specified for pod {pod_name}, choose one of: [{}]",
                names.join(" ")
            ))
        }
    };
    let restart = restart_count(&pod.status.clone().unwrap_or_default(), &container);
    let restart = if options.previous {
        if restart == 0 {
            return Err(format!(
                "previous terminated container \"{container}\" in pod \"{pod_name}\" not found"
            ));
        }
        restart - 1
    } else {
        restart
    };
    let path = crate::pod::worker::pod_log_dir(&state.pod_log_dir, desired)
        .map_err(|e| e.to_string())?
        .path()
        .join(&container)
        .join(format!("{restart}.log"));
    if !path.exists() {
        return Err(format!(
            "container \"{container}\" in pod \"{pod_name}\" is waiting to start: no log yet"
        ));
    }
    Ok(LogTarget {
        path,
        uid: desired.uid().to_string(),
        container,
        restart,
    })
}

fn restart_count(status: &PodStatus, container: &str) -> i32 {
    status
        .init_container_statuses
        .iter()
        .flatten()
        .chain(status.container_statuses.iter().flatten())
        .find(|s| s.name == container)
        .map_or(0, |s| s.restart_count)
}
