//! `kubectl describe pod`, rendered by podkeeper itself: there is no API
//! server for kubectl to ask, yet people read pods in this layout every
//! day, so `podkeeper describe pod` and the HTTP `/describe/pods/…` show it
//! byte for byte as kubectl 1.32 would (`pkg/describe/describe.go`:
//! `describePod`, `describeContainers`, `DescribeProbe`, `DescribeEvents`),
//! plus [`describe_pod_json`], the same facts for programs.
//!
//! Pure: the pod, its events and the time in, text out. Kubernetes defaults
//! that an API server would have filled in but a static pod manifest may
//! lack (probe timings, `httpGet.scheme`, `fieldRef.apiVersion`) are shown
//! as the API server would have stored them.

mod containers;
mod tabwriter;

use std::collections::BTreeMap;

use jiff::tz::TimeZone;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Event, Pod, Toleration, Volume};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use serde_json::json;

use tabwriter::Writer;

/// Annotations longer than this (key and value) are wrapped and shortened,
/// as kubectl's `maxAnnotationLen`.
const MAX_ANNOTATION_LEN: usize = 140;

/// `kubectl describe pod` for `pod` (with its status) and the events about
/// it, ages measured at `now`, times in the system's time zone as kubectl
/// prints them.
pub fn describe_pod(pod: &Pod, events: &[Event], now: Timestamp) -> String {
    describe_pod_in(pod, events, now, &TimeZone::system())
}

/// [`describe_pod`] with times shown in `tz`, so output can be compared
/// across machines (tests use UTC).
pub fn describe_pod_in(pod: &Pod, events: &[Event], now: Timestamp, tz: &TimeZone) -> String {
    let mut d = Describer {
        w: Writer::default(),
        pod,
        now,
        tz,
    };
    d.pod_header();
    let spec = pod.spec.clone().unwrap_or_default();
    let status = pod.status.clone().unwrap_or_default();
    if let Some(resources) = &spec.resources {
        d.w.write(0, "Resources:\n");
        containers::resources_block(&mut d.w, resources, 1);
    }
    if let Some(init) = spec.init_containers.as_ref().filter(|c| !c.is_empty()) {
        let statuses = status.init_container_statuses.as_deref().unwrap_or(&[]);
        d.containers("Init Containers", init, statuses);
    }
    let statuses = status.container_statuses.as_deref().unwrap_or(&[]);
    d.containers("Containers", &spec.containers, statuses);
    let conditions = status.conditions.as_deref().unwrap_or(&[]);
    if let Some(gates) = spec.readiness_gates.as_ref().filter(|g| !g.is_empty()) {
        d.w.write(0, "Readiness Gates:\n  Type\tStatus\n");
        for gate in gates {
            let status = conditions
                .iter()
                .find(|c| c.type_ == gate.condition_type)
                .map_or("<none>", |c| c.status.as_str());
            d.w.write(1, &format!("{} \t{status} \n", gate.condition_type));
        }
    }
    if !conditions.is_empty() {
        d.w.write(0, "Conditions:\n  Type\tStatus\n");
        for c in conditions {
            d.w.write(1, &format!("{} \t{} \n", c.type_, c.status));
        }
    }
    volumes(&mut d.w, spec.volumes.as_deref().unwrap_or(&[]));
    d.w.write(0, &format!("QoS Class:\t{}\n", qos_class(pod)));
    labels(&mut d.w, "Node-Selectors", spec.node_selector.as_ref());
    tolerations(&mut d.w, spec.tolerations.as_deref().unwrap_or(&[]));
    d.events(events);
    d.w.finish()
}

/// The facts of [`describe_pod`] for programs (`?output=json`): the pod
/// object itself, the QoS class kubectl would show, and the events in
/// kubectl's order with the `age` and `from` columns as kubectl words them.
/// Like the text, it holds what the pod object holds: a `secretKeyRef` is
/// a reference, never a secret's value.
pub fn describe_pod_json(pod: &Pod, events: &[Event], now: Timestamp) -> serde_json::Value {
    let events: Vec<serde_json::Value> = sorted_events(events)
        .into_iter()
        .map(|e| {
            json!({
                "type": e.type_,
                "reason": e.reason,
                "age": event_interval(e, now),
                "from": event_source(e),
                "message": e.message.as_deref().unwrap_or("").trim(),
                "count": e.count.unwrap_or(1),
                "firstTimestamp": e.first_timestamp,
                "lastTimestamp": e.last_timestamp,
                "fieldPath": e.involved_object.field_path,
            })
        })
        .collect();
    json!({
        "pod": pod,
        "qosClass": qos_class(pod),
        "events": events,
    })
}

