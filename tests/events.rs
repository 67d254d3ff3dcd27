//! End-to-end: events as a kubelet's would be — folded into counts, kept
//! across a SIGKILL of the agent, and counted for a broken manifest — on a
//! real, private containerd.
//!
//! Needs root. Each test starts its own containerd and agent and removes
//! everything when done.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::agent::{start_with_busybox, Agent, CRASHING_POD, NODE};
use common::containerd::e2e_enabled;
use serde_json::Value;

/// `podkeeper events [POD] -o json`: the Events of the List it prints.
fn events(agent: &Agent, pod: Option<&str>) -> Vec<Value> {
    let mut args = vec!["events"];
    args.extend(pod);
    args.extend(["-o", "json"]);
    let out = agent.cli(&args);
    assert!(
        out.status.success(),
        "podkeeper {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list: Value = serde_json::from_slice(&out.stdout).expect("events -o json is JSON");
    assert_eq!(list["kind"], "List");
    list["items"].as_array().cloned().unwrap_or_default()
}

fn with_reason<'a>(events: &'a [Value], reason: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["reason"] == reason).collect()
}

fn count(event: &Value) -> u64 {
    event["count"].as_u64().unwrap_or(0)
}

/// What must survive a restart of each event: count and timestamps, by name.
fn by_name(events: &[Value]) -> BTreeMap<String, (u64, Value, Value)> {
    events
        .iter()
        .map(|e| {
            (
                e["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                (
                    count(e),
                    e["firstTimestamp"].clone(),
                    e["lastTimestamp"].clone(),
                ),
            )
        })
        .collect()
}

