//! End-to-end: manifest files to pods on a real, private containerd.
//!
//! Needs root. Each test starts its own containerd and agent and removes
//! everything when done.

mod common;

use std::time::{Duration, Instant};

use common::agent::{running_containers, start_with_busybox, Agent, BUSYBOX, NODE};
use common::containerd::{e2e_enabled, PrivateContainerd};
use common::tasks::tasks;

fn ns_inode(pid: u32, ns: &str) -> String {
    std::fs::read_link(format!("/proc/{pid}/ns/{ns}"))
        .map(|p| p.display().to_string())
        .unwrap_or_else(|e| format!("unreadable: {e}"))
}

fn container_log(agent: &Agent, container: &str) -> String {
    let mut text = String::new();
    for pod_dir in std::fs::read_dir(&agent.logs)
        .into_iter()
        .flatten()
        .flatten()
    {
        let path = pod_dir.path().join(container).join("0.log");
        text.push_str(&std::fs::read_to_string(path).unwrap_or_default());
    }
    text
}

const TWO_CONTAINERS: &str = r#"apiVersion: v1
kind: Pod
metadata:
  name: web
  labels: {app: web}
spec:
  terminationGracePeriodSeconds: 2
  containers:
  - name: server
    image: podkeeper.local/busybox:latest
    command: [sh, -c, 'while true; do echo hello-from-server | nc -l -p 8000; done']
  - name: client
    image: podkeeper.local/busybox:latest
    command:
    - sh
    - -c
    - |
      for i in $(seq 100); do
        if nc 127.0.0.1 8000 </dev/null | grep -q hello-from-server; then echo REACHED; break; fi
        sleep 0.1
      done
      echo "hostname=$(hostname)"
      exec sleep 3600
"#;

#[test]
fn two_containers_share_the_sandbox_network_and_hostname() {
    if !e2e_enabled("two_containers_share_the_sandbox_network_and_hostname") {
        return;
    }
    let (containerd, agent) = start_with_busybox("e2e-share");
    let written = Instant::now();
    agent.write_manifest("web.yaml", TWO_CONTAINERS);
    let pod_name = format!("web-{NODE}");
    let took = agent.wait_running(&pod_name, 2, Duration::from_secs(5));
    eprintln!(
        "manifest written → both containers running: {took:?} (since write {:?})",
        written.elapsed()
    );
    let pod = agent.pod(&pod_name).unwrap();
    assert_eq!(pod["status"]["phase"], "Running");
    assert_eq!(pod["metadata"]["namespace"], "default");
    assert_eq!(pod["spec"]["nodeName"], NODE);

    let tasks = tasks(&containerd, "e2e-share");
    assert_eq!(tasks.len(), 3, "{tasks:?}");
    let pause = tasks
        .iter()
        .find(|t| t.id.ends_with("-pause"))
        .expect("sandbox task");
    for task in &tasks {
        assert_eq!(task.status, "RUNNING", "{}", task.id);
        for ns in ["net", "ipc", "uts"] {
            assert_eq!(
                ns_inode(task.pid, ns),
                ns_inode(pause.pid, ns),
                "{} {ns}",
                task.id
            );
        }
    }
    let app_pids: Vec<u32> = tasks
        .iter()
        .filter(|t| t.id != pause.id)
        .map(|t| t.pid)
        .collect();
    assert_ne!(
        ns_inode(app_pids[0], "pid"),
        ns_inode(pause.pid, "pid"),
        "pid namespace is private by default"
    );
    assert_ne!(
        ns_inode(pause.pid, "net"),
        ns_inode(std::process::id(), "net"),
        "the pod has its own network"
    );

    agent.wait_until("the client to report", Duration::from_secs(15), || {
        container_log(&agent, "client").contains("hostname=")
    });
    let client = container_log(&agent, "client");
    assert!(
        client.contains("REACHED"),
        "client could not reach the server on 127.0.0.1: {client}"
    );
    assert!(client.contains(&format!("hostname={pod_name}")), "{client}");
}