/// Kubernetes' `duration.HumanDuration` (apimachinery), the AGE of kubectl
/// tables and describe's event ages.
pub fn human_duration(d: jiff::SignedDuration) -> String {
    let seconds = d.as_secs();
    if seconds < -2 {
        return "<invalid>".into();
    }
    if seconds < 0 {
        return "0s".into();
    }
    let minutes = seconds / 60;
    let hours = minutes / 60;
    let days = hours / 24;
    let years = days / 365;
    let pair = |a: i64, ua: &str, b: i64, ub: &str| {
        if b == 0 {
            format!("{a}{ua}")
        } else {
            format!("{a}{ua}{b}{ub}")
        }
    };
    match () {
        _ if seconds < 120 => format!("{seconds}s"),
        _ if minutes < 10 => pair(minutes, "m", seconds % 60, "s"),
        _ if hours < 3 => format!("{minutes}m"),
        _ if hours < 8 => pair(hours, "h", minutes % 60, "m"),
        _ if hours < 48 => format!("{hours}h"),
        _ if hours < 192 => pair(days, "d", hours % 24, "h"),
        _ if days < 730 => format!("{days}d"),
        _ if days < 365 * 8 => pair(years, "y", days % 365, "d"),
        _ => format!("{years}y"),
    }
}

/// What every section needs: the output, the pod, and how to show time.
struct Describer<'a> {
    w: Writer,
    pod: &'a Pod,
    now: Timestamp,
    tz: &'a TimeZone,
}

impl Describer<'_> {
    /// Go's `time.RFC1123Z` in the reader's zone, kubectl's format for
    /// every absolute time.
    fn time(&self, t: Timestamp) -> String {
        t.to_zoned(self.tz.clone())
            .strftime("%a, %d %b %Y %H:%M:%S %z")
            .to_string()
    }

    /// `translateTimestampSince`.
    fn since(&self, t: Option<Timestamp>) -> String {
        since(t, self.now)
    }

    /// Name through Controlled By.
    fn pod_header(&mut self) {
        let pod = self.pod;
        let meta = &pod.metadata;
        let spec = pod.spec.clone().unwrap_or_default();
        let status = pod.status.clone().unwrap_or_default();
        let text = |s: &Option<String>| s.clone().unwrap_or_default();
        let w = &mut self.w;
        w.write(0, &format!("Name:\t{}\n", text(&meta.name)));
        w.write(0, &format!("Namespace:\t{}\n", text(&meta.namespace)));
        if let Some(priority) = spec.priority {
            w.write(0, &format!("Priority:\t{priority}\n"));
        }
        let optional = [
            ("Priority Class Name", &spec.priority_class_name),
            ("Runtime Class Name", &spec.runtime_class_name),
            ("Service Account", &spec.service_account_name),
        ];
        for (title, value) in optional {
            if let Some(value) = value.as_ref().filter(|v| !v.is_empty()) {
                w.write(0, &format!("{title}:\t{value}\n"));
            }
        }
        match spec.node_name.as_deref().filter(|n| !n.is_empty()) {
            None => w.write(0, "Node:\t<none>\n"),
            Some(node) => w.write(0, &format!("Node:\t{node}/{}\n", text(&status.host_ip))),
        }
        if let Some(start) = &status.start_time {
            let start = self.time(start.0);
            self.w.write(0, &format!("Start Time:\t{start}\n"));
        }
        labels(&mut self.w, "Labels", meta.labels.as_ref());
        annotations(&mut self.w, meta.annotations.as_ref());
        let phase = text(&status.phase);
        let finished = phase == "Failed" || phase == "Succeeded";
        match &meta.deletion_timestamp {
            Some(deleted) if !finished => {
                let lasts = self.since(Some(deleted.0));
                let grace = meta.deletion_grace_period_seconds.unwrap_or(0);
                self.w
                    .write(0, &format!("Status:\tTerminating (lasts {lasts})\n"));
                self.w
                    .write(0, &format!("Termination Grace Period:\t{grace}s\n"));
            }
            _ => self.w.write(0, &format!("Status:\t{phase}\n")),
        }
        let w = &mut self.w;
        for (title, value) in [("Reason", &status.reason), ("Message", &status.message)] {
            if let Some(value) = value.as_ref().filter(|v| !v.is_empty()) {
                w.write(0, &format!("{title}:\t{value}\n"));
            }
        }
        let seccomp = spec
            .security_context
            .as_ref()
            .and_then(|s| s.seccomp_profile.as_ref());
        if let Some(profile) = seccomp {
            containers::seccomp(w, profile, 0, 0);
        }
        w.write(0, &format!("IP:\t{}\n", text(&status.pod_ip)));
        match status.pod_ips.as_deref().filter(|ips| !ips.is_empty()) {
            None => w.write(0, "IPs:\t<none>\n"),
            Some(ips) => {
                w.write(0, "IPs:\n");
                for ip in ips {
                    w.write(1, &format!("IP:\t{}\n", ip.ip));
                }
            }
        }
        let controller = meta
            .owner_references
            .iter()
            .flatten()
            .find(|o| o.controller == Some(true));
        if let Some(owner) = controller {
            w.write(
                0,
                &format!("Controlled By:\t{}/{}\n", owner.kind, owner.name),
            );
        }
        if let Some(nominated) = status.nominated_node_name.filter(|n| !n.is_empty()) {
            w.write(0, &format!("NominatedNodeName:\t{nominated}\n"));
        }
    }

    /// `DescribeEvents`: its own table, flushed apart from the rest.
    fn events(&mut self, events: &[Event]) {
        if events.is_empty() {
            self.w.write(0, "Events:\t<none>\n");
            return;
        }
        self.w.flush();
        self.w
            .write(0, "Events:\n  Type\tReason\tAge\tFrom\tMessage\n");
        self.w.write(1, "----\t------\t----\t----\t-------\n");
        for e in sorted_events(events) {
            let row = format!(
                "{}\t{}\t{}\t{}\t{}\n",
                e.type_.as_deref().unwrap_or(""),
                e.reason.as_deref().unwrap_or(""),
                event_interval(e, self.now),
                event_source(e),
                e.message.as_deref().unwrap_or("").trim(),
            );
            self.w.write(1, &row);
        }
    }
}

