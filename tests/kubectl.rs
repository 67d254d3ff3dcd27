//! Stock kubectl against the agent's HTTPS API, with no API server:
//! `kubectl --kubeconfig <state-dir>/kubeconfig get/describe/logs`, with
//! TLS verified against the agent's CA and its admin token. Also the
//! API's robustness: thousands of malformed requests, then it still
//! answers. Needs root (a private containerd) and kubectl in PATH.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::Shutdown;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::agent::{start_with_busybox, Agent, BUSYBOX, NODE};
use common::containerd::e2e_enabled;

/// Runs kubectl against `agent` with the kubeconfig the agent wrote and a
/// private home and cache.
fn kubectl(agent: &Agent, args: &[&str]) -> (bool, String, String) {
    let output = kubectl_command(agent, args)
        .output()
        .expect("running kubectl");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn kubectl_command(agent: &Agent, args: &[&str]) -> Command {
    let home = agent.state.join("kubectl-home");
    std::fs::create_dir_all(&home).expect("kubectl home");
    let mut command = Command::new("kubectl");
    command
        .env("KUBECONFIG", agent.kubeconfig())
        .env("HOME", &home)
        .arg("--cache-dir")
        .arg(home.join("cache"))
        .args(args);
    command
}

fn kubectl_ok(agent: &Agent, args: &[&str]) -> String {
    let (ok, out, err) = kubectl(agent, args);
    assert!(ok, "kubectl {args:?} failed:\n{err}\n{out}");
    out
}

/// The whitespace-separated cells of the row for `name` in table output.
fn row(table: &str, name: &str) -> Vec<String> {
    table
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .unwrap_or_else(|| panic!("no row {name} in:\n{table}"))
        .split_whitespace()
        .map(String::from)
        .collect()
}

const PODS: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: web, labels: {app: web}}
spec:
  containers:
  - name: app
    image: IMAGE
    command: [sh, -c, 'i=0; while true; do echo "line $i"; i=$((i+1)); sleep 0.2; done']
---
"#;

const CRASH: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: crash, labels: {app: crash}}
spec:
  containers:
  - name: main
    image: IMAGE
    command: [sh, -c, 'echo "crashing now"; exit 1']
"#;

const DONE: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: done}
spec:
  restartPolicy: Never
  containers:
  - name: main
    image: IMAGE
    command: [sh, -c, 'echo finished']
"#;

