//! End-to-end: keeping pods as declared — restarts with back-off, OOM
//! kills, and an agent killed in the middle of starting pods — on a real,
//! private containerd.
//!
//! Needs root. Each test starts its own containerd and agent and removes
//! everything when done.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::agent::{
    running_containers, start_with_busybox, waiting_reason, BUSYBOX, CRASHING_POD, NODE,
};
use common::containerd::e2e_enabled;
use common::tasks::{container_ids, tasks};
use serde_json::Value;

fn container_status<'a>(pod: &'a Value, name: &str) -> Option<&'a Value> {
    pod["status"]["containerStatuses"]
        .as_array()?
        .iter()
        .find(|c| c["name"] == name)
}

fn restart_count(pod: &Value, name: &str) -> u64 {
    container_status(pod, name)
        .and_then(|c| c["restartCount"].as_u64())
        .unwrap_or(0)
}

#[test]
fn a_crashing_container_restarts_after_10_20_40_seconds() {
    if !e2e_enabled("a_crashing_container_restarts_after_10_20_40_seconds") {
        return;
    }
    let (_containerd, agent) = start_with_busybox("e2e-crash");
    agent.write_manifest("crash.yaml", CRASHING_POD);
    let name = format!("crash-{NODE}");
    // When each restart count was first seen.
    let mut seen: BTreeMap<u64, Instant> = BTreeMap::new();
    let mut saw_crash_loop = false;
    let deadline = Instant::now() + Duration::from_secs(120);
    while seen.len() < 5 && Instant::now() < deadline {
        if let Some(pod) = agent.pod(&name) {
            seen.entry(restart_count(&pod, "app"))
                .or_insert_with(Instant::now);
            saw_crash_loop |= waiting_reason(&pod, "app").as_deref() == Some("CrashLoopBackOff");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let times: Vec<(u64, Instant)> = seen.into_iter().collect();
    let gaps: Vec<(u64, f64)> = times
        .windows(2)
        .map(|w| (w[1].0, (w[1].1 - w[0].1).as_secs_f64()))
        .collect();
    eprintln!("restart count reached → seconds since the previous one: {gaps:?}");
    let expected = [(2, 10.0), (3, 20.0), (4, 40.0)];
    for (count, wait) in expected {
        let gap = gaps.iter().find(|(c, _)| *c == count).map(|(_, g)| *g);
        assert!(
            gap.is_some_and(|g| (g - wait).abs() <= 2.0),
            "restart {count} came after {gap:?} s, expected {wait} ± 2 s; all: {gaps:?}\n{}",
            agent.log()
        );
    }
    assert!(saw_crash_loop, "CrashLoopBackOff was shown");
    let pod = agent.pod(&name).unwrap();
    let app = container_status(&pod, "app").unwrap();
    let last = &app["lastState"]["terminated"];
    assert_eq!(last["exitCode"], 1, "{app}");
    assert_eq!(last["reason"], "Error", "{app}");
    assert_eq!(pod["status"]["phase"], "Running");
    let events = agent.cli(&["events", &name]);
    let events = String::from_utf8_lossy(&events.stdout);
    assert!(
        events.contains("BackOff") && events.contains("Back-off restarting failed container app"),
        "{events}"
    );
    let previous = agent.cli(&["logs", "crash", "--previous"]);
    assert!(
        String::from_utf8_lossy(&previous.stdout).contains("starting"),
        "the previous run's log: {previous:?}"
    );
    let yaml = agent.cli(&["get", "pods", "crash", "-o", "yaml"]);
    let yaml = String::from_utf8_lossy(&yaml.stdout);
    assert!(
        yaml.contains("kind: Pod") && yaml.contains("restartCount:"),
        "{yaml}"
    );
}

const MEMORY_HOG: &str = r#"apiVersion: v1
kind: Pod
metadata: {name: hog}
spec:
  restartPolicy: Never
  terminationGracePeriodSeconds: 1
  containers:
  - name: hog
    image: podkeeper.local/busybox:latest
    command: [tail, /dev/zero]
    resources:
      limits: {memory: 16Mi}
"#;

#[test]
fn a_memory_hog_is_oom_killed_with_exit_code_137() {
    if !e2e_enabled("a_memory_hog_is_oom_killed_with_exit_code_137") {
        return;
    }
    let (_containerd, agent) = start_with_busybox("e2e-oom");
    agent.write_manifest("hog.yaml", MEMORY_HOG);
    let name = format!("hog-{NODE}");
    agent.wait_until("the hog terminated", Duration::from_secs(30), || {
        agent.pod(&name).is_some_and(|p| {
            container_status(&p, "hog").is_some_and(|c| c["state"]["terminated"].is_object())
        })
    });
    // The OOM event may trail the exit by a moment.
    agent.wait_until("the OOMKilled reason", Duration::from_secs(5), || {
        let pod = agent.pod(&name).unwrap();
        container_status(&pod, "hog").unwrap()["state"]["terminated"]["reason"] == "OOMKilled"
    });
    let pod = agent.pod(&name).unwrap();
    let terminated = &container_status(&pod, "hog").unwrap()["state"]["terminated"];
    assert_eq!(terminated["exitCode"], 137, "{terminated}");
    assert_eq!(pod["status"]["phase"], "Failed");
}

fn two_container_pod(name: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: {name}}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - {{name: a, image: {BUSYBOX}, command: [sleep, "3600"]}}
  - {{name: b, image: {BUSYBOX}, command: [sleep, "3600"]}}
"#
    )
}

