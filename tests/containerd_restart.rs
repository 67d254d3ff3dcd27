//! End-to-end: the agent and containerd stop and start independently of
//! each other, and the pods outlive both.
//!
//! Needs root. Each test starts its own containerd and agent; containerd is
//! stopped and started again with the same root, state and socket, so its
//! shims (and the pods' processes) keep running across, as in production.

mod common;

use std::thread;
use std::time::{Duration, Instant};

use common::agent::{running_containers, start_with_busybox, Agent, BUSYBOX, NODE};
use common::containerd::{e2e_enabled, PrivateContainerd};
use common::tasks::container_ids;

/// Two long-running containers, so that one can be killed while the other
/// shows the pod's unaffected part.
const TWO_SLEEPERS: &str = r#"apiVersion: v1
kind: Pod
metadata:
  name: keep
spec:
  terminationGracePeriodSeconds: 2
  containers:
  - {name: victim, image: podkeeper.local/busybox:latest, command: [sleep, '3600']}
  - {name: bystander, image: podkeeper.local/busybox:latest, command: [sleep, '3600']}
"#;

/// Writes [`TWO_SLEEPERS`] and waits until both containers run; returns the
/// pod's full name.
fn run_two_sleepers(agent: &Agent) -> String {
    agent.write_manifest("keep.yaml", TWO_SLEEPERS);
    let pod_name = format!("keep-{NODE}");
    agent.wait_running(&pod_name, 2, Duration::from_secs(10));
    pod_name
}

/// (task ID, PID, status) of every task in `namespace`, sorted.
fn tasks(containerd: &PrivateContainerd, namespace: &str) -> Vec<(String, u32, String)> {
    common::tasks::tasks(containerd, namespace)
        .into_iter()
        .map(|t| (t.id, t.pid, t.status))
        .collect()
}

