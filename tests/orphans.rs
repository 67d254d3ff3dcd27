//! End-to-end: a pod whose manifest goes away while the agent is down is
//! stopped as the pod asked once the agent is back (preStop hook, then the
//! stop signal, SIGKILL only after the grace period), and a new pod with
//! the same name starts only once the old one is gone.
//!
//! Needs root. The test starts its own containerd and agent and removes
//! everything when done.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::agent::{start_with_busybox, NODE};
use common::containerd::e2e_enabled;
use common::tasks::{container_ids, tasks};

const GRACE_SECONDS: u64 = 4;

/// The old version: a preStop hook and a container that outlives SIGTERM,
/// both writing to a host directory the test reads.
fn old_pod(marks: &Path) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: orphan}}
spec:
  terminationGracePeriodSeconds: {GRACE_SECONDS}
  volumes:
  - name: marks
    hostPath: {{path: {marks}, type: Directory}}
  containers:
  - name: app
    image: podkeeper.local/busybox:latest
    command:
    - sh
    - -c
    - |
      trap 'echo old-term >> /marks/log; while true; do echo old-alive >> /marks/log; sleep 0.3; done' TERM
      echo old-started >> /marks/log
      while true; do sleep 0.2; done
    volumeMounts: [{{name: marks, mountPath: /marks}}]
    lifecycle:
      preStop:
        exec: {{command: [sh, -c, 'echo old-prestop >> /marks/log']}}
"#,
        marks = marks.display()
    )
}

/// The new version: the same pod name, another spec (so another UID).
fn new_pod(marks: &Path) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: orphan}}
spec:
  terminationGracePeriodSeconds: 1
  volumes:
  - name: marks
    hostPath: {{path: {marks}, type: Directory}}
  containers:
  - name: app
    image: podkeeper.local/busybox:latest
    command: [sh, -c, 'echo new-started >> /marks/log; while true; do sleep 1; done']
    volumeMounts: [{{name: marks, mountPath: /marks}}]
"#,
        marks = marks.display()
    )
}

#[test]
fn a_pod_removed_while_the_agent_was_down_gets_its_pre_stop_and_grace_period_before_its_successor()
{
    if !e2e_enabled(
        "a_pod_removed_while_the_agent_was_down_gets_its_pre_stop_and_grace_period_before_its_successor",
    ) {
        return;
    }
    let namespace = "e2e-orphans";
    let (containerd, mut agent) = start_with_busybox(namespace);
    let marks = containerd.dir().join("marks");
    std::fs::create_dir_all(&marks).unwrap();
    let log = marks.join("log");
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();

    agent.write_manifest("old.yaml", &old_pod(&marks));
    let name = format!("orphan-{NODE}");
    agent.wait_running(&name, 1, Duration::from_secs(30));
    agent.wait_until(
        "the old container's first line",
        Duration::from_secs(10),
        || read_log().contains("old-started"),
    );
    let old_uid = agent.pod(&name).unwrap()["metadata"]["uid"]
        .as_str()
        .unwrap()
        .to_string();
    let old_prefix: String = format!(
        "pk-{}",
        old_uid
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .take(16)
            .collect::<String>()
    );

    agent.kill();
    agent.remove_manifest("old.yaml");
    agent.write_manifest("new.yaml", &new_pod(&marks));
    let restarted = Instant::now();
    agent.restart().expect("restarting the agent");
    agent.wait_until("the new pod's container", Duration::from_secs(60), || {
        read_log().contains("new-started")
    });
    let waited = restarted.elapsed();

    let text = read_log();
    let lines: Vec<&str> = text.lines().collect();
    let first = |word: &str| lines.iter().position(|l| *l == word);
    let pre_stop = first("old-prestop").unwrap_or_else(|| panic!("no preStop line:\n{text}"));
    let term = first("old-term").unwrap_or_else(|| panic!("no SIGTERM line:\n{text}"));
    assert!(pre_stop < term, "preStop ran before SIGTERM:\n{text}");
    assert!(
        lines[term..].contains(&"old-alive"),
        "the old container was left running after SIGTERM:\n{text}"
    );
    let last_old = lines.iter().rposition(|l| l.starts_with("old-")).unwrap();
    let new_start = first("new-started").unwrap();
    assert!(
        new_start > last_old,
        "the new pod started only after the old container was gone:\n{text}"
    );
    assert!(
        waited >= Duration::from_secs(GRACE_SECONDS),
        "SIGKILL only after the {GRACE_SECONDS} s grace period; the new pod started after {waited:?}"
    );
    let left: Vec<String> = container_ids(&containerd, namespace)
        .into_iter()
        .filter(|id| id.starts_with(&old_prefix))
        .collect();
    assert!(left.is_empty(), "the old pod's containers remain: {left:?}");
    let agent_log = agent.log();
    assert!(
        agent_log.contains("waiting for the pod's previous version to stop"),
        "the new pod was held back:\n{agent_log}"
    );

    agent.remove_manifest("new.yaml");
    agent.wait_until("every task gone", Duration::from_secs(20), || {
        tasks(&containerd, namespace).is_empty()
    });
    eprintln!("the new pod started {waited:?} after the agent came back");
}