#[test]
fn kubectl_gets_describes_and_reads_logs() {
    if !e2e_enabled("kubectl_gets_describes_and_reads_logs") {
        return;
    }
    let (_containerd, agent) = start_with_busybox("e2e-kubectl");
    let image = |text: &str| text.replace("IMAGE", BUSYBOX).replace("---\n", "");
    agent.write_manifest("web.yaml", &image(PODS));
    agent.write_manifest("crash.yaml", &image(CRASH));
    agent.write_manifest("done.yaml", &image(DONE));
    let web = format!("web-{NODE}");
    let crash = format!("crash-{NODE}");
    let done = format!("done-{NODE}");
    agent.wait_running(&web, 1, Duration::from_secs(20));

    // get pods: READY, STATUS, RESTARTS as kubectl computes them. The
    // crashing pod shows CrashLoopBackOff once it waits out a back-off.
    let mut table = String::new();
    agent.wait_until(
        "kubectl to show crash in CrashLoopBackOff and done Completed",
        Duration::from_secs(60),
        || {
            table = kubectl_ok(&agent, &["get", "pods"]);
            row(&table, &crash)[2] == "CrashLoopBackOff" && row(&table, &done)[2] == "Completed"
        },
    );
    eprintln!("kubectl get pods:\n{table}");
    assert_eq!(
        table
            .lines()
            .next()
            .map(|l| l.split_whitespace().collect::<Vec<_>>()),
        Some(vec!["NAME", "READY", "STATUS", "RESTARTS", "AGE"])
    );
    let web_row = row(&table, &web);
    assert_eq!(web_row[1..4], ["1/1", "Running", "0"]);
    assert!(
        web_row[4].ends_with('s') || web_row[4].ends_with('m'),
        "{web_row:?}"
    );
    let crash_row = row(&table, &crash);
    assert_eq!(crash_row[1], "0/1");
    assert!(
        crash_row[3].parse::<u32>().is_ok_and(|n| n >= 1),
        "restarts with \"(… ago)\": {crash_row:?}"
    );
    assert!(
        crash_row[4].starts_with('(') && crash_row[5] == "ago)",
        "{crash_row:?}"
    );
    assert_eq!(row(&table, &done)[1..4], ["0/1", "Completed", "0"]);

    // -o wide, a single pod by its short name, and a label selector.
    let wide = kubectl_ok(&agent, &["get", "pods", "-o", "wide"]);
    let wide_row = row(&wide, &web);
    assert!(wide_row[5].starts_with("10."), "IP: {wide}");
    assert_eq!(wide_row[6..], [NODE, "<none>", "<none>"]);
    assert_eq!(
        row(&kubectl_ok(&agent, &["get", "pod", "web"]), &web)[2],
        "Running"
    );
    let selected = kubectl_ok(
        &agent,
        &["get", "pods", "-l", "app in (web,crash),app!=crash"],
    );
    assert!(
        selected.contains(&web) && !selected.contains(&crash) && !selected.contains(&done),
        "{selected}"
    );
    let json = kubectl_ok(&agent, &["get", "pod", &web, "-o", "json"]);
    let pod: serde_json::Value = serde_json::from_str(&json).expect("pod JSON");
    assert_eq!(pod["status"]["phase"], "Running");

    // describe (kubectl's own: GET pod + events by field selector), with
    // the short name; the crash loop's events are counted.
    let described = kubectl_ok(&agent, &["describe", "pod", "crash"]);
    eprintln!("kubectl describe pod crash:\n{described}");
    assert!(
        described.contains(&format!("Name:         {crash}")),
        "{described}"
    );
    assert!(described.contains("Events:"), "{described}");
    assert!(
        described.contains("BackOff") && described.contains("(x"),
        "counted events: {described}"
    );
    let described = kubectl_ok(&agent, &["describe", "pod", &web]);
    assert!(
        described.contains("Started") && described.contains("Status:       Running"),
        "{described}"
    );

    let events = kubectl_ok(&agent, &["get", "events"]);
    eprintln!("kubectl get events:\n{events}");
    assert!(
        events
            .lines()
            .next()
            .is_some_and(|h| h.starts_with("LAST SEEN")),
        "{events}"
    );
    assert!(
        events.contains(&format!("pod/{web}")) && events.contains("Started"),
        "{events}"
    );
    let only_web = kubectl_ok(
        &agent,
        &[
            "get",
            "events",
            "--field-selector",
            &format!("involvedObject.name={web}"),
        ],
    );
    assert!(!only_web.contains(&format!("pod/{crash}")), "{only_web}");

    // logs: whole, tail, previous run, and followed.
    let logs = kubectl_ok(&agent, &["logs", "web", "-c", "app"]);
    assert!(logs.starts_with("line 0\nline 1\n"), "{logs}");
    let tail = kubectl_ok(&agent, &["logs", &web, "--tail", "2"]);
    assert_eq!(tail.lines().count(), 2, "{tail}");
    let previous = kubectl_ok(&agent, &["logs", &crash, "--previous"]);
    assert_eq!(previous, "crashing now\n");
    let stamped = kubectl_ok(&agent, &["logs", &done, "--timestamps"]);
    assert!(
        stamped.ends_with("Z finished\n") && stamped.starts_with("20"),
        "{stamped}"
    );
    let mut follow = kubectl_command(&agent, &["logs", "-f", &web, "--tail", "1"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("kubectl logs -f");
    let mut lines = BufReader::new(follow.stdout.take().expect("stdout")).lines();
    let numbers: Vec<u64> = (0..4)
        .map(|_| {
            let line = lines.next().expect("a followed line").expect("utf-8");
            line.trim_start_matches("line ")
                .parse()
                .expect("a line number")
        })
        .collect();
    let _ = follow.kill();
    let _ = follow.wait();
    assert!(
        numbers.windows(2).all(|w| w[1] == w[0] + 1),
        "followed lines in order: {numbers:?}"
    );

    // get -w: the list, then changes as they happen.
    let mut watch = kubectl_command(&agent, &["get", "pods", "-w"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("kubectl get -w");
    let mut lines = BufReader::new(watch.stdout.take().expect("stdout")).lines();
    let header = lines.next().expect("a header").expect("utf-8");
    assert!(header.starts_with("NAME"), "{header}");
    agent.remove_manifest("done.yaml");
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = Vec::new();
    while Instant::now() < deadline {
        let line = lines.next().expect("a watch line").expect("utf-8");
        seen.push(line.clone());
        // The removed pod shows up again as it changes or goes.
        if line.starts_with(&done) && seen.iter().filter(|l| l.starts_with(&done)).count() >= 2 {
            break;
        }
    }
    let _ = watch.kill();
    let _ = watch.wait();
    assert!(
        seen.iter().filter(|l| l.starts_with(&done)).count() >= 2,
        "{seen:?}"
    );

    // Writes are refused, pointing at the manifests.
    let (ok, _, err) = kubectl(&agent, &["delete", "pod", &web]);
    assert!(!ok && err.contains("source of truth"), "{err}");

    // The agent's own describe, readiness, and the unix socket.
    let (code, text) = agent.get("/describe/pods/default/crash").expect("describe");
    assert_eq!(code, 200, "{text}");
    assert!(
        text.starts_with(&format!("Name:         {crash}\n")),
        "{text}"
    );
    let (code, json) = agent
        .get(&format!("/describe/pods/default/{crash}?output=json"))
        .expect("describe json");
    assert_eq!(code, 200, "{json}");
    let (code, ready) = agent.get("/readyz").expect("readyz");
    assert_eq!(code, 200, "{ready}");
    let (code, metrics) = agent.get("/metrics").expect("metrics");
    assert_eq!(code, 200);
    for series in [
        "podkeeper_pods{phase=\"Running\"}",
        "podkeeper_containerd_call_duration_seconds_count{method=\"/containerd.services.tasks.v1.Tasks/Create\"}",
        "podkeeper_pod_sync_duration_seconds_count{action=\"sandbox\"}",
        "podkeeper_pod_sync_duration_seconds_count{action=\"start\"}",
        "podkeeper_events_total{",
    ] {
        assert!(metrics.contains(series), "{series} missing:\n{metrics}");
    }
    let socket = agent.state.join("podkeeper-http.sock");
    let mode = std::fs::metadata(&socket)
        .expect("the HTTP socket")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let mut stream = UnixStream::connect(&socket).expect("connect to the HTTP socket");
    stream
        .write_all(b"GET /api/v1/pods HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .expect("request");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("response");
    assert!(
        response.starts_with("HTTP/1.1 200") && response.contains(&web),
        "{response}"
    );
}

/// Sends `request` on a fresh connection, half-closes it and returns the
/// status code of the answer, if any.
fn send_raw(socket: &std::path::Path, request: &[u8]) -> Option<u16> {
    let mut stream = UnixStream::connect(socket).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(15)))
        .expect("timeout");
    // The server may answer and close before reading everything.
    let _ = stream.write_all(request);
    let _ = stream.shutdown(Shutdown::Write);
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    let head = String::from_utf8_lossy(&response);
    head.split_whitespace().nth(1).and_then(|c| c.parse().ok())
}

/// One request of a random kind: garbage bytes, known-bad paths, random
/// paths, bad heads or writes.
fn malformed_request(rng: &mut fastrand::Rng) -> Vec<u8> {
    const PATHS: &[&str] = &[
        "/api/v1/namespaces/%ZZ/pods",
        "/api/v1/namespaces/default/pods/%FF%FE",
        "/api/v1/pods?labelSelector=a%20in%20(b",
        "/api/v1/pods?fieldSelector=spec.secret%3Dx",
        "/api/v1/pods?watch=perhaps",
        "/api/v1/namespaces/default/pods/web/log?tailLines=-5",
        "/api/v1/namespaces/default/pods/nope/log?follow=true",
        "/api/v1/events?fieldSelector=%3D%3D%3D",
        "/describe/pods/default/../../etc/passwd",
        "/describe/pods/x/y?output=yaml",
        "//",
        "/api/v1/namespaces/",
        "/metrics/../pods",
    ];
    match rng.usize(..6) {
        // Random bytes.
        0 => (0..rng.usize(..300)).map(|_| rng.u8(..)).collect(),
        // A known-bad path.
        1 => format!(
            "GET {} HTTP/1.1\r\nHost: x\r\n\r\n",
            PATHS[rng.usize(..PATHS.len())]
        )
        .into_bytes(),
        // A path of random printable characters.
        2 => {
            let path: String = (0..rng.usize(..60))
                .map(|_| char::from(33 + rng.usize(..94) as u8))
                .collect();
            format!("GET /{path} HTTP/1.1\r\nHost: x\r\n\r\n").into_bytes()
        }
        // Too many headers, or one that is too long.
        3 => {
            let mut request = b"GET /pods HTTP/1.1\r\n".to_vec();
            if rng.usize(..2) == 0 {
                for i in 0..100 {
                    request.extend(format!("X-{i}: y\r\n").as_bytes());
                }
            } else {
                request.extend(format!("X-Long: {}\r\n", "y".repeat(20_000)).as_bytes());
            }
            request.extend(b"\r\n");
            request
        }
        // A write, with a body the server never reads.
        4 => {
            let method = ["POST", "PUT", "PATCH", "DELETE"][rng.usize(..4)];
            format!("{method} /api/v1/namespaces/default/pods HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello").into_bytes()
        }
        // A truncated request head.
        _ => b"GET /api/v1/pods HTTP/1.1\r\nHost:".to_vec(),
    }
}

#[test]
fn ten_thousand_malformed_requests_leave_the_api_answering() {
    if !e2e_enabled("ten_thousand_malformed_requests_leave_the_api_answering") {
        return;
    }
    let (_containerd, mut agent) = start_with_busybox("e2e-malformed");
    // The root-only socket: every request reaches the router.
    let socket = agent.http_socket();
    let started = Instant::now();
    let threads: Vec<_> = (0..8u64)
        .map(|t| {
            let socket = socket.clone();
            std::thread::spawn(move || {
                let mut rng = fastrand::Rng::with_seed(0x2545_F491_4F6C_DD1D ^ (t + 1));
                let mut codes = std::collections::BTreeMap::new();
                for _ in 0..1250 {
                    let code = send_raw(&socket, &malformed_request(&mut rng));
                    *codes.entry(code).or_insert(0u32) += 1;
                }
                codes
            })
        })
        .collect();
    let mut codes = std::collections::BTreeMap::new();
    for thread in threads {
        for (code, n) in thread.join().expect("a client thread") {
            *codes.entry(code).or_insert(0) += n;
        }
    }
    eprintln!(
        "10000 malformed requests in {:?}: status codes {codes:?}",
        started.elapsed()
    );
    assert_eq!(codes.values().sum::<u32>(), 10_000);
    assert!(
        codes.keys().flatten().all(|c| (400..500).contains(c)),
        "only client errors (None: closed without an answer): {codes:?}"
    );
    assert!(agent.is_running(), "the agent died:\n{}", agent.log());
    let (code, body) = agent.get("/healthz").expect("healthz");
    assert_eq!((code, body.as_str()), (200, "ok"));
    let (code, metrics) = agent.get("/metrics").expect("metrics");
    assert_eq!(code, 200);
    assert!(
        metrics.contains("podkeeper_http_requests_total{route=\"invalid\",code=\"400\"}"),
        "{metrics}"
    );
}