#[test]
fn the_built_in_pause_image_is_created_and_exits_zero_on_sigterm() {
    if !e2e_enabled("the_built_in_pause_image_is_created_and_exits_zero_on_sigterm") {
        return;
    }
    let containerd = PrivateContainerd::start().expect("starting containerd");
    let namespace = "e2e-pause";
    containerd
        .import_busybox(namespace, BUSYBOX)
        .expect("importing busybox");
    let pause_image = format!("podkeeper.local/pause:{}", podkeeper::VERSION);
    let before = containerd.ctr(namespace, &["images", "ls", "-q"]).unwrap();
    assert!(!before.contains(&pause_image), "{before}");

    let agent = Agent::start(&containerd, namespace).expect("starting the agent");
    let after = containerd.ctr(namespace, &["images", "ls", "-q"]).unwrap();
    assert!(after.contains(&pause_image), "{after}");

    agent.write_manifest(
        "p.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  containers:\n  - {name: c, image: podkeeper.local/busybox:latest, command: [sleep, '3600']}\n",
    );
    let pod_name = format!("p-{NODE}");
    agent.wait_running(&pod_name, 1, Duration::from_secs(10));
    let sandbox = tasks(&containerd, namespace)
        .into_iter()
        .find(|t| t.id.ends_with("-pause"))
        .expect("sandbox task");
    let (sandbox_id, pid) = (sandbox.id, sandbox.pid);
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    assert_eq!(cmdline, b"/pause\0");
    let exe = std::fs::read(format!("/proc/{pid}/exe")).unwrap();
    assert!(
        exe == podkeeper::runtime::pause::PAUSE_BINARY,
        "the sandbox runs the built-in pause binary"
    );

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let exit = runtime.block_on(async {
        let client =
            podkeeper::runtime::containerd::Containerd::connect(containerd.socket(), namespace)
                .await
                .unwrap();
        let waiter = {
            let client = client.clone();
            let id = sandbox_id.clone();
            tokio::spawn(async move { client.wait_task(&id).await })
        };
        tokio::time::sleep(Duration::from_millis(200)).await;
        // SAFETY: plain kill(2) on a PID we just read.
        assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGTERM) }, 0);
        tokio::time::timeout(Duration::from_secs(10), waiter).await
    });
    let exit = exit.expect("pause exits on SIGTERM").unwrap().unwrap();
    assert_eq!(exit.exit_status, 0);
}

#[test]
fn deleting_the_manifest_removes_every_task_container_and_snapshot() {
    if !e2e_enabled("deleting_the_manifest_removes_every_task_container_and_snapshot") {
        return;
    }
    let namespace = "e2e-delete";
    let (containerd, agent) = start_with_busybox(namespace);
    agent.write_manifest("web.yaml", TWO_CONTAINERS);
    let pod_name = format!("web-{NODE}");
    agent.wait_running(&pod_name, 2, Duration::from_secs(10));
    let active_snapshots = || {
        containerd
            .ctr(namespace, &["snapshots", "ls"])
            .unwrap()
            .lines()
            .filter(|l| l.contains("Active"))
            .count()
    };
    assert_eq!(active_snapshots(), 3);

    let removed = Instant::now();
    agent.remove_manifest("web.yaml");
    // terminationGracePeriodSeconds (2) + 5 s.
    agent.wait_until("every object removed", Duration::from_secs(7), || {
        containerd
            .ctr(namespace, &["containers", "ls", "-q"])
            .unwrap()
            .trim()
            .is_empty()
            && tasks(&containerd, namespace).is_empty()
            && active_snapshots() == 0
    });
    eprintln!(
        "manifest removed → all objects gone: {:?}",
        removed.elapsed()
    );
    assert!(agent.pod(&pod_name).is_none());
    // The worker removes the pod's log directory last.
    agent.wait_until(
        "the pod log directory removed",
        Duration::from_secs(2),
        || std::fs::read_dir(&agent.logs).map_or(true, |d| d.count() == 0),
    );
}

