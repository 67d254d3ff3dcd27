//! End-to-end: a supervised task that fails is reported by `/healthz` and
//! `/readyz` while it restarts, and a vital one ends the agent with an
//! error. The failures come from the debug build's test hook
//! (`PODKEEPER_TEST_FAIL_TASK`: the named task panics each time it starts).

mod common;

use std::time::Duration;

use common::agent::Agent;
use common::containerd::{e2e_enabled, PrivateContainerd};

const FAIL_TASK: &str = "PODKEEPER_TEST_FAIL_TASK";

#[test]
fn a_failing_task_is_reported_by_health_checks_and_a_vital_one_ends_the_agent() {
    if !e2e_enabled("a_failing_task_is_reported_by_health_checks_and_a_vital_one_ends_the_agent") {
        return;
    }
    let containerd = PrivateContainerd::start().unwrap();
    let mut agent = Agent::start(&containerd, "e2e-supervise").unwrap();
    assert_eq!(agent.get("/healthz").unwrap(), (200, "ok".to_string()));

    // A task that restarts: down between its starts, which the health
    // checks say; the agent keeps serving.
    agent
        .restart_with_env(&[(FAIL_TASK, "import-dir")])
        .unwrap();
    let dead = "[failed] task import-dir panicked\n";
    agent.wait_until("/healthz failing", Duration::from_secs(30), || {
        agent.get("/healthz").unwrap() == (500, format!("{dead}healthz check failed\n"))
    });
    let (code, body) = agent.get("/readyz").unwrap();
    assert_eq!(code, 503, "{body}");
    assert!(body.contains(dead), "{body}");
    let (code, body) = agent.get_plain("/healthz", &[]).unwrap();
    assert_eq!(code, 500, "{body}");
    agent.wait_until("a second restart", Duration::from_secs(30), || {
        agent
            .log()
            .matches("task import-dir panicked: test hook")
            .count()
            >= 2
    });
    assert!(agent.is_running());

    // A vital task: the agent exits non-zero, naming the task and the panic.
    let _ = agent.restart_with_env(&[(FAIL_TASK, "manifest-source")]);
    let status = agent.wait_exit(Duration::from_secs(30)).unwrap();
    assert!(!status.success(), "{status}");
    let log = agent.log();
    assert!(
        log.contains(
            "task manifest-source panicked: test hook: task manifest-source fails as it starts"
        ),
        "{log}"
    );

    // Without the hook, all is well again.
    agent.restart().unwrap();
    assert_eq!(agent.get("/healthz").unwrap(), (200, "ok".to_string()));
}
