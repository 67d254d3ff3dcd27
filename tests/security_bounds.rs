//! End-to-end: what a manifest says cannot make the agent take unbounded
//! memory. A manifest under 100 KB whose YAML anchors name anchors, and a
//! pod whose `env` doubles a `$(VAR)` 44 times, are refused with a clear
//! error naming the file or the variable, while the node's other pods keep
//! running and the agent's peak memory stays within 64 MiB of its idle
//! figure.
//!
//! Needs root. The test starts its own containerd and agent and removes
//! everything when done. The agent's address space is capped for the
//! test, so that an agent without the bounds fails the test by running
//! out of memory instead of taking the machine's.

mod common;

use std::time::{Duration, Instant};

use common::agent::{start_with_busybox, waiting_reason, Agent, NODE};
use common::containerd::e2e_enabled;
use common::tasks::running_task_pid;
use serde_json::Value;

/// How far above its idle footprint the agent's peak may go.
const HEADROOM_KB: u64 = 64 * 1024;

/// The agent's address-space cap above its idle size: ample for the agent,
/// small next to what the unbounded inputs would take.
const ADDRESS_SPACE_HEADROOM: u64 = 2 << 30;

/// A pod running `sleep`; `NAME` and `ENV` are replaced.
const POD: &str = "apiVersion: v1
kind: Pod
metadata:
  name: NAME
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: app
    image: podkeeper.local/busybox:latest
    command: [sleep, '3600']
ENV";

fn pod(name: &str, env: &str) -> String {
    POD.replace("NAME", name).replace("ENV", env)
}

/// A Pod with a list of 5000 one-letter strings and seven anchors, each a
/// list of ten aliases of the one before: 5 * 10^10 strings, terabytes
/// once built, from 16 KB.
fn alias_bomb() -> String {
    let mut text = pod("bomb", "");
    text.push_str(&format!("l0: &l0 [{}]\n", vec!["x"; 5000].join(", ")));
    for level in 1..=7 {
        let aliases = vec![format!("*l{}", level - 1); 10].join(", ");
        text.push_str(&format!("l{level}: &l{level} [{aliases}]\n"));
    }
    text
}

/// `V0=x`, then 44 variables each naming the one before twice: the last
/// would be 2^44 bytes (16 TiB).
fn doubling_env() -> String {
    let mut env = String::from("    env:\n    - {name: V0, value: x}\n");
    for n in 1..=44 {
        let previous = n - 1;
        env.push_str(&format!(
            "    - {{name: V{n}, value: '$(V{previous})$(V{previous})'}}\n"
        ));
    }
    env
}

/// One field of `/proc/<pid>/status`, in kB.
fn status_kb(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("reading the agent's status: {e}"));
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.trim().strip_suffix(" kB"))
        .and_then(|kb| kb.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in the agent's status"))
}

/// Caps the agent's address space at its current size plus `headroom`.
fn cap_address_space(pid: u32, headroom: u64) {
    let limit = status_kb(pid, "VmSize:") * 1024 + headroom;
    let rlimit = libc::rlimit {
        rlim_cur: limit,
        rlim_max: limit,
    };
    // SAFETY: prlimit(2) on our own child with a valid rlimit and no old
    // value wanted.
    let rc = unsafe {
        libc::prlimit(
            libc::pid_t::try_from(pid).unwrap(),
            libc::RLIMIT_AS,
            &rlimit,
            std::ptr::null_mut(),
        )
    };
    assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
}

/// `podkeeper events -o json`: the Events of the List it prints.
fn events(agent: &Agent) -> Vec<Value> {
    let out = agent.cli(&["events", "-o", "json"]);
    assert!(
        out.status.success(),
        "podkeeper events: {}\nagent log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        agent.log()
    );
    let list: Value = serde_json::from_slice(&out.stdout).expect("events -o json is JSON");
    list["items"].as_array().cloned().unwrap_or_default()
}

/// The agent's idle footprint, against which every wait checks its peak.
struct Footprint {
    pid: u32,
    idle_rss: u64,
}

impl Footprint {
    /// Reads the idle figure and caps the address space above it.
    fn of(agent: &Agent) -> Footprint {
        let pid = agent.pid();
        cap_address_space(pid, ADDRESS_SPACE_HEADROOM);
        Footprint {
            pid,
            idle_rss: status_kb(pid, "VmRSS:"),
        }
    }

    /// Fails if the agent exited or its peak RSS passed the headroom.
    fn check(&self, agent: &mut Agent, doing: &str) {
        assert!(
            agent.is_running(),
            "the agent exited {doing}:\n{}",
            agent.log()
        );
        let peak = status_kb(self.pid, "VmHWM:");
        assert!(
            peak <= self.idle_rss + HEADROOM_KB,
            "the agent's peak RSS went from {} kB idle to {peak} kB {doing}",
            self.idle_rss
        );
    }