#[test]
fn a_crash_loop_is_counted_on_few_events_that_survive_a_sigkill_of_the_agent() {
    if !e2e_enabled("a_crash_loop_is_counted_on_few_events_that_survive_a_sigkill_of_the_agent") {
        return;
    }
    let (_containerd, mut agent) = start_with_busybox("e2e-events-crash");
    agent.write_manifest("crash.yaml", CRASHING_POD);
    let name = format!("crash-{NODE}");
    std::thread::sleep(Duration::from_secs(60));

    // The short name works, as for `get pods`.
    let crash = events(&agent, Some("crash"));
    let summary: Vec<String> = crash
        .iter()
        .map(|e| format!("{} {} x{}", e["type"], e["reason"], count(e)))
        .collect();
    eprintln!("after 60 s of crash loop: {summary:?}");
    let backoff = with_reason(&crash, "BackOff");
    assert_eq!(backoff.len(), 1, "{crash:#?}");
    let backoff = backoff[0];
    assert_eq!(backoff["type"], "Warning");
    assert!(count(backoff) >= 3, "{backoff:#}");
    assert_eq!(
        backoff["involvedObject"]["fieldPath"],
        "spec.containers{app}"
    );
    assert_eq!(backoff["involvedObject"]["name"], name.as_str());
    assert_eq!(backoff["source"]["component"], "podkeeper");
    assert_eq!(backoff["source"]["host"], NODE);
    let first: jiff::Timestamp = backoff["firstTimestamp"].as_str().unwrap().parse().unwrap();
    let last: jiff::Timestamp = backoff["lastTimestamp"].as_str().unwrap().parse().unwrap();
    assert!(first < last, "{backoff:#}");
    for reason in ["Created", "Started"] {
        let list = with_reason(&crash, reason);
        assert_eq!(list.len(), 1, "one {reason} event: {crash:#?}");
        assert!(count(list[0]) >= 3, "{:#}", list[0]);
    }
    assert!(
        crash.len() < 10,
        "a handful of events, not dozens: {summary:?}"
    );
    let table = agent.cli(&["events", "crash"]);
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(
        table.contains("BackOff") && table.contains(" (x"),
        "{table}"
    );

    // Stop the crash loop so nothing changes while the agent is down, then
    // check the events of the removed pod are still there.
    agent.remove_manifest("crash.yaml");
    agent.wait_until("the pod is gone", Duration::from_secs(30), || {
        agent.pod(&name).is_none()
    });
    std::thread::sleep(Duration::from_secs(1));
    let before_list = events(&agent, Some("crash"));
    let before = by_name(&before_list);
    assert!(before.len() >= crash.len());

    agent.restart().expect("restarting the agent");
    let after = by_name(&events(&agent, Some(&name)));
    assert_eq!(
        after, before,
        "the same events, counts and timestamps after SIGKILL"
    );

    // The same manifest is the same pod (same UID): new occurrences count on
    // the same events.
    let started = with_reason(&before_list, "Started")[0];
    let started_name = started["metadata"]["name"].as_str().unwrap();
    agent.write_manifest("crash.yaml", CRASHING_POD);
    let deadline = Instant::now() + Duration::from_secs(30);
    let grown = loop {
        let now = events(&agent, Some("crash"));
        let list = with_reason(&now, "Started");
        if list.len() == 1 && count(list[0]) > count(started) {
            break list[0].clone();
        }
        assert!(
            Instant::now() < deadline,
            "Started never counted up: {now:#?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(grown["metadata"]["name"], started_name);
    assert_eq!(grown["firstTimestamp"], started["firstTimestamp"]);
}

#[test]
fn a_broken_manifest_is_one_warning_counted_on_repeats_not_on_re_lists() {
    if !e2e_enabled("a_broken_manifest_is_one_warning_counted_on_repeats_not_on_re_lists") {
        return;
    }
    let (_containerd, mut agent) = start_with_busybox("e2e-events-manifest");
    agent
        .restart_with_flags(&["--manifest-resync-seconds", "1"])
        .expect("restarting the agent");
    let broken = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: bad}\n";
    agent.write_manifest("bad.yaml", broken);
    let file = agent.manifests.join("bad.yaml").display().to_string();
    let failures = || -> Vec<Value> {
        events(&agent, None)
            .into_iter()
            .filter(|e| {
                e["reason"] == "FailedParse" && e["involvedObject"]["name"] == file.as_str()
            })
            .collect()
    };
    agent.wait_until("a FailedParse event", Duration::from_secs(10), || {
        !failures().is_empty()
    });
    // Several re-lists of the unchanged file.
    std::thread::sleep(Duration::from_secs(4));
    let once = failures();
    assert_eq!(once.len(), 1, "{once:#?}");
    let event = &once[0];
    assert_eq!(
        count(event),
        1,
        "re-reading the same file is no repeat: {event:#}"
    );
    assert_eq!(event["type"], "Warning");
    let message = event["message"].as_str().unwrap();
    eprintln!("FailedParse: {message}");
    assert!(
        message.starts_with(&format!("{file}: apiVersion: ")) && message.contains("apps/v1"),
        "{message}"
    );

    // Other broken content with the same error: the same event counts up,
    // and a watcher sees the update as it happens.
    let mut watch = Command::new(env!("CARGO_BIN_EXE_podkeeper"))
        .args(["events", "--watch", "-o", "json", "--state-dir"])
        .arg(&agent.state)
        .stdout(Stdio::piped())
        .spawn()
        .expect("starting podkeeper events --watch");
    let (lines_tx, lines) = mpsc::channel();
    let stdout = watch.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                return;
            }
        }
    });
    let mut watched = String::new();
    let mut read_until = |what: &str| {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !watched.contains(what) {
            let left = deadline.saturating_duration_since(Instant::now());
            match lines.recv_timeout(left) {
                Ok(line) => watched.push_str(&line),
                Err(_) => panic!("the watch never showed {what}: {watched}"),
            }
        }
    };
    // The existing event first.
    read_until(r#""count": 1"#);
    agent.write_manifest("bad.yaml", &format!("{broken}# edited\n"));
    read_until(r#""count": 2"#);
    let _ = watch.kill();
    let _ = watch.wait();
    agent.wait_until(
        "the FailedParse event to count 2",
        Duration::from_secs(10),
        || failures().first().is_some_and(|e| count(e) == 2),
    );
    let twice = failures();
    assert_eq!(twice.len(), 1, "{twice:#?}");
    assert_eq!(twice[0]["metadata"]["name"], event["metadata"]["name"]);
    assert_eq!(twice[0]["firstTimestamp"], event["firstTimestamp"]);
    let yaml = agent.cli(&["events", "-o", "yaml"]);
    let yaml: Value = serde_yaml::from_slice(&yaml.stdout).expect("events -o yaml is YAML");
    assert!(
        yaml["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["reason"] == "FailedParse" && e["count"] == 2),
        "{yaml:#}"
    );
    // Each event is also one line of the agent's log.
    let log = agent.log();
    assert!(
        log.lines().any(|l| l.contains("WARN")
            && l.contains("reason=\"FailedParse\"")
            && l.contains("count=2")),
        "{log}"
    );
}