/// The kubelet removes a pod whose manifest went away while it was down
/// with its sandbox; so must podkeeper, network and all, knowing the pod
/// only from its containers.
#[test]
fn a_pod_removed_while_the_agent_was_down_is_removed_with_its_network() {
    if !e2e_enabled("a_pod_removed_while_the_agent_was_down_is_removed_with_its_network") {
        return;
    }
    let namespace = "e2e-orphan";
    let (containerd, mut agent) = start_with_busybox(namespace);
    agent.write_manifest("web.yaml", TWO_CONTAINERS);
    let pod_name = format!("web-{NODE}");
    agent.wait_running(&pod_name, 2, Duration::from_secs(10));
    let uid = agent.pod(&pod_name).unwrap()["metadata"]["uid"]
        .as_str()
        .unwrap()
        .to_string();
    let entries = |dir: std::path::PathBuf| -> Vec<String> {
        std::fs::read_dir(dir).map_or(Vec::new(), |d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
    };
    let state = agent.state.clone();
    let netns = || entries(state.join("netns"));
    let cni_results = || entries(state.join("cni").join("results"));
    let pod_state = || entries(state.join("pods"));
    let cgroup = std::path::PathBuf::from(format!(
        "/sys/fs/cgroup/memory{}/besteffort/pod{uid}",
        common::agent::CGROUP_ROOT
    ));
    assert_eq!(netns().len(), 1);
    assert_eq!(cni_results().len(), 1);
    assert!(!pod_state().is_empty());
    assert!(cgroup.exists(), "{} missing", cgroup.display());

    agent.kill();
    agent.remove_manifest("web.yaml");
    agent.restart().unwrap();
    agent.wait_until(
        "the pod and all it held gone",
        // The orphan is stopped as the pod asked: its shells ignore SIGTERM,
        // so each container takes its 2 s grace period before SIGKILL.
        Duration::from_secs(30),
        || {
            containerd
                .ctr(namespace, &["containers", "ls", "-q"])
                .unwrap()
                .trim()
                .is_empty()
                && netns().is_empty()
                && cni_results().is_empty()
                && pod_state().is_empty()
                && !cgroup.exists()
        },
    );
    assert!(tasks(&containerd, namespace).is_empty());
}

#[test]
fn invalid_manifests_are_reported_and_the_other_pods_still_run() {
    if !e2e_enabled("invalid_manifests_are_reported_and_the_other_pods_still_run") {
        return;
    }
    let (_containerd, mut agent) = start_with_busybox("e2e-bad");
    agent.write_manifest("broken.yaml", "apiVersion: v1\nkind: Pod\nmetadata: [\n");
    agent.write_manifest(
        "service.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: s}\n",
    );
    agent.write_manifest(
        "empty.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: e}\nspec: {containers: []}\n",
    );
    agent.write_manifest(
        "unknown-image.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: u}\nspec:\n  containers:\n  - {name: c, image: podkeeper.local/missing:1}\n",
    );
    agent.write_manifest(
        "good.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: good}\nspec:\n  containers:\n  - {name: c, image: podkeeper.local/busybox:latest, command: [sleep, '3600']}\n",
    );
    agent.wait_until("the good pod running", Duration::from_secs(10), || {
        agent
            .pod(&format!("good-{NODE}"))
            .is_some_and(|p| running_containers(&p).len() == 1)
    });
    agent.wait_until(
        "the unknown image reported",
        Duration::from_secs(10),
        || {
            agent.pod(&format!("u-{NODE}")).is_some_and(|p| {
                p["status"]["containerStatuses"][0]["state"]["waiting"]["reason"] == "ErrImagePull"
            })
        },
    );
    let log = agent.log();
    let expect = [
        ("broken.yaml", "invalid YAML"),
        ("service.yaml", "kind: \"Service\" is not a Pod"),
        (
            "empty.yaml",
            "spec.containers: a pod needs at least one container",
        ),
        ("unknown-image.yaml", "podkeeper.local/missing:1"),
    ];
    for (file, reason) in expect {
        assert!(
            log.lines().any(|l| l.contains(file) && l.contains(reason)),
            "no log line names {file} with {reason:?}:\n{log}"
        );
    }
    assert!(agent.pod(&format!("e-{NODE}")).is_none());
    assert!(agent.is_running(), "the agent must not exit on bad input");
}