/// `translateTimestampSince`: an unset time is `<unknown>`.
fn since(t: Option<Timestamp>, now: Timestamp) -> String {
    match t {
        Some(t) => human_duration(now.duration_since(t)),
        None => "<unknown>".into(),
    }
}

/// kubectl's `SortableEvents`: by last timestamp (unset first), keeping
/// the given order among equals as Go's sort does for short lists.
fn sorted_events(events: &[Event]) -> Vec<&Event> {
    let mut sorted: Vec<&Event> = events.iter().collect();
    sorted.sort_by_key(|e| e.last_timestamp.as_ref().map(|t| t.0));
    sorted
}

/// The Age column: `3m (x5 over 10m)` for a repeated event, else its age.
fn event_interval(e: &Event, now: Timestamp) -> String {
    let first = match &e.event_time {
        Some(t) => since(Some(t.0), now),
        None => since(e.first_timestamp.as_ref().map(|t| t.0), now),
    };
    let count = e.count.unwrap_or(0);
    match &e.series {
        Some(series) => {
            let last = since(series.last_observed_time.as_ref().map(|t| t.0), now);
            let count = series.count.unwrap_or(0);
            format!("{last} (x{count} over {first})")
        }
        None if count > 1 => {
            let last = since(e.last_timestamp.as_ref().map(|t| t.0), now);
            format!("{last} (x{count} over {first})")
        }
        None => first,
    }
}

/// The From column: the source component, else the reporting controller.
fn event_source(e: &Event) -> &str {
    e.source
        .as_ref()
        .and_then(|s| s.component.as_deref())
        .filter(|c| !c.is_empty())
        .or(e.reporting_component.as_deref())
        .unwrap_or("")
}

/// The QoS class the pod's status gives, else computed from its resources
/// (kubectl's `GetPodQOS`).
fn qos_class(pod: &Pod) -> String {
    let from_status = pod.status.as_ref().and_then(|s| s.qos_class.clone());
    from_status.filter(|q| !q.is_empty()).unwrap_or_else(|| {
        let spec = pod.spec.clone().unwrap_or_default();
        crate::runtime::resources::qos_class(&spec)
            .map(|q| q.as_str().to_string())
            .unwrap_or_default()
    })
}

/// A quantity as apimachinery's `Quantity.String()` prints it: canonical.
fn quantity(q: &Quantity) -> String {
    crate::runtime::quantity::parse(q.0.trim())
        .map(|q| q.to_string())
        .unwrap_or_else(|_| q.0.clone())
}

/// `printLabelsMultiline`: sorted `k=v`, continuation lines behind a tab.
fn labels(w: &mut Writer, title: &str, labels: Option<&BTreeMap<String, String>>) {
    w.write(0, &format!("{title}:\t"));
    let labels = labels.into_iter().flatten();
    let mut any = false;
    for (i, (key, value)) in labels.enumerate() {
        any = true;
        if i > 0 {
            w.write(0, "\t");
        }
        w.write(0, &format!("{key}={value}\n"));
    }
    if !any {
        w.write(0, "<none>\n");
    }
}

