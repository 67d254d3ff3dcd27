//! What stopping a container needs, kept in the container's own labels.
//!
//! A pod whose manifest goes away while the agent is down has no spec left
//! when the agent comes back: only containerd still knows its containers.
//! To stop them as the pod asked (preStop hook, grace period, the image's
//! stop signal) rather than with an immediate SIGKILL, each container
//! carries those three in its labels, as the kubelet keeps the preStop
//! handler and grace period in container annotations.
//!
//! Labels are read back as untrusted: anyone with access to containerd can
//! set them, so reading is bounded (at most [`MAX_PARTS`] labels of at most
//! [`LABEL_LIMIT`] bytes for the handler, short decimal numbers otherwise)
//! and tolerant: a missing or malformed label means the default (no preStop,
//! the minimum grace period, SIGTERM), with a problem to log.

use std::collections::HashMap;
use std::ops::RangeInclusive;
use std::time::Duration;

use k8s_openapi::api::core::v1::LifecycleHandler;

/// The preStop handler as JSON, or its first part `<key>.1` when split.
pub const PRE_STOP_HANDLER: &str = "io.podkeeper.container.prestop-handler";
/// The pod's `terminationGracePeriodSeconds` when the container started.
pub const GRACE_PERIOD: &str = "io.podkeeper.pod.termination-grace-period";
/// The image's stop signal as a number.
pub const STOP_SIGNAL: &str = "io.podkeeper.container.stop-signal";

/// containerd refuses a label whose key and value together are longer.
pub const LABEL_LIMIT: usize = 4096;
/// A handler too long for one label is split over at most this many.
pub const MAX_PARTS: usize = 16;

/// What a container gets when its labels say nothing usable: the kubelet's
/// `minimumGracePeriodInSeconds`.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(2);

/// The longest grace period read back, as the API's int64 seconds allow.
const MAX_GRACE_SECONDS: u64 = i64::MAX as u64;
/// The highest signal number (SIGRTMAX on Linux).
const MAX_SIGNAL: u64 = 64;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StopLabelError {
    #[error("the preStop handler is {bytes} bytes as JSON, more than the {limit} container labels can keep")]
    HandlerTooLarge { bytes: usize, limit: usize },
}

/// How to stop one container, as kept in its labels.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StopLabels {
    pub pre_stop: Option<LifecycleHandler>,
    pub grace_period: Option<Duration>,
    pub stop_signal: Option<i32>,
}

impl StopLabels {
    /// The grace period, or [`DEFAULT_GRACE`] when unknown.
    pub fn grace(&self) -> Duration {
        self.grace_period.unwrap_or(DEFAULT_GRACE)
    }

    /// The stop signal, or SIGTERM when unknown.
    pub fn signal(&self) -> i32 {
        self.stop_signal.unwrap_or(libc::SIGTERM)
    }

    /// Adds these to `labels`. The grace period and signal always fit; a
    /// handler longer than [`MAX_PARTS`] labels is left out (the container
    /// can still run; only a stop without its spec would miss the hook).
    pub fn insert_into(&self, labels: &mut HashMap<String, String>) -> Result<(), StopLabelError> {
        if let Some(grace) = self.grace_period {
            labels.insert(GRACE_PERIOD.into(), grace.as_secs().to_string());
        }
        if let Some(signal) = self.stop_signal {
            labels.insert(STOP_SIGNAL.into(), signal.to_string());
        }
        let Some(handler) = &self.pre_stop else {
            return Ok(());
        };
        let json = serde_json::to_string(handler).unwrap_or_default();
        if PRE_STOP_HANDLER.len() + json.len() <= LABEL_LIMIT {
            labels.insert(PRE_STOP_HANDLER.into(), json);
            return Ok(());
        }
        let parts = split(&json, part_capacity());
        if parts.len() > MAX_PARTS {
            return Err(StopLabelError::HandlerTooLarge {
                bytes: json.len(),
                limit: MAX_PARTS * part_capacity(),
            });
        }
        for (n, part) in parts.into_iter().enumerate() {
            labels.insert(part_key(n + 1), part.to_string());
        }
        Ok(())
    }