#[test]
fn an_agent_killed_while_starting_ten_pods_adopts_them_without_restarts_or_duplicates() {
    if !e2e_enabled(
        "an_agent_killed_while_starting_ten_pods_adopts_them_without_restarts_or_duplicates",
    ) {
        return;
    }
    let namespace = "e2e-adopt";
    let (containerd, mut agent) = start_with_busybox(namespace);
    for i in 0..10 {
        agent.write_manifest(&format!("p{i}.yaml"), &two_container_pod(&format!("p{i}")));
    }
    // Kill it part-way: some pods up, others not yet.
    let deadline = Instant::now() + Duration::from_secs(30);
    while tasks(&containerd, namespace).len() < 8 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    agent.kill();
    let before: BTreeMap<String, u32> = tasks(&containerd, namespace)
        .into_iter()
        .filter(|t| t.status == "RUNNING")
        .map(|t| (t.id, t.pid))
        .collect();
    eprintln!("{} tasks running when the agent was killed", before.len());
    assert!(before.len() < 30, "the kill came after every pod was up");

    agent.restart().expect("restarting the agent");
    agent.wait_until("all ten pods running", Duration::from_secs(60), || {
        (0..10).all(|i| {
            agent
                .pod(&format!("p{i}-{NODE}"))
                .is_some_and(|p| running_containers(&p).len() == 2)
        })
    });
    let after: BTreeMap<String, u32> = tasks(&containerd, namespace)
        .into_iter()
        .map(|t| (t.id, t.pid))
        .collect();
    for (id, pid) in &before {
        assert_eq!(
            after.get(id),
            Some(pid),
            "{id} was restarted or removed\n{}",
            agent.log()
        );
    }
    assert_eq!(
        after.len(),
        30,
        "one sandbox and two containers per pod: {after:?}"
    );
    let containers = container_ids(&containerd, namespace);
    assert_eq!(
        containers.len(),
        30,
        "no duplicate or orphan containers: {containers:?}"
    );
    let pods: BTreeSet<String> = containers
        .iter()
        .filter_map(|id| id.split('-').nth(1).map(String::from))
        .collect();
    assert_eq!(pods.len(), 10);
    for i in 0..10 {
        let pod = agent.pod(&format!("p{i}-{NODE}")).unwrap();
        for c in ["a", "b"] {
            assert_eq!(restart_count(&pod, c), 0, "p{i}/{c}");
        }
    }
}

const PROBED: &str = r#"apiVersion: v1
kind: Pod
metadata: {name: probed}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: web
    image: podkeeper.local/busybox:latest
    command: [sh, -c, 'mkdir -p /www && echo ok > /www/healthz && httpd -p 8080 -h /www && sleep 6 && rm /www/healthz && exec sleep 3600']
    livenessProbe:
      httpGet: {path: /healthz, port: 8080}
      periodSeconds: 1
      failureThreshold: 2
  - name: never-ready
    image: podkeeper.local/busybox:latest
    command: [sleep, '3600']
    readinessProbe:
      exec: {command: [cat, /tmp/ready]}
      periodSeconds: 1
