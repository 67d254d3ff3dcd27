//! End-to-end: a pod's identity never becomes a host path. A manifest whose
//! `metadata.uid` is an absolute path, or climbs out of the state directory
//! with `..`, is refused with a `FailedValidation` warning naming the file
//! and the field; the directories it points at stay untouched and the
//! node's other pods keep running.
//!
//! Needs root. The test starts its own containerd and agent and removes
//! everything when done.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::agent::{start_with_busybox, Agent, NODE};
use common::containerd::e2e_enabled;
use common::tasks::{running_task_pid, tasks};
use podkeeper::host::{remove_tree, SafePath};
use serde_json::Value;

/// A pod running `sleep`; `NAME` and `UID_LINE` are replaced.
const POD: &str = "apiVersion: v1
kind: Pod
metadata:
  name: NAME
UID_LINE
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: app
    image: podkeeper.local/busybox:latest
    command: [sleep, '3600']
";

fn pod(name: &str, uid: Option<&str>) -> String {
    let uid_line = uid.map(|u| format!("  uid: {u:?}")).unwrap_or_default();
    POD.replace("NAME", name).replace("UID_LINE", &uid_line)
}

/// `podkeeper events -o json`: the Events of the List it prints.
fn events(agent: &Agent) -> Vec<Value> {
    let out = agent.cli(&["events", "-o", "json"]);
    assert!(
        out.status.success(),
        "podkeeper events: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list: Value = serde_json::from_slice(&out.stdout).expect("events -o json is JSON");
    list["items"].as_array().cloned().unwrap_or_default()
}

/// A directory with files in it, standing for host data.
fn victim(dir: &Path) {
    std::fs::create_dir_all(dir.join("sub")).expect("creating the victim directory");
    std::fs::write(dir.join("precious"), "host data").expect("writing the victim file");
    std::fs::write(dir.join("sub/precious"), "host data").expect("writing the victim file");
}

fn assert_untouched(dir: &Path, agent: &Agent) {
    assert_eq!(
        std::fs::read_to_string(dir.join("precious"))
            .ok()
            .as_deref(),
        Some("host data"),
        "{} or its file is gone\nagent log:\n{}",
        dir.display(),
        agent.log()
    );
}

#[test]
fn a_uid_that_is_a_path_is_refused_and_deletes_nothing() {
    if !e2e_enabled("a_uid_that_is_a_path_is_refused_and_deletes_nothing") {
        return;
    }
    let (containerd, mut agent) = start_with_busybox("e2e-security-paths");
    agent
        .restart_with_flags(&["--manifest-resync-seconds", "1"])
        .expect("restarting the agent with a short re-list");

    // A valid pod with a real UID, as `kubectl get pod -o yaml` shows it.
    let keep_uid = "3f2b1c9e-5d4a-4e7b-9c1d-2a6f8e0b4c7d";
    agent.write_manifest("keep.yaml", &pod("keep", Some(keep_uid)));
    let keep = format!("keep-{NODE}");
    agent.wait_running(&keep, 1, Duration::from_secs(60));
    assert_eq!(agent.pod(&keep).unwrap()["metadata"]["uid"], keep_uid);
    let keep_pid = running_task_pid(&containerd, &agent.namespace, "-c-app-");

    // One victim named by its absolute path; one reached by climbing from
    // `<state>/pods/<uid>` (the agent's directories sit side by side).
    let absolute = containerd.dir().join("victim-absolute");
    victim(&absolute);
    let relative = agent.state.parent().unwrap().join("victim-relative");
    victim(&relative);
    let bad = [
        ("absolute.yaml", "absolute", absolute.display().to_string()),
        (
            "relative.yaml",
            "relative",
            "../../victim-relative".to_string(),
        ),
    ];
    for (file, name, uid) in &bad {
        agent.write_manifest(file, &pod(name, Some(uid)));
    }

    // Handled: refused with a warning, or (without the check) run as a pod
    // whose worker has released its sandbox once already.
    let handled = |file: &str, name: &str| {
        let path = agent.manifests.join(file).display().to_string();
        let warned = events(&agent)
            .iter()
            .any(|e| e["involvedObject"]["name"] == path.as_str());
        let ran = agent
            .pod(&format!("{name}-{NODE}"))
            .is_some_and(|p| p["status"]["phase"].is_string());
        warned || ran
    };
    agent.wait_until(
        "both bad manifests handled",
        Duration::from_secs(30),
        || bad.iter().all(|(file, name, _)| handled(file, name)),
    );
    assert_untouched(&relative, &agent);
    assert_untouched(&absolute, &agent);

    let all = events(&agent);
    for (file, name, uid) in &bad {
        let path = agent.manifests.join(file).display().to_string();
        let warning = all
            .iter()
            .find(|e| e["involvedObject"]["name"] == path.as_str())
            .unwrap_or_else(|| panic!("no event for {path}: {all:#?}"));
        assert_eq!(warning["type"], "Warning");
        assert_eq!(warning["reason"], "FailedValidation", "{warning:#}");
        let message = warning["message"].as_str().unwrap();
        assert!(
            message.starts_with(&format!("{path}: metadata.uid: ")) && message.contains(uid),
            "{message}"
        );
        assert!(agent.pod(&format!("{name}-{NODE}")).is_none());
        let logged = agent.log().lines().any(|l| {
            l.contains("WARN") && l.contains(&format!("file={path}")) && l.contains("metadata.uid")
        });
        assert!(logged, "no log line names {path}:\n{}", agent.log());
    }

    // Several re-lists later nothing changed: the victims are there and the
    // valid pod runs on in the same process.
    std::thread::sleep(Duration::from_secs(3));
    assert_untouched(&absolute, &agent);
    assert_untouched(&relative, &agent);
    assert_eq!(
        running_task_pid(&containerd, &agent.namespace, "-c-app-"),
        keep_pid
    );
    assert!(agent.is_running(), "the agent exited:\n{}", agent.log());
}

/// A bind mount the test made; unmounted when dropped, whatever happened.
struct BindMount(std::path::PathBuf);

impl BindMount {
    fn new(source: &Path, target: &Path) -> BindMount {
        let status = Command::new("mount")
            .arg("--bind")
            .args([source, target])
            .status()
            .expect("running mount");
        assert!(status.success(), "mount --bind: {status}");
        BindMount(target.to_path_buf())
    }
}

impl Drop for BindMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn removing_a_pod_never_empties_a_mount_inside_its_directory() {
    if !e2e_enabled("removing_a_pod_never_empties_a_mount_inside_its_directory") {
        return;
    }
    let (containerd, agent) = start_with_busybox("e2e-security-mount");
    agent.write_manifest("web.yaml", &pod("web", None));
    let name = format!("web-{NODE}");
    agent.wait_running(&name, 1, Duration::from_secs(60));
    let uid = agent.pod(&name).unwrap()["metadata"]["uid"]
        .as_str()
        .unwrap()
        .to_string();

    // A host directory bind-mounted into the pod's state directory (a stray
    // mount an operator or a tool left there).
    let victim_dir = containerd.dir().join("victim-mounted");
    victim(&victim_dir);
    let stray = agent.state.join("pods").join(&uid).join("stray");
    std::fs::create_dir(&stray).expect("creating the mount point");
    let mount = BindMount::new(&victim_dir, &stray);

    agent.remove_manifest("web.yaml");
    agent.wait_until("the pod removed", Duration::from_secs(60), || {
        agent.log().contains("pod removed")
    });
    assert!(tasks(&containerd, &agent.namespace).is_empty());
    assert_untouched(&victim_dir, &agent);
    let refused = agent
        .log()
        .lines()
        .any(|l| l.contains("cannot remove the pod's files") && l.contains("mount point"));
    assert!(refused, "no warning about the mount:\n{}", agent.log());
    drop(mount);
}

#[test]
fn remove_tree_never_enters_or_removes_a_mount() {
    if !e2e_enabled("remove_tree_never_enters_or_removes_a_mount") {
        return;
    }
    let tmp = tempfile::tempdir().expect("a temporary directory");
    let victim_dir = tmp.path().join("victim");
    victim(&victim_dir);
    let base = SafePath::base(tmp.path().join("state"));
    // A mount deep inside the tree, and a tree that is a mount itself.
    let nested = base.join(&["pods", "nested"]).unwrap();
    let point = nested.path().join("a/b");
    std::fs::create_dir_all(&point).unwrap();
    std::fs::write(nested.path().join("a/file"), "x").unwrap();
    let top = base.join(&["pods", "top"]).unwrap();
    std::fs::create_dir_all(top.path()).unwrap();
    let _mounts = [
        BindMount::new(&victim_dir, &point),
        BindMount::new(&victim_dir, &top.path()),
    ];
    for tree in [&nested, &top] {
        let result = remove_tree(tree);
        let kept = |file: &str| victim_dir.join(file).exists();
        assert!(
            kept("precious") && kept("sub/precious"),
            "emptied through a mount"
        );
        let err = result.expect_err("a mount is an error");
        assert!(err.to_string().contains("mount point"), "{err}");
    }
}
