//! `/metrics` in the Prometheus text format: pods by phase, container
//! restarts, events by reason and type, containerd reachability, and the
//! HTTP API's own requests and latency (recorded by [`HttpMetrics`]).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use crate::api::ApiState;
use crate::metrics::{escape, Histograms, CONTAINERD_CALLS, IMAGE_PULLS, POD_SYNCS};

/// Request counts by route and code, latencies by route, and connections
/// refused to a peer over its share; shared by every listener.
#[derive(Default)]
pub struct HttpMetrics {
    codes: Mutex<BTreeMap<(&'static str, u16), u64>>,
    latency: Histograms,
    refused: AtomicU64,
}

impl HttpMetrics {
    /// Records one answered request: `elapsed` runs until the response
    /// head is ready (a watch or a followed log streams on afterwards).
    pub fn record(&self, route: &'static str, code: u16, elapsed: Duration) {
        let mut codes = self.codes.lock().unwrap_or_else(|e| e.into_inner());
        *codes.entry((route, code)).or_default() += 1;
        drop(codes);
        self.latency.record(route, elapsed);
    }

    /// Records a connection closed at once: its peer held its share.
    pub fn refuse(&self) {
        self.refused.fetch_add(1, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String) {
        header(
            out,
            "podkeeper_http_requests_total",
            "counter",
            "HTTP API requests by route and status code.",
        );
        let codes = self.codes.lock().unwrap_or_else(|e| e.into_inner());
        for ((route, code), n) in codes.iter() {
            let _ = writeln!(
                out,
                "podkeeper_http_requests_total{{route=\"{route}\",code=\"{code}\"}} {n}"
            );
        }
        drop(codes);
        self.latency.render(
            out,
            "podkeeper_http_request_duration_seconds",
            "Time to answer an HTTP API request (to the response head).",
            "route",
        );
        header(
            out,
            "podkeeper_http_connections_refused_total",
            "counter",
            "HTTP API connections closed at once: their peer held its share.",
        );
        let refused = self.refused.load(Ordering::Relaxed);
        let _ = writeln!(out, "podkeeper_http_connections_refused_total {refused}");
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// The whole `/metrics` page.
pub fn render(state: &ApiState) -> String {
    let mut out = String::new();
    let pods = state.http.pods.pods(state);
    let mut phases: BTreeMap<String, u64> =
        ["Pending", "Running", "Succeeded", "Failed", "Unknown"]
            .into_iter()
            .map(|p| (p.to_string(), 0))
            .collect();
    header(
        &mut out,
        "podkeeper_container_restarts_total",
        "counter",
        "Restarts of each container, as in its status.",
    );
    for cached in &pods {
        let desired = &cached.desired;
        let status = cached.pod.status.clone().unwrap_or_default();
        *phases
            .entry(status.phase.clone().unwrap_or_default())
            .or_default() += 1;
        let containers = status
            .init_container_statuses
            .iter()
            .chain(status.container_statuses.iter())
            .flatten();
        for container in containers {
            let _ = writeln!(
                out,
                "podkeeper_container_restarts_total{{namespace=\"{}\",pod=\"{}\",container=\"{}\"}} {}",
                escape(desired.namespace()),
                escape(desired.name()),
                escape(&container.name),
                container.restart_count
            );
        }
    }
    header(&mut out, "podkeeper_pods", "gauge", "Pods by phase.");
    for (phase, n) in &phases {
        let _ = writeln!(out, "podkeeper_pods{{phase=\"{}\"}} {n}", escape(phase));
    }
    let mut events: BTreeMap<(String, String), i64> = BTreeMap::new();
    for event in state.events.list() {
        let key = (
            event.reason.clone().unwrap_or_default(),
            event.type_.clone().unwrap_or_default(),
        );
        *events.entry(key).or_default() += i64::from(event.count.unwrap_or(1));
    }
    header(
        &mut out,
        "podkeeper_events_total",
        "counter",
        "Occurrences of the events kept, by reason and type.",
    );
    for ((reason, kind), n) in &events {
        let _ = writeln!(
            out,
            "podkeeper_events_total{{reason=\"{}\",type=\"{}\"}} {n}",
            escape(reason),
            escape(kind)
        );
    }
    header(
        &mut out,
        "podkeeper_events_dropped_total",
        "counter",
        "Events lost because the recording queue was full.",
    );
    let _ = writeln!(
        out,
        "podkeeper_events_dropped_total {}",
        state.events.dropped()
    );
    let gauges = [
        (
            "podkeeper_containerd_reachable",
            "Whether containerd's event stream is up.",
            state.containerd_reachable.load(Ordering::Relaxed),
        ),
        (
            "podkeeper_manifests_synced",
            "Whether the manifest directory has been read in full.",
            state.desired.snapshot().synced,
        ),
    ];
    for (name, help, value) in gauges {
        header(&mut out, name, "gauge", help);
        let _ = writeln!(out, "{name} {}", u8::from(value));
    }
    state.http.metrics.render(&mut out);
    CONTAINERD_CALLS.render(
        &mut out,
        "podkeeper_containerd_call_duration_seconds",
        "containerd gRPC calls by method (to the response head for streams).",
        "method",
    );
    POD_SYNCS.render(
        &mut out,
        "podkeeper_pod_sync_duration_seconds",
        "Pod worker actions: creating a sandbox, starting containers.",
        "action",
    );
    IMAGE_PULLS.render(
        &mut out,
        "podkeeper_image_pull_duration_seconds",
        "Image pulls from registries, by outcome.",
        "outcome",
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_buckets_are_cumulative() {
        let metrics = HttpMetrics::default();
        metrics.record("pod_list", 200, Duration::from_micros(300));
        metrics.record("pod_list", 200, Duration::from_millis(3));
        metrics.record("pod_list", 404, Duration::from_secs(5));
        metrics.refuse();
        let mut out = String::new();
        metrics.render(&mut out);
        assert!(out.contains("podkeeper_http_requests_total{route=\"pod_list\",code=\"200\"} 2"));
        assert!(out.contains(
            "podkeeper_http_request_duration_seconds_bucket{route=\"pod_list\",le=\"0.0005\"} 1"
        ));
        assert!(out.contains(
            "podkeeper_http_request_duration_seconds_bucket{route=\"pod_list\",le=\"0.005\"} 2"
        ));
        assert!(out.contains(
            "podkeeper_http_request_duration_seconds_bucket{route=\"pod_list\",le=\"+Inf\"} 3"
        ));
        assert!(out.contains("podkeeper_http_connections_refused_total 1\n"));
    }
}
