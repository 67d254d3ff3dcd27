//! Golden tests: each `tests/fixtures/describe/<case>.yaml` holds a pod
//! and its events; `<case>.txt` is the exact expected `describe` text at
//! [`now`] in UTC. After an intended change of output, regenerate with
//!
//! ```sh
//! UPDATE_GOLDEN=1 cargo test --lib api::describe
//! ```
//!
//! and review the diff of the `.txt` files like code. To check them
//! against real kubectl (served by a fake API server), run
//! `python3 tests/fixtures/describe/compare_with_kubectl.py`.

use std::path::PathBuf;

use k8s_openapi::api::core::v1::{Event, Pod};

use super::*;

#[derive(serde::Deserialize)]
struct Fixture {
    pod: Pod,
    #[serde(default)]
    events: Vec<Event>,
}

fn now() -> Timestamp {
    "2026-11-26T12:00:00Z".parse().expect("valid time")
}

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/describe")
}

fn fixture(case: &str) -> Fixture {
    let path = dir().join(format!("{case}.yaml"));
    let text = std::fs::read_to_string(&path).expect("fixture exists");
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn golden(case: &str) {
    let Fixture { pod, events } = fixture(case);
    let got = describe_pod_in(&pod, &events, now(), &TimeZone::UTC);
    let path = dir().join(format!("{case}.txt"));
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, &got).expect("golden file written");
        return;
    }
    let want = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (UPDATE_GOLDEN=1 creates it)", path.display()));
    if got != want {
        panic!(
            "{case}: output differs from {} (UPDATE_GOLDEN=1 to accept)\n--- got ---\n{got}",
            path.display()
        );
    }
}

#[test]
fn golden_running_two_containers() {
    golden("running");
}

#[test]
fn golden_crash_loop() {
    golden("crashloop");
}

#[test]
fn golden_init_and_sidecar_containers() {
    golden("init");
}

#[test]
fn golden_volumes_and_mounts() {
    golden("volumes");
}

#[test]
fn golden_probes() {
    golden("probes");
}

#[test]
fn golden_resources_and_environment() {
    golden("resources-env");
}

#[test]
fn golden_rare_fields() {
    golden("edge");
}

/// The running pod's expected text, spelled out here from kubectl's
/// `describePod` rather than read back from a file this code wrote, so
/// the golden files stand on an independent check of the layout.
#[test]
fn running_pod_matches_kubectl_layout_written_by_hand() {
    let Fixture { pod, events } = fixture("running");
    let got = describe_pod_in(&pod, &events, now(), &TimeZone::UTC);
    let want = "\
Name:         web-node1
Namespace:    default
Node:         node1/192.168.1.10
Start Time:   Thu, 26 Nov 2026 11:50:00 +0000
Labels:       app=web
              tier=frontend
Annotations:  kubernetes.io/config.hash: 5b3c1f0e2a6d4c1e9f4b0d9e8a7b6c5d
              kubernetes.io/config.source: file
Status:       Running
IP:           10.88.0.5
IPs:
  IP:  10.88.0.5
Containers:
  nginx:
    Container ID:   containerd://pk-5b3c1f0e-c-nginx-1
    Image:          docker.io/library/nginx:1.27
    Image ID:       docker.io/library/nginx@sha256:0a399eb16751829e1af26fea27b20c3ec28d7ab1fb72182879dcae1cca21206a
    Ports:          80/TCP, 443/TCP
    Host Ports:     8080/TCP, 0/TCP
    State:          Running
      Started:      Thu, 26 Nov 2026 11:50:02 +0000
    Ready:          True
    Restart Count:  0
    Readiness:      http-get http://:8080/healthz delay=0s timeout=1s period=10s #success=1 #failure=3
    Environment:    <none>
    Mounts:         <none>
  sidecar:
    Container ID:  containerd://pk-5b3c1f0e-c-sidecar-1
    Image:         busybox:1.36
    Image ID:      docker.io/library/busybox@sha256:768e5c6f5cb6db0794eec98dc7a967f40631746c32232b78a3105fb946f3ab83
    Port:          <none>
    Host Port:     <none>
    Command:
      sh
      -c
    Args:
      while true; do
        date; sleep 10
      done
    State:          Running
      Started:      Thu, 26 Nov 2026 11:50:03 +0000
    Ready:          True
    Restart Count:  0
    Environment:
      MODE:  tail
    Mounts:  <none>
Conditions:
  Type                        Status
  PodReadyToStartContainers   True 
  Initialized                 True 
  Ready                       True 
  ContainersReady             True 
  PodScheduled                True 
Volumes:                      <none>
QoS Class:                    BestEffort
Node-Selectors:               <none>
Tolerations:                  :NoExecute op=Exists
Events:
  Type    Reason   Age    From       Message
  ----    ------   ----   ----       -------
  Normal  Pulled   9m59s  podkeeper  Container image \"docker.io/library/nginx:1.27\" already present on machine
  Normal  Created  9m58s  podkeeper  Created container: nginx
  Normal  Started  9m58s  podkeeper  Started container nginx
";
    assert_eq!(got, want);
}

