//! Latency histograms the agent's parts record into and `/metrics` prints:
//! containerd calls, pod worker syncs, image pulls and HTTP requests. Plain
//! counters under a mutex: a record is a few additions, far cheaper than
//! the work it measures.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds (seconds) of every histogram's buckets: from a cached HTTP
/// answer to an image pull.
const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 60.0,
];

#[derive(Default)]
struct Series {
    /// Observations at or under each bound (cumulative when printed).
    buckets: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

/// One histogram per value of a label (the call, the route, the outcome).
pub struct Histograms {
    series: Mutex<BTreeMap<String, Series>>,
}

/// containerd calls by gRPC method (e.g. `/containerd.services.tasks.v1.Tasks/Create`).
pub static CONTAINERD_CALLS: Histograms = Histograms::new();
/// One pass of a pod worker's decide-act loop that did something, by what
/// it did (`sandbox`, `start`).
pub static POD_SYNCS: Histograms = Histograms::new();
/// Image pulls by outcome (`pulled`, `failed`).
pub static IMAGE_PULLS: Histograms = Histograms::new();

impl Histograms {
    pub const fn new() -> Histograms {
        Histograms {
            series: Mutex::new(BTreeMap::new()),
        }
    }

    pub fn record(&self, label: &str, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        let mut series = self.series.lock().unwrap_or_else(|e| e.into_inner());
        if !series.contains_key(label) {
            series.insert(label.to_string(), Series::default());
        }
        if let Some(s) = series.get_mut(label) {
            if let Some(i) = BUCKETS.iter().position(|&b| seconds <= b) {
                s.buckets[i] += 1;
            }
            s.count += 1;
            s.sum += seconds;
        }
    }

    /// Appends the histogram in the Prometheus text format.
    pub fn render(&self, out: &mut String, name: &str, help: &str, label_name: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let series = self.series.lock().unwrap_or_else(|e| e.into_inner());
        for (value, s) in series.iter() {
            let value = escape(value);
            let mut cumulative = 0;
            for (bound, n) in BUCKETS.iter().zip(s.buckets) {
                cumulative += n;
                let _ = writeln!(
                    out,
                    "{name}_bucket{{{label_name}=\"{value}\",le=\"{bound}\"}} {cumulative}"
                );
            }
            let _ = writeln!(
                out,
                "{name}_bucket{{{label_name}=\"{value}\",le=\"+Inf\"}} {}",
                s.count
            );
            let _ = writeln!(out, "{name}_sum{{{label_name}=\"{value}\"}} {}", s.sum);
            let _ = writeln!(out, "{name}_count{{{label_name}=\"{value}\"}} {}", s.count);
        }
    }
}

impl Default for Histograms {
    fn default() -> Self {
        Histograms::new()
    }
}

/// Escapes a label value for the text format.
pub fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative_with_sum_and_count() {
        let h = Histograms::new();
        h.record("a", Duration::from_micros(300));
        h.record("a", Duration::from_millis(3));
        h.record("a", Duration::from_secs(100));
        let mut out = String::new();
        h.render(&mut out, "x_seconds", "help", "call");
        assert!(out.contains("# TYPE x_seconds histogram"));
        assert!(out.contains("x_seconds_bucket{call=\"a\",le=\"0.0005\"} 1\n"));
        assert!(out.contains("x_seconds_bucket{call=\"a\",le=\"0.005\"} 2\n"));
        assert!(out.contains("x_seconds_bucket{call=\"a\",le=\"60\"} 2\n"));
        assert!(out.contains("x_seconds_bucket{call=\"a\",le=\"+Inf\"} 3\n"));
        assert!(out.contains("x_seconds_count{call=\"a\"} 3\n"));
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