    /// Polls `done` until it holds, checking the agent all along.
    fn wait(&self, agent: &mut Agent, what: &str, mut done: impl FnMut(&Agent) -> bool) {
        let doing = format!("waiting for {what}");
        let start = Instant::now();
        while !done(agent) {
            self.check(agent, &doing);
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "timed out {doing}:\n{}",
                agent.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        self.check(agent, &doing);
    }
}

/// The Warning about manifest `file`, once there is one.
fn file_warning(footprint: &Footprint, agent: &mut Agent, file: &str) -> Value {
    let path = agent.manifests.join(file).display().to_string();
    let mut found = None;
    footprint.wait(agent, &format!("a warning about {file}"), |agent| {
        found = events(agent)
            .into_iter()
            .find(|e| e["involvedObject"]["name"] == path.as_str());
        found.is_some()
    });
    found.unwrap()
}

#[test]
fn alias_bombs_and_doubling_variables_are_refused_within_bounded_memory() {
    if !e2e_enabled("alias_bombs_and_doubling_variables_are_refused_within_bounded_memory") {
        return;
    }
    let (containerd, mut agent) = start_with_busybox("e2e-security-bounds");
    agent.write_manifest("keep.yaml", &pod("keep", ""));
    let keep = format!("keep-{NODE}");
    agent.wait_running(&keep, 1, Duration::from_secs(60));
    let keep_pid = running_task_pid(&containerd, &agent.namespace, "-c-app-");

    let footprint = Footprint::of(&agent);

    // The alias bomb is refused as a whole file, naming it.
    let bomb = alias_bomb();
    assert!(bomb.len() < 100_000, "{} bytes", bomb.len());
    agent.write_manifest("bomb.yaml", &bomb);
    let warning = file_warning(&footprint, &mut agent, "bomb.yaml");
    let path = agent.manifests.join("bomb.yaml").display().to_string();
    assert_eq!(warning["type"], "Warning");
    assert_eq!(warning["reason"], "FailedParse", "{warning:#}");
    let message = warning["message"].as_str().unwrap();
    assert!(
        message.starts_with(&format!("{path}: alias expansion too large")),
        "{message}"
    );
    assert!(agent.pod(&format!("bomb-{NODE}")).is_none());
    let logged = agent
        .log()
        .lines()
        .any(|l| l.contains("WARN") && l.contains(&format!("file={path}")));
    assert!(logged, "no log line names {path}:\n{}", agent.log());

    // Nesting beyond any Pod's is refused the same way.
    let deep = format!(
        "{}x: {}1{}\n",
        pod("deep", ""),
        "[".repeat(500),
        "]".repeat(500)
    );
    agent.write_manifest("deep.yaml", &deep);
    let warning = file_warning(&footprint, &mut agent, "deep.yaml");
    let message = warning["message"].as_str().unwrap();
    assert!(message.contains(": nested too deeply"), "{message}");

    // The doubling pod runs no container: its start fails with a
    // CreateContainerConfigError naming the variable that passes the cap.
    agent.write_manifest("doubling.yaml", &pod("doubling", &doubling_env()));
    let doubling = format!("doubling-{NODE}");
    footprint.wait(
        &mut agent,
        "the doubling pod's container waiting with CreateContainerConfigError",
        |agent| {
            agent.pod(&doubling).is_some_and(|p| {
                waiting_reason(&p, "app").as_deref() == Some("CreateContainerConfigError")
            })
        },
    );
    let status = agent.pod(&doubling).unwrap();
    let waiting = &status["status"]["containerStatuses"][0]["state"]["waiting"];
    let message = waiting["message"].as_str().unwrap();
    assert!(
        message.starts_with("spec.containers[app].env[19]: variable \"V19\": "),
        "{message}"
    );
    // The kubelet's Failed event says the same.
    footprint.wait(&mut agent, "a Failed event naming V19", |agent| {
        events(agent).into_iter().any(|e| {
            e["reason"] == "Failed"
                && e["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("Error: spec.containers[app].env[19]"))
        })
    });

    // The good pod runs on in the same process, the agent is up, and its
    // peak stayed near its idle footprint.
    assert_eq!(
        running_task_pid(&containerd, &agent.namespace, "-c-app-"),
        keep_pid
    );
    footprint.check(&mut agent, "at the end");
    eprintln!(
        "agent memory: idle RSS {} kB, peak {} kB",
        footprint.idle_rss,
        status_kb(footprint.pid, "VmHWM:")
    );
}