/// `printAnnotationsMultiline`: sorted `k: v`; long or multi-line values
/// on lines of their own, each shortened to 138 bytes plus `...`.
fn annotations(w: &mut Writer, annotations: Option<&BTreeMap<String, String>>) {
    w.write(0, "Annotations:\t");
    let annotations: Vec<_> = annotations
        .into_iter()
        .flatten()
        .filter(|(k, _)| k.as_str() != "kubectl.kubernetes.io/last-applied-configuration")
        .collect();
    if annotations.is_empty() {
        w.write(0, "<none>\n");
        return;
    }
    for (i, (key, value)) in annotations.into_iter().enumerate() {
        if i > 0 {
            w.write(0, "\t");
        }
        let value = value.strip_suffix('\n').unwrap_or(value);
        if value.len() + key.len() + 2 > MAX_ANNOTATION_LEN || value.contains('\n') {
            w.write(0, &format!("{key}:\n"));
            for line in value.split('\n') {
                w.write(
                    0,
                    &format!("\t  {}\n", shorten(line, MAX_ANNOTATION_LEN - 2)),
                );
            }
        } else {
            w.write(0, &format!("{key}: {value}\n"));
        }
    }
}

/// At most `max` bytes (cut at a character boundary) and `...`.
fn shorten(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.into();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

/// `describeVolumes`, for the volume types a static pod can have; others
/// are `<unknown>`.
fn volumes(w: &mut Writer, volumes: &[Volume]) {
    if volumes.is_empty() {
        w.write(0, "Volumes:\t<none>\n");
        return;
    }
    w.write(0, "Volumes:\n");
    for volume in volumes {
        w.write(1, &format!("{}:\n", volume.name));
        if let Some(host) = &volume.host_path {
            let kind = host.type_.as_deref().unwrap_or("<none>");
            w.write(
                2,
                &format!(
                    "Type:\tHostPath (bare host directory volume)\n    Path:\t{}\n    HostPathType:\t{kind}\n",
                    host.path
                ),
            );
        } else if let Some(empty) = &volume.empty_dir {
            let limit = empty
                .size_limit
                .as_ref()
                .map(quantity)
                .filter(|q| q != "0" && !q.starts_with('-'))
                .unwrap_or_else(|| "<unset>".into());
            w.write(
                2,
                &format!(
                    "Type:\tEmptyDir (a temporary directory that shares a pod's lifetime)\n    Medium:\t{}\n    SizeLimit:\t{limit}\n",
                    empty.medium.as_deref().unwrap_or("")
                ),
            );
        } else if let Some(api) = &volume.downward_api {
            w.write(
                2,
                "Type:\tDownwardAPI (a volume populated by information about the pod)\n    Items:\n",
            );
            for item in api.items.iter().flatten() {
                if let Some(field) = &item.field_ref {
                    w.write(3, &format!("{} -> {}\n", field.field_path, item.path));
                }
                if let Some(resource) = &item.resource_field_ref {
                    w.write(3, &format!("{} -> {}\n", resource.resource, item.path));
                }
            }
        } else {
            w.write(1, "<unknown>\n");
        }
    }
}

/// `printTolerationsMultilineWithIndent`: sorted by key.
fn tolerations(w: &mut Writer, tolerations: &[Toleration]) {
    w.write(0, "Tolerations:\t");
    if tolerations.is_empty() {
        w.write(0, "<none>\n");
        return;
    }
    let mut sorted: Vec<&Toleration> = tolerations.iter().collect();
    sorted.sort_by_key(|t| t.key.as_deref().unwrap_or(""));
    for (i, t) in sorted.into_iter().enumerate() {
        if i > 0 {
            w.write(0, "\t");
        }
        let key = t.key.as_deref().unwrap_or("");
        let value = t.value.as_deref().unwrap_or("");
        let effect = t.effect.as_deref().unwrap_or("");
        let mut line = key.to_string();
        if !value.is_empty() {
            line.push_str(&format!("={value}"));
        }
        if !effect.is_empty() {
            line.push_str(&format!(":{effect}"));
        }
        if t.operator.as_deref() == Some("Exists") && value.is_empty() {
            let space = if key.is_empty() && effect.is_empty() {
                ""
            } else {
                " "
            };
            line.push_str(&format!("{space}op=Exists"));
        }
        if let Some(seconds) = t.toleration_seconds {
            line.push_str(&format!(" for {seconds}s"));
        }
        w.write(0, &format!("{line}\n"));
    }
}

#[cfg(test)]
mod tests;