    /// Reads these back from a container's labels; each field falls back to
    /// its default on its own, and each problem is returned for the log.
    pub fn from_labels(labels: &HashMap<String, String>) -> (StopLabels, Vec<String>) {
        let mut problems = Vec::new();
        let mut field = |key: &str, range: RangeInclusive<u64>| -> Option<u64> {
            let text = labels.get(key)?;
            let number = parse_number(text, range);
            if number.is_none() {
                problems.push(format!("label {key}: {} is not usable", shown(text)));
            }
            number
        };
        let grace = field(GRACE_PERIOD, 0..=MAX_GRACE_SECONDS);
        let signal = field(STOP_SIGNAL, 1..=MAX_SIGNAL);
        let pre_stop = match handler_json(labels) {
            Ok(None) => None,
            Ok(Some(json)) => match serde_json::from_str::<LifecycleHandler>(&json) {
                Ok(handler) => Some(handler),
                Err(e) => {
                    problems.push(format!("label {PRE_STOP_HANDLER}: not a handler: {e}"));
                    None
                }
            },
            Err(problem) => {
                problems.push(problem);
                None
            }
        };
        let labels = StopLabels {
            pre_stop,
            grace_period: grace.map(Duration::from_secs),
            stop_signal: signal.map(|s| s as i32),
        };
        (labels, problems)
    }
}

/// The handler's JSON: one label, or the parts `.1`, `.2`, … up to the
/// first missing one. Every part is bounded, so is the whole.
fn handler_json(labels: &HashMap<String, String>) -> Result<Option<String>, String> {
    let too_long = |key: &str| format!("label {key}: longer than {LABEL_LIMIT} bytes");
    if let Some(json) = labels.get(PRE_STOP_HANDLER) {
        if json.len() > LABEL_LIMIT {
            return Err(too_long(PRE_STOP_HANDLER));
        }
        return Ok(Some(json.clone()));
    }
    let mut json = String::new();
    for n in 1..=MAX_PARTS {
        let key = part_key(n);
        let Some(part) = labels.get(&key) else {
            break;
        };
        if part.len() > LABEL_LIMIT {
            return Err(too_long(&key));
        }
        json.push_str(part);
    }
    Ok((!json.is_empty()).then_some(json))
}

/// How many bytes of JSON one part label holds next to its longest key.
fn part_capacity() -> usize {
    LABEL_LIMIT - part_key(MAX_PARTS).len()
}

fn part_key(n: usize) -> String {
    format!("{PRE_STOP_HANDLER}.{n}")
}

/// `text` in pieces of at most `capacity` bytes, cut on character
/// boundaries (labels are strings).
fn split(text: &str, capacity: usize) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        let mut end = capacity.min(rest.len());
        while !rest.is_char_boundary(end) {
            end -= 1;
        }
        let (part, tail) = rest.split_at(end);
        parts.push(part);
        rest = tail;
    }
    parts
}

/// A plain decimal number in `range`: no sign, no spaces, at most 20
/// digits, so a hostile label cannot make parsing expensive.
fn parse_number(text: &str, range: RangeInclusive<u64>) -> Option<u64> {
    if text.is_empty() || text.len() > 20 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse::<u64>().ok().filter(|n| range.contains(n))
}

