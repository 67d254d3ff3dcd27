//! End-to-end: blocking filesystem work stays off the agent's async
//! runtime. Removing a pod whose emptyDir holds 200,000 files walks and
//! unlinks every one of them; meanwhile another pod's liveness probe
//! (every second, a 1 s timeout, one failure restarts) keeps passing.
//!
//! Needs root. Starts its own containerd and agent and removes everything
//! when done.

mod common;

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::agent::{request, start_with_busybox, Agent, NODE};
use common::containerd::e2e_enabled;
use serde_json::Value;

const FILES: usize = 200_000;

const PROBED: &str = r#"apiVersion: v1
kind: Pod
metadata: {name: probed}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: web
    image: podkeeper.local/busybox:latest
    command: [sh, -c, 'mkdir -p /www && echo ok > /www/healthz && exec httpd -f -p 8080 -h /www']
    livenessProbe:
      httpGet: {path: /healthz, port: 8080}
      initialDelaySeconds: 2
      periodSeconds: 1
      timeoutSeconds: 1
      failureThreshold: 1
"#;

/// Fills its emptyDir with [`FILES`] empty files (many names per `touch`,
/// so it takes seconds, not minutes), then marks it done.
fn filled() -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: filled}}
spec:
  terminationGracePeriodSeconds: 1
  volumes:
  - name: data
    emptyDir: {{}}
  containers:
  - name: fill
    image: podkeeper.local/busybox:latest
    command: [sh, -c, 'cd /data && seq 1 {FILES} | xargs touch && touch done && exec sleep 3600']
    volumeMounts:
    - {{name: data, mountPath: /data}}
"#
    )
}

/// `<state>/pods/<uid>/volumes/empty-dir/data`, once the pod has a UID.
fn volume_of(agent: &Agent, pod: &str) -> Option<PathBuf> {
    let uid = agent.pod(pod)?["metadata"]["uid"].as_str()?.to_string();
    Some(
        agent
            .state
            .join("pods")
            .join(uid)
            .join("volumes/empty-dir/data"),
    )
}

fn events_of(agent: &Agent, pod: &str) -> Vec<Value> {
    let out = agent.cli(&["events", pod, "-o", "json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list: Value = serde_json::from_slice(&out.stdout).expect("events -o json is JSON");
    list["items"].as_array().cloned().unwrap_or_default()
}

fn restarts(agent: &Agent, pod: &str) -> u64 {
    agent.pod(pod).expect("the probed pod")["status"]["containerStatuses"][0]["restartCount"]
        .as_u64()
        .unwrap_or(0)
}

fn file_count(dir: &Path) -> usize {
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

/// Asks the agent's `/healthz` every 100 ms on another thread and keeps
/// the slowest answer: how long the agent's runtime stalled, at worst.
struct SlowestAnswer {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Duration>,
}

impl SlowestAnswer {
    fn watch(socket: PathBuf) -> SlowestAnswer {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut slowest = Duration::ZERO;
            while !stopped.load(Ordering::Relaxed) {
                let asked = Instant::now();
                if let Ok(stream) = UnixStream::connect(&socket) {
                    let _ = request(stream, "/healthz", &[]);
                }
                slowest = slowest.max(asked.elapsed());
                std::thread::sleep(Duration::from_millis(100));
            }
            slowest
        });
        SlowestAnswer { stop, thread }
    }

    fn stop(self) -> Duration {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap_or_default()
    }
}

#[test]
fn removing_a_pod_with_a_huge_empty_dir_does_not_fail_another_pods_probe() {
    if !e2e_enabled("removing_a_pod_with_a_huge_empty_dir_does_not_fail_another_pods_probe") {
        return;
    }
    let (_containerd, agent) = start_with_busybox("e2e-stalls");
    let (probed, filled_pod) = (format!("probed-{NODE}"), format!("filled-{NODE}"));
    agent.write_manifest("probed.yaml", PROBED);
    agent.write_manifest("filled.yaml", &filled());
    agent.wait_running(&probed, 1, Duration::from_secs(60));
    let mut volume = None;
    agent.wait_until(
        "the emptyDir filled with files",
        Duration::from_secs(90),
        || {
            volume = volume_of(&agent, &filled_pod);
            volume.as_ref().is_some_and(|v| v.join("done").exists())
        },
    );
    let volume = volume.expect("the filled pod's volume");
    assert_eq!(file_count(&volume), FILES + 1);
    let uid = agent.pod(&filled_pod).unwrap()["metadata"]["uid"]
        .as_str()
        .unwrap()
        .to_string();
    let unhealthy = |agent: &Agent| {
        events_of(agent, &probed)
            .into_iter()
            .filter(|e| e["reason"] == "Unhealthy")
            .count()
    };
    assert_eq!(
        unhealthy(&agent),
        0,
        "the probe failed before the removal: {:#?}",
        events_of(&agent, &probed)
    );

    let started = Instant::now();
    let watcher = SlowestAnswer::watch(agent.http_socket());
    agent.remove_manifest("filled.yaml");
    agent.wait_until("the filled pod removed", Duration::from_secs(120), || {
        agent.logged_removal(&uid)
    });
    let took = started.elapsed();
    // A figure for the report, not asserted: timings vary between machines.
    eprintln!(
        "slowest /healthz answer during the removal: {:?}",
        watcher.stop()
    );
    assert!(!volume.exists(), "the emptyDir was removed");
    // Verdicts of probes that ran during the removal land within a period.
    std::thread::sleep(Duration::from_secs(3));
    eprintln!("removing the pod with {FILES} files took {took:?}");

    let events = events_of(&agent, &probed);
    let failures: Vec<_> = events
        .iter()
        .filter(|e| e["reason"] == "Unhealthy")
        .collect();
    assert!(
        failures.is_empty(),
        "the probe failed while the pod was removed:\n{failures:#?}\nagent log:\n{}",
        agent.log()
    );
    assert_eq!(
        restarts(&agent, &probed),
        0,
        "the probed container was restarted"
    );
}
