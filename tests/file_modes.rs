//! End-to-end: what podkeeper writes is not readable by other local users.
//! Container logs are 0640 in 0750 directories; the state directory is
//! 0700 and the state files in it 0600; a state or log directory left
//! looser (by an older version, or by hand) is tightened at start with a
//! log line, and one owned by another user makes the agent refuse to start.
//!
//! Needs root. The test starts its own containerd and agent and removes
//! everything when done.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;

use common::agent::{Agent, BUSYBOX, NODE};
use common::containerd::{e2e_enabled, PrivateContainerd};

const POD: &str = "apiVersion: v1
kind: Pod
metadata:
  name: talk
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: app
    image: podkeeper.local/busybox:latest
    command: [sh, -c, 'echo secret-token; sleep 3600']
";

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .mode()
        & 0o7777
}

/// Asserts the permission bits of `path`, showing them in octal.
fn assert_mode(path: &Path, expected: u32, what: &str) {
    let actual = mode(path);
    assert!(
        actual == expected,
        "{what} {} has mode {actual:04o}, expected {expected:04o}",
        path.display()
    );
}

fn set_mode(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

#[test]
fn logs_and_state_are_private_and_loose_directories_are_tightened() {
    if !e2e_enabled("logs_and_state_are_private_and_loose_directories_are_tightened") {
        return;
    }
    let containerd = PrivateContainerd::start().expect("starting containerd");
    let namespace = "e2e-file-modes";
    containerd
        .import_busybox(namespace, BUSYBOX)
        .expect("importing busybox");
    // As an older version (or a careless hand) left them: open to all.
    let agent = Agent::start_with(&containerd, namespace, |agent| {
        std::fs::create_dir_all(&agent.state).unwrap();
        set_mode(&agent.state, 0o755);
        let journal = agent.state.join("events.jsonl");
        std::fs::write(&journal, "").unwrap();
        set_mode(&journal, 0o644);
        std::fs::create_dir_all(&agent.logs).unwrap();
        set_mode(&agent.logs, 0o777);
    })
    .expect("starting the agent");

    assert_mode(&agent.state, 0o700, "state directory");
    assert_mode(&agent.logs, 0o750, "pod log directory");
    assert_mode(&agent.state.join("events.jsonl"), 0o600, "journal");
    let log = agent.log();
    for dir in [&agent.state, &agent.logs] {
        assert!(
            log.lines().any(|l| l.contains("WARN")
                && l.contains("tightened")
                && l.contains(&*dir.to_string_lossy())),
            "no log line says {} was tightened:\n{log}",
            dir.display()
        );
    }

    agent.write_manifest("talk.yaml", POD);
    let name = format!("talk-{NODE}");
    agent.wait_running(&name, 1, Duration::from_secs(60));
    let uid = agent.pod(&name).unwrap()["metadata"]["uid"]
        .as_str()
        .unwrap()
        .to_string();

    let pod_logs = agent.logs.join(format!("default_{name}_{uid}"));
    let log_file = pod_logs.join("app/0.log");
    agent.wait_until(
        "the container's output in its log",
        Duration::from_secs(30),
        || std::fs::read_to_string(&log_file).is_ok_and(|text| text.contains("secret-token")),
    );
    assert_mode(&log_file, 0o640, "container log file");
    assert_mode(&pod_logs.join("app"), 0o750, "container log directory");
    assert_mode(&pod_logs, 0o750, "pod log directory");

    let checkpoint = agent.state.join("pods").join(format!("{uid}.json"));
    agent.wait_until("the pod's checkpoint", Duration::from_secs(30), || {
        checkpoint.exists()
    });
    assert_mode(&checkpoint, 0o600, "checkpoint");
    assert_mode(&agent.state.join("pods"), 0o700, "checkpoint directory");
    assert_mode(
        &agent.state.join("pods").join(&uid),
        0o700,
        "pod files directory",
    );
    for dir in ["netns", "cni"] {
        let path = agent.state.join(dir);
        if path.exists() {
            assert_eq!(
                mode(&path) & 0o077,
                0,
                "{} is open to others",
                path.display()
            );
        }
    }
    assert_mode(&agent.state.join("events.jsonl"), 0o600, "journal");
}

#[test]
fn a_state_directory_of_another_user_is_refused() {
    if !e2e_enabled("a_state_directory_of_another_user_is_refused") {
        return;
    }
    let containerd = PrivateContainerd::start().expect("starting containerd");
    let started = Agent::start_with(&containerd, "e2e-file-modes-owner", |agent| {
        std::fs::create_dir_all(&agent.state).unwrap();
        set_mode(&agent.state, 0o700);
        std::os::unix::fs::chown(&agent.state, Some(65534), Some(65534)).unwrap();
    });
    let error = match started {
        Ok(_) => panic!("the agent started on a state directory owned by uid 65534"),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        error.contains("refusing to start") && error.contains("owned by uid 65534"),
        "{error}"
    );
}

#[test]
fn a_manifest_directory_opened_to_others_is_not_read_and_pods_keep_running() {
    if !e2e_enabled("a_manifest_directory_opened_to_others_is_not_read_and_pods_keep_running") {
        return;
    }
    let (_containerd, mut agent) = common::agent::start_with_busybox("e2e-file-modes-manifests");
    agent
        .restart_with_flags(&["--manifest-resync-seconds", "1"])
        .expect("restarting the agent with a short re-list");
    agent.write_manifest("talk.yaml", POD);
    let talk = format!("talk-{NODE}");
    agent.wait_running(&talk, 1, Duration::from_secs(60));

    // Anyone may now write the directory: what lands there is not run.
    set_mode(&agent.manifests, 0o777);
    agent.write_manifest("evil.yaml", &POD.replace("name: talk", "name: evil"));
    agent.wait_until(
        "an InsecureManifestDir warning",
        Duration::from_secs(30),
        || String::from_utf8_lossy(&agent.cli(&["events"]).stdout).contains("InsecureManifestDir"),
    );
    let dir = agent.manifests.display().to_string();
    assert!(
        agent.log().lines().any(|l| l.contains("WARN")
            && l.contains(&format!("dir={dir}"))
            && l.contains("mode 0777")),
        "no log line names {dir}:\n{}",
        agent.log()
    );
    // Several re-lists later: still not run, the running pod untouched.
    std::thread::sleep(Duration::from_secs(3));
    assert!(agent.pod(&format!("evil-{NODE}")).is_none());
    assert_eq!(
        common::agent::running_containers(&agent.pod(&talk).unwrap()),
        ["app"]
    );
    assert!(agent.is_running(), "the agent exited:\n{}", agent.log());

    set_mode(&agent.manifests, 0o755);
    agent.wait_running(&format!("evil-{NODE}"), 1, Duration::from_secs(60));
}