/// A label value for a log line: quoted and cut short.
fn shown(text: &str) -> String {
    let cut: String = text.chars().take(64).collect();
    format!("{cut:?}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{ExecAction, HTTPGetAction};
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

    fn exec(command: &[&str]) -> LifecycleHandler {
        LifecycleHandler {
            exec: Some(ExecAction {
                command: Some(command.iter().map(|s| s.to_string()).collect()),
            }),
            ..Default::default()
        }
    }

    fn round_trip(stop: &StopLabels) -> (HashMap<String, String>, StopLabels) {
        let mut labels = HashMap::new();
        stop.insert_into(&mut labels).unwrap();
        let (back, problems) = StopLabels::from_labels(&labels);
        assert_eq!(problems, Vec::<String>::new());
        (labels, back)
    }

    #[test]
    fn a_short_handler_grace_period_and_signal_round_trip_in_three_labels() {
        let stop = StopLabels {
            pre_stop: Some(LifecycleHandler {
                http_get: Some(HTTPGetAction {
                    path: Some("/quit".into()),
                    port: IntOrString::Int(8080),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            grace_period: Some(Duration::from_secs(45)),
            stop_signal: Some(libc::SIGQUIT),
        };
        let (labels, back) = round_trip(&stop);
        assert_eq!(back, stop);
        assert_eq!(labels.len(), 3);
        assert_eq!(labels[GRACE_PERIOD], "45");
        assert_eq!(labels[STOP_SIGNAL], "3");
    }

    #[test]
    fn a_long_handler_is_split_within_the_label_limit_and_joined_back() {
        // Multi-byte characters, so a cut could land inside one.
        let long = "é".repeat(10_000);
        let stop = StopLabels {
            pre_stop: Some(exec(&["sh", "-c", &long])),
            ..Default::default()
        };
        let (labels, back) = round_trip(&stop);
        assert_eq!(back, stop);
        assert!(!labels.contains_key(PRE_STOP_HANDLER));
        assert!(labels.contains_key(&part_key(5)));
        for (key, value) in &labels {
            assert!(key.len() + value.len() <= LABEL_LIMIT, "{key}");
        }
    }

    #[test]
    fn a_handler_longer_than_every_part_is_refused_but_the_rest_kept() {
        let stop = StopLabels {
            pre_stop: Some(exec(&["x".repeat(MAX_PARTS * LABEL_LIMIT).as_str()])),
            grace_period: Some(Duration::from_secs(5)),
            stop_signal: None,
        };
        let mut labels = HashMap::new();
        let error = stop.insert_into(&mut labels).unwrap_err();
        assert!(matches!(error, StopLabelError::HandlerTooLarge { .. }));
        assert_eq!(labels.len(), 1);
        assert_eq!(
            StopLabels::from_labels(&labels).0.grace(),
            Duration::from_secs(5)
        );
    }

    #[test]
    fn missing_labels_mean_the_defaults_without_problems() {
        let (stop, problems) = StopLabels::from_labels(&HashMap::new());
        assert_eq!(stop, StopLabels::default());
        assert!(problems.is_empty());
        assert_eq!(stop.grace(), DEFAULT_GRACE);
        assert_eq!(stop.signal(), libc::SIGTERM);
    }

    #[test]
    fn hostile_values_fall_back_to_the_defaults_one_field_at_a_time() {
        let hostile = [
            (GRACE_PERIOD, "-1"),
            (GRACE_PERIOD, "+5"),
            (GRACE_PERIOD, " 5"),
            (GRACE_PERIOD, "99999999999999999999"),
            (GRACE_PERIOD, &"9".repeat(100_000)),
            (GRACE_PERIOD, "1e9"),
            (STOP_SIGNAL, "0"),
            (STOP_SIGNAL, "65"),
            (STOP_SIGNAL, "SIGTERM"),
            (STOP_SIGNAL, "-9"),
            (PRE_STOP_HANDLER, "{"),
            (
                PRE_STOP_HANDLER,
                "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[",
            ),
            (PRE_STOP_HANDLER, "{\"exec\":{\"command\":\"not a list\"}}"),
            (PRE_STOP_HANDLER, &"x".repeat(LABEL_LIMIT + 1)),
        ];
        for (key, value) in hostile {
            let mut labels = HashMap::from([
                (GRACE_PERIOD.to_string(), "7".to_string()),
                (STOP_SIGNAL.to_string(), "3".to_string()),
            ]);
            labels.insert(key.into(), value.into());
            let (stop, problems) = StopLabels::from_labels(&labels);
            assert_eq!(problems.len(), 1, "{key}={value:.40}: {problems:?}");
            assert!(problems[0].len() < 400, "{}", problems[0]);
            assert!(stop.pre_stop.is_none(), "{key}={value:.40}");
            match key {
                GRACE_PERIOD => assert_eq!(stop.grace(), DEFAULT_GRACE),
                STOP_SIGNAL => assert_eq!(stop.signal(), libc::SIGTERM),
                _ => assert_eq!(
                    (stop.grace(), stop.signal()),
                    (Duration::from_secs(7), libc::SIGQUIT)
                ),
            }
        }
    }

    #[test]
    fn parts_are_read_up_to_the_first_gap_and_no_further_than_the_last_part() {
        let json = serde_json::to_string(&exec(&["pre"])).unwrap();
        let (head, tail) = json.split_at(5);
        let mut labels = HashMap::from([(part_key(1), head.to_string())]);
        labels.insert(part_key(3), tail.to_string());
        let (stop, problems) = StopLabels::from_labels(&labels);
        assert!(stop.pre_stop.is_none());
        assert_eq!(problems.len(), 1);
        labels.insert(part_key(2), tail.to_string());
        labels.remove(&part_key(3));
        labels.insert(part_key(MAX_PARTS + 1), "garbage".into());
        let (stop, problems) = StopLabels::from_labels(&labels);
        assert_eq!(stop.pre_stop, Some(exec(&["pre"])));
        assert!(problems.is_empty());
    }
}