#[test]
fn no_events_and_no_status_print_none() {
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "bare", "namespace": "default"},
        "spec": {"containers": [{"name": "c", "image": "x"}]},
    }))
    .expect("valid pod");
    let text = describe_pod_in(&pod, &[], now(), &TimeZone::UTC);
    assert!(text.contains("\nNode:         <none>\n"), "{text}");
    assert!(
        text.ends_with("Tolerations:      <none>\nEvents:           <none>\n"),
        "{text}"
    );
    assert!(!text.contains("Container ID"), "{text}");
}

#[test]
fn repeated_events_show_count_and_span() {
    let Fixture { events, .. } = fixture("crashloop");
    let intervals: Vec<String> = sorted_events(&events)
        .into_iter()
        .map(|e| event_interval(e, now()))
        .collect();
    assert_eq!(intervals, ["4m", "40s (x6 over 3m59s)", "30s (x5 over 3m)"]);
}

#[test]
fn json_form_carries_the_pod_qos_and_worded_events() {
    let Fixture { pod, events } = fixture("crashloop");
    let value = describe_pod_json(&pod, &events, now());
    assert_eq!(value["pod"]["metadata"]["name"], "crasher-node1");
    assert_eq!(value["qosClass"], "BestEffort");
    let last = &value["events"][2];
    assert_eq!(last["reason"], "BackOff");
    assert_eq!(last["age"], "30s (x5 over 3m)");
    assert_eq!(last["from"], "podkeeper");
    assert_eq!(last["count"], 5);
    assert_eq!(last["fieldPath"], "spec.containers{app}");
}

#[test]
fn secrets_are_shown_by_reference_only() {
    let Fixture { pod, events } = fixture("resources-env");
    let text = describe_pod_in(&pod, &events, now(), &TimeZone::UTC);
    assert!(
        text.contains("<set to the key 'password' in secret 'db'>"),
        "{text}"
    );
}

#[test]
fn probe_urls_escape_their_path_as_go_does() {
    let probe: k8s_openapi::api::core::v1::Probe = serde_json::from_value(serde_json::json!({
        "httpGet": {"path": "/a b?c", "port": 80, "host": "::1"},
    }))
    .expect("valid probe");
    assert_eq!(
        containers::describe_probe(&probe),
        "http-get http://[::1]:80/a%20b%3Fc delay=0s timeout=1s period=10s #success=1 #failure=3"
    );
}

#[test]
fn human_duration_matches_kubernetes() {
    let d = |s: i64| human_duration(jiff::SignedDuration::from_secs(s));
    assert_eq!(d(-5), "<invalid>");
    assert_eq!(d(-1), "0s");
    assert_eq!(d(59), "59s");
    assert_eq!(d(119), "119s");
    assert_eq!(d(120), "2m");
    assert_eq!(d(150), "2m30s");
    assert_eq!(d(600), "10m");
    assert_eq!(d(3 * 3600 + 60), "3h1m");
    assert_eq!(d(8 * 3600), "8h");
    assert_eq!(d(50 * 3600), "2d2h");
    assert_eq!(d(10 * 86400), "10d");
    assert_eq!(d(800 * 86400), "2y70d");
    assert_eq!(d(9 * 365 * 86400), "9y");
}