"#;

#[test]
fn a_failing_liveness_probe_restarts_and_a_failing_readiness_probe_only_unreadies() {
    if !e2e_enabled(
        "a_failing_liveness_probe_restarts_and_a_failing_readiness_probe_only_unreadies",
    ) {
        return;
    }
    let (_containerd, agent) = start_with_busybox("e2e-probes");
    agent.write_manifest("probed.yaml", PROBED);
    let name = format!("probed-{NODE}");
    agent.wait_until(
        "the web container restarted",
        Duration::from_secs(40),
        || {
            agent
                .pod(&name)
                .is_some_and(|p| restart_count(&p, "web") >= 1)
        },
    );
    let pod = agent.pod(&name).unwrap();
    assert_eq!(
        restart_count(&pod, "never-ready"),
        0,
        "readiness never restarts"
    );
    assert_eq!(
        container_status(&pod, "never-ready").unwrap()["ready"],
        false
    );
    let ready = pod["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Ready")
        .unwrap()
        .clone();
    assert_eq!(ready["status"], "False", "{ready}");
    assert!(
        ready["message"].as_str().unwrap().contains("never-ready"),
        "{ready}"
    );
    let events = agent.cli(&["events", &name]);
    let events = String::from_utf8_lossy(&events.stdout);
    for expected in [
        "Liveness probe failed: HTTP probe failed with statuscode: 404",
        "Container web failed liveness probe, will be restarted",
        "Readiness probe failed:",
    ] {
        assert!(events.contains(expected), "{expected:?} missing:\n{events}");
    }
}

const STUBBORN: &str = r#"apiVersion: v1
kind: Pod
metadata: {name: stubborn}
spec:
  terminationGracePeriodSeconds: 3
  containers:
  - name: app
    image: podkeeper.local/busybox:latest
    command: [sh, -c, 'trap "echo got-term" TERM; echo started; while true; do sleep 0.2; done']
    lifecycle:
      preStop:
        exec: {command: [sh, -c, 'echo pre-stop > /proc/1/fd/1']}
"#;

#[test]
fn pre_stop_runs_before_sigterm_and_a_container_ignoring_it_is_killed_after_the_grace_period() {
    if !e2e_enabled(
        "pre_stop_runs_before_sigterm_and_a_container_ignoring_it_is_killed_after_the_grace_period",
    ) {
        return;
    }
    let namespace = "e2e-grace";
    let (containerd, agent) = start_with_busybox(namespace);
    agent.write_manifest("stubborn.yaml", STUBBORN);
    let name = format!("stubborn-{NODE}");
    agent.wait_running(&name, 1, Duration::from_secs(20));
    let log_dir = std::fs::read_dir(&agent.logs)
        .unwrap()
        .flatten()
        .find(|d| d.file_name().to_string_lossy().contains("stubborn"))
        .unwrap()
        .path()
        .join("app/0.log");
    agent.wait_until("the container's first line", Duration::from_secs(5), || {
        std::fs::read_to_string(&log_dir).is_ok_and(|t| t.contains("started"))
    });
    let removed = Instant::now();
    agent.remove_manifest("stubborn.yaml");
    // The pod's log directory goes with the pod: read the log while it lasts.
    let mut log = String::new();
    while removed.elapsed() < Duration::from_secs(15) {
        match std::fs::read_to_string(&log_dir) {
            Ok(text) => log = text,
            Err(_) => break,
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let gone = removed.elapsed();
    let pre_stop = log
        .find("pre-stop")
        .unwrap_or_else(|| panic!("no pre-stop line:\n{log}"));
    let term = log
        .find("got-term")
        .unwrap_or_else(|| panic!("no SIGTERM line:\n{log}"));
    assert!(pre_stop < term, "preStop ran before SIGTERM:\n{log}");
    assert!(
        gone >= Duration::from_secs(3),
        "SIGKILL only after the 3 s grace period, gone after {gone:?}"
    );
    agent.wait_until("every task gone", Duration::from_secs(10), || {
        tasks(&containerd, namespace).is_empty()
    });
    eprintln!("removal with a SIGTERM-ignoring container took {gone:?}");
}
