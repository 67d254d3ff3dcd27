//! End-to-end: `Containerd::exec` (what probes and hooks run) in a
//! container the agent started on a real, private containerd.
//!
//! Needs root. The test starts its own containerd and agent and removes
//! everything when done.

mod common;

use std::time::{Duration, Instant};

use common::agent::{start_with_busybox, NODE};
use common::containerd::{e2e_enabled, PrivateContainerd};
use podkeeper::runtime::containerd::exec::MAX_OUTPUT;
use podkeeper::runtime::containerd::Containerd;

const NAMESPACE: &str = "e2e-exec";

const POD: &str = "apiVersion: v1\nkind: Pod\nmetadata: {name: x}\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: c\n    image: podkeeper.local/busybox:latest\n    command: [sleep, '3600']\n    env: [{name: GREETING, value: hello}]\n    workingDir: /tmp\n";

fn words(command: &[&str]) -> Vec<String> {
    command.iter().map(|w| w.to_string()).collect()
}

/// Processes in the container's task, as `ctr tasks ps` lists them.
fn process_count(containerd: &PrivateContainerd, id: &str) -> usize {
    let out = containerd
        .ctr(NAMESPACE, &["tasks", "ps", id])
        .expect("ctr tasks ps");
    out.lines().skip(1).filter(|l| !l.trim().is_empty()).count()
}

/// Private FIFO directories `exec` left behind.
fn leftover_fifos() -> Vec<String> {
    std::fs::read_dir(std::env::temp_dir())
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&format!("podkeeper-pk-exec-{:x}-", std::process::id())))
        .collect()
}

#[test]
fn exec_runs_commands_in_a_running_container() {
    if !e2e_enabled("exec_runs_commands_in_a_running_container") {
        return;
    }
    let (containerd, agent) = start_with_busybox(NAMESPACE);
    agent.write_manifest("x.yaml", POD);
    let pod_name = format!("x-{NODE}");
    agent.wait_running(&pod_name, 1, Duration::from_secs(10));
    let ids = containerd
        .ctr(NAMESPACE, &["tasks", "ls", "-q"])
        .expect("ctr tasks ls");
    let id = ids
        .lines()
        .find(|l| !l.ends_with("-pause") && !l.trim().is_empty())
        .expect("the app container's task")
        .trim()
        .to_string();
    assert_eq!(process_count(&containerd, &id), 1);

    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let client = Containerd::connect(containerd.socket(), NAMESPACE)
            .await
            .unwrap();
        let second = Duration::from_secs(1);

        let out = client
            .exec(&id, &words(&["echo", "hi"]), second)
            .await
            .unwrap();
        assert_eq!(
            (out.exit_code, out.output.as_str(), out.timed_out),
            (0, "hi\n", false)
        );

        // The container's environment and working directory; stdout and
        // stderr both come back.
        let out = client
            .exec(
                &id,
                &words(&["sh", "-c", "echo $GREETING; pwd; echo oops >&2; exit 3"]),
                second,
            )
            .await
            .unwrap();
        assert_eq!(out.exit_code, 3);
        assert_eq!(out.output, "hello\n/tmp\noops\n");

        // More output than a pipe holds neither blocks nor comes back whole.
        let out = client
            .exec(
                &id,
                &words(&["sh", "-c", "head -c 200000 /dev/zero | tr '\\0' x"]),
                Duration::from_secs(5),
            )
            .await
            .unwrap();
        assert_eq!((out.exit_code, out.output.len()), (0, MAX_OUTPUT));

        let started = Instant::now();
        let out = client
            .exec(&id, &words(&["sleep", "10"]), second)
            .await
            .unwrap();
        assert!(out.timed_out, "{out:?}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );

        // A command that does not exist is an error from the runtime.
        let missing = client
            .exec(&id, &words(&["/no/such/program"]), second)
            .await;
        assert!(missing.is_err(), "{missing:?}");

        // Concurrent execs get distinct IDs.
        let (echo_a, echo_b) = (words(&["echo", "a"]), words(&["echo", "b"]));
        let (a, b) = tokio::join!(
            client.exec(&id, &echo_a, second),
            client.exec(&id, &echo_b, second)
        );
        assert_eq!(
            (a.unwrap().output, b.unwrap().output),
            ("a\n".into(), "b\n".into())
        );

        // A container without a running task.
        assert!(client
            .exec("no-such-container", &words(&["true"]), second)
            .await
            .is_err());
    });
    assert_eq!(
        process_count(&containerd, &id),
        1,
        "no exec process is left"
    );
    assert_eq!(leftover_fifos(), Vec::<String>::new());
}