fn process_exists(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// The status of container `name` in a pod.
fn container_status(pod: &serde_json::Value, name: &str) -> serde_json::Value {
    pod["status"]["containerStatuses"]
        .as_array()
        .and_then(|list| list.iter().find(|c| c["name"] == name))
        .cloned()
        .unwrap_or_default()
}

/// The node events the agent recorded (`podkeeper events`).
fn events(agent: &Agent) -> String {
    let out = agent.cli(&["events"]);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_client_reconnects_after_a_containerd_restart() {
    if !e2e_enabled("the_client_reconnects_after_a_containerd_restart") {
        return;
    }
    let containerd = PrivateContainerd::start().expect("starting containerd");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let client = runtime
        .block_on(podkeeper::runtime::containerd::Containerd::connect(
            containerd.socket(),
            "e2e-client",
        ))
        .expect("connecting");
    runtime
        .block_on(client.version())
        .expect("containerd answers");

    containerd.stop().expect("stopping containerd");
    for _ in 0..2 {
        let error = runtime
            .block_on(client.version())
            .expect_err("containerd is down");
        assert!(error.is_unavailable(), "{error:?}");
    }
    containerd.start_again().expect("starting containerd again");
    runtime
        .block_on(client.version())
        .expect("the same handle works again");
}

#[test]
fn pods_survive_a_containerd_restart_without_duplicates() {
    if !e2e_enabled("pods_survive_a_containerd_restart_without_duplicates") {
        return;
    }
    let namespace = "e2e-ctrd-restart";
    let (containerd, mut agent) = start_with_busybox(namespace);
    let pod_name = run_two_sleepers(&agent);
    let tasks_before = tasks(&containerd, namespace);
    let containers_before = container_ids(&containerd, namespace);
    assert_eq!(tasks_before.len(), 3, "{tasks_before:?}");
    assert_eq!(containers_before.len(), 3, "{containers_before:?}");

    containerd.stop().expect("stopping containerd");
    let down = Instant::now();
    agent.wait_until(
        "the agent to warn that containerd is gone",
        Duration::from_secs(5),
        || agent.log().contains("lost containerd"),
    );
    for (id, pid, _) in &tasks_before {
        assert!(process_exists(*pid), "{id} ({pid}) died with containerd");
    }
    // The API answers from its stores meanwhile.
    let pod = agent.pod(&pod_name).expect("the pod is listed");
    assert_eq!(running_containers(&pod).len(), 2, "{pod}");
    thread::sleep(Duration::from_secs(10).saturating_sub(down.elapsed()));
    assert!(agent.is_running(), "the agent exited:\n{}", agent.log());

    containerd.start_again().expect("starting containerd again");
    let back = Instant::now();
    let took = agent.wait_until("the agent to reconnect", Duration::from_secs(10), || {
        agent.log().contains("containerd is back")
    });
    eprintln!("containerd up again → agent reconnected: {took:?}");
    // Give the workers' re-check time to act, wrongly or not.
    thread::sleep(Duration::from_secs(3).saturating_sub(back.elapsed()));

    assert_eq!(tasks(&containerd, namespace), tasks_before, "tasks changed");
    assert_eq!(
        container_ids(&containerd, namespace),
        containers_before,
        "containers changed"
    );
    let pod = agent.pod(&pod_name).expect("the pod is listed");
    assert_eq!(pod["status"]["phase"], "Running", "{pod}");
    assert_eq!(running_containers(&pod).len(), 2, "{pod}");
    assert!(agent.is_running(), "the agent exited:\n{}", agent.log());
    let events = events(&agent);
    for reason in ["ContainerdUnavailable", "ContainerdAvailable"] {
        assert!(events.contains(reason), "no {reason} event:\n{events}");
    }
}

#[test]
fn the_agent_waits_for_containerd_at_start() {
    if !e2e_enabled("the_agent_waits_for_containerd_at_start") {
        return;
    }
    let namespace = "e2e-ctrd-late";
    let containerd = PrivateContainerd::start().expect("starting containerd");
    containerd
        .import_busybox(namespace, BUSYBOX)
        .expect("importing busybox");
    containerd.stop().expect("stopping containerd");

    // containerd comes up 3 s after the agent; `Agent::start` returns once
    // the agent's HTTP endpoint answers.
    let delay = Duration::from_secs(3);
    let started = Instant::now();
    let agent = thread::scope(|scope| {
        let late = scope.spawn(|| {
            thread::sleep(delay);
            containerd.start_again()
        });
        let agent = Agent::start(&containerd, namespace);
        late.join()
            .expect("the thread starting containerd panicked")
            .expect("starting containerd again");
        agent
    })
    .expect("the agent starts once containerd is up");
    let took = started.elapsed();
    eprintln!("agent started → answering: {took:?} (containerd started after {delay:?})");
    assert!(took >= delay, "the agent answered before containerd was up");
    let log = agent.log();
    let warnings = log
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("containerd is not reachable"))
        .count();
    assert!(warnings >= 2, "no repeated warning while waiting:\n{log}");
    assert!(
        log.contains("retrying in 250ms") && log.contains("retrying in 500ms"),
        "no back-off while waiting:\n{log}"
    );

    let pause_image = format!("podkeeper.local/pause:{}", podkeeper::VERSION);
    let images = containerd.ctr(namespace, &["images", "ls", "-q"]).unwrap();
    assert!(images.contains(&pause_image), "{images}");
    agent.write_manifest(
        "p.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  containers:\n  - {name: c, image: podkeeper.local/busybox:latest, command: [sleep, '3600']}\n",
    );
    let pod_name = format!("p-{NODE}");
    agent.wait_running(&pod_name, 1, Duration::from_secs(10));
    let events = events(&agent);
    assert!(events.contains("ContainerdUnavailable"), "{events}");
}

#[test]
fn sigterm_stops_the_agent_promptly_and_leaves_the_pods_running() {
    if !e2e_enabled("sigterm_stops_the_agent_promptly_and_leaves_the_pods_running") {
        return;
    }
    let namespace = "e2e-sigterm";
    let (containerd, mut agent) = start_with_busybox(namespace);
    run_two_sleepers(&agent);
    let before = tasks(&containerd, namespace);
    assert_eq!(before.len(), 3, "{before:?}");

    let (status, took) = agent
        .terminate(Duration::from_secs(10))
        .expect("the agent exits on SIGTERM");
    eprintln!("SIGTERM → agent exited: {took:?} ({status})");
    assert!(status.success(), "{status}:\n{}", agent.log());
    assert!(took < Duration::from_secs(2), "took {took:?}");
    assert!(agent.log().contains("stopping; the pods keep running"));

    // Anything the agent might still have set off would show by now.
    thread::sleep(Duration::from_secs(1));
    let after = tasks(&containerd, namespace);
    assert_eq!(after, before, "the tasks changed");
    for (id, pid, status) in &after {
        assert_eq!(status, "RUNNING", "{id}");
        assert!(process_exists(*pid), "{id} ({pid})");
    }
}

#[test]
fn a_container_killed_while_containerd_is_down_is_noticed() {
    if !e2e_enabled("a_container_killed_while_containerd_is_down_is_noticed") {
        return;
    }
    let namespace = "e2e-ctrd-kill";
    let (containerd, agent) = start_with_busybox(namespace);
    let pod_name = run_two_sleepers(&agent);
    let before = tasks(&containerd, namespace);
    let (victim_id, victim_pid, _) = before
        .iter()
        .find(|t| t.0.contains("-c-victim-"))
        .cloned()
        .expect("the victim's task");
    let pod = agent.pod(&pod_name).expect("the pod is listed");
    let victim_run = container_status(&pod, "victim");

    containerd.stop().expect("stopping containerd");
    // SAFETY: kill(2) on the PID containerd reported for the victim.
    assert_eq!(
        unsafe { libc::kill(victim_pid as libc::pid_t, libc::SIGKILL) },
        0
    );
    // Its shim, which outlives containerd, reaps it.
    agent.wait_until("the victim to be reaped", Duration::from_secs(5), || {
        !process_exists(victim_pid)
    });
    // The shim retries publishing the exit for about 12.6 s (containerd
    // 1.6: 6 attempts, doubling from 200 ms), then drops it: after a longer
    // outage only the agent's re-check of its tasks can notice.
    thread::sleep(Duration::from_secs(15));
    containerd.start_again().expect("starting containerd again");

    // The pod must not show the killed run as running: either that run's
    // exit, or a new run after it.
    let took = agent.wait_until("the victim's exit to show", Duration::from_secs(10), || {
        let pod = agent.pod(&pod_name).expect("the pod is listed");
        let victim = container_status(&pod, "victim");
        victim["state"]["terminated"]["exitCode"] == 137
            || (victim["lastState"]["terminated"]["exitCode"] == 137
                && victim["restartCount"].as_i64() >= Some(1))
    });
    eprintln!("containerd up again → victim's exit shown: {took:?}");
    let pod = agent.pod(&pod_name).expect("the pod is listed");
    let victim = container_status(&pod, "victim");
    eprintln!("victim before: {victim_run}\nvictim after: {victim}");
    assert!(
        victim["state"]["running"].is_null() || victim["containerID"] != victim_run["containerID"],
        "stale run of {victim_id} shown as running: {victim}"
    );
    let bystander = container_status(&pod, "bystander");
    assert!(bystander["state"]["running"].is_object(), "{bystander}");
    let after = tasks(&containerd, namespace);
    for (id, pid, status) in before.iter().filter(|t| t.0 != victim_id) {
        assert!(
            after.contains(&(id.clone(), *pid, status.clone())),
            "{id} ({pid}) changed: {after:?}"
        );
    }
}
