//! `/metrics` in the Prometheus text format: pods by phase, container
//! restarts, events by reason and type, containerd reachability, and the
//! HTTP API's own requests and latency (recorded by [`HttpMetrics`]).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::time::Duration;

use crate::api::ApiState;

/// Upper bounds (seconds) of the request latency histogram's buckets.
const BUCKETS: [f64; 10] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0,
];

#[derive(Default)]
struct RouteStats {
    by_code: BTreeMap<u16, u64>,
    /// Requests at or under each bound of [`BUCKETS`] (cumulative when
    /// printed).
    buckets: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

/// Request counts and latencies by route; shared by every listener.
#[derive(Default)]
pub struct HttpMetrics {
    routes: Mutex<BTreeMap<&'static str, RouteStats>>,
}

impl HttpMetrics {
    /// Records one answered request: `elapsed` runs until the response
    /// head is ready (a watch or a followed log streams on afterwards).
    pub fn record(&self, route: &'static str, code: u16, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        let mut routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        let stats = routes.entry(route).or_default();
        *stats.by_code.entry(code).or_default() += 1;
        if let Some(i) = BUCKETS.iter().position(|&b| seconds <= b) {
            stats.buckets[i] += 1;
        }
        stats.count += 1;
        stats.sum += seconds;
    }

    fn render(&self, out: &mut String) {
        let routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        header(
            out,
            "podkeeper_http_requests_total",
            "counter",
            "HTTP API requests by route and status code.",
        );
        for (route, stats) in routes.iter() {
            for (code, n) in &stats.by_code {
                let _ = writeln!(
                    out,
                    "podkeeper_http_requests_total{{route=\"{route}\",code=\"{code}\"}} {n}"
                );
            }
        }
        let name = "podkeeper_http_request_duration_seconds";
        header(
            out,
            name,
            "histogram",
            "Time to answer an HTTP API request (to the response head).",
        );
        for (route, stats) in routes.iter() {
            let mut cumulative = 0;
            for (bound, n) in BUCKETS.iter().zip(stats.buckets) {
                cumulative += n;
                let _ = writeln!(
                    out,
                    "{name}_bucket{{route=\"{route}\",le=\"{bound}\"}} {cumulative}"
                );
            }
            let _ = writeln!(
                out,
                "{name}_bucket{{route=\"{route}\",le=\"+Inf\"}} {}",
                stats.count
            );
            let _ = writeln!(out, "{name}_sum{{route=\"{route}\"}} {}", stats.sum);
            let _ = writeln!(out, "{name}_count{{route=\"{route}\"}} {}", stats.count);
        }
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// Escapes a label value for the text format.
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
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
                label(desired.namespace()),
                label(desired.name()),
                label(&container.name),
                container.restart_count
            );
        }
    }
    header(&mut out, "podkeeper_pods", "gauge", "Pods by phase.");
    for (phase, n) in &phases {
        let _ = writeln!(out, "podkeeper_pods{{phase=\"{}\"}} {n}", label(phase));
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
            label(reason),
            label(kind)
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
    }
}
