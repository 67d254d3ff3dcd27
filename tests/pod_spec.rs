//! End-to-end: what a pod's spec asks for really happens on the node —
//! hostPorts, pod IPs from CNI, volumes, cgroup limits, the OOM killer, a
//! shared PID namespace, init containers and sidecars, CRI-format logs that
//! outlive the agent, and bad specs reported per container.
//!
//! Needs root. Each test starts its own containerd and agent. When a test
//! ends (also by a failure) its manifests are removed and the pods waited
//! for, so the agent tears down what it set up on the host (CNI DEL and its
//! iptables rules, IPAM reservations, pod cgroups); then the test's bridge
//! is deleted.

mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::agent::{running_containers, waiting_reason, Agent, BUSYBOX, CGROUP_ROOT, NODE};
use common::containerd::{e2e_enabled, PrivateContainerd};
use serde_json::Value;

/// A containerd with busybox and an agent on it; cleans up on drop.
struct Node {
    agent: Agent,
    containerd: PrivateContainerd,
    namespace: String,
}

impl Node {
    fn start(namespace: &str, bridged: bool) -> Node {
        let containerd = PrivateContainerd::start().expect("starting containerd");
        containerd
            .import_busybox(namespace, BUSYBOX)
            .expect("importing busybox");
        let agent = Agent::start_with(&containerd, namespace, |agent| {
            if bridged {
                agent.use_bridge();
            }
        })
        .expect("starting the agent");
        Node {
            agent,
            containerd,
            namespace: namespace.into(),
        }
    }
}

impl Drop for Node {
    /// Removes every manifest and waits (bounded, never panicking) until
    /// the agent has torn each pod down; then deletes the test's bridge
    /// (plain or built-in), which nothing uses any more.
    fn drop(&mut self) {
        let agent = &mut self.agent;
        agent.remove_all_pods(Duration::from_secs(20));
        if Path::new("/sys/class/net").join(&agent.bridge).exists() {
            let _ = Command::new("ip")
                .args(["link", "del", &agent.bridge])
                .status();
        }
    }
}

fn full(name: &str) -> String {
    format!("{name}-{NODE}")
}

/// Polls `check` until it gives a value; panics with the agent log after
/// `timeout`.
fn wait_for<T>(
    agent: &Agent,
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> Option<T>,
) -> T {
    let start = Instant::now();
    loop {
        if let Some(value) = check() {
            eprintln!("{what}: {:?}", start.elapsed());
            return value;
        }
        if start.elapsed() > timeout {
            panic!(
                "timed out after {timeout:?} waiting for {what}\nagent log:\n{}",
                agent.log()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until the pod `name` (short) runs all of `containers`; returns it.
fn wait_running(agent: &Agent, name: &str, containers: &[&str], timeout: Duration) -> Value {
    wait_for(agent, &format!("{name} running"), timeout, || {
        let pod = agent.pod(&full(name))?;
        let running = running_containers(&pod);
        containers
            .iter()
            .all(|c| running.iter().any(|r| r == c))
            .then_some(pod)
    })
}

fn uid(pod: &Value) -> String {
    pod["metadata"]["uid"]
        .as_str()
        .expect("metadata.uid")
        .to_string()
}

/// The status of container `name` in `list` (`containerStatuses` or
/// `initContainerStatuses`).
fn status_of(pod: &Value, list: &str, name: &str) -> Value {
    pod["status"][list]
        .as_array()
        .and_then(|l| l.iter().find(|c| c["name"] == name))
        .cloned()
        .unwrap_or(Value::Null)
}

/// `waiting`, `running` or `terminated`.
fn state_name(status: &Value) -> Option<String> {
    status["state"].as_object()?.keys().next().cloned()
}

/// The CRI log file of a container's first run.
fn log_path(agent: &Agent, pod: &Value, container: &str) -> PathBuf {
    agent
        .logs
        .join(format!(
            "default_{}_{}",
            pod["metadata"]["name"].as_str().unwrap_or_default(),
            uid(pod)
        ))
        .join(container)
        .join("0.log")
}

/// The text of each CRI record of a container's first run.
fn log_lines(agent: &Agent, pod: &Value, container: &str) -> Vec<String> {
    std::fs::read_to_string(log_path(agent, pod, container))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.splitn(4, ' ').nth(3).map(String::from))
        .collect()
}

/// Waits until a line of the container's log contains `text`.
fn wait_log(agent: &Agent, pod: &Value, container: &str, text: &str) -> Vec<String> {
    let what = format!(
        "{text:?} in the log of {}/{container}",
        pod["metadata"]["name"]
    );
    wait_for(agent, &what, Duration::from_secs(20), || {
        let lines = log_lines(agent, pod, container);
        lines.iter().any(|l| l.contains(text)).then_some(lines)
    })
}

fn wait_removed(agent: &Agent, pod: &Value) {
    let uid = uid(pod);
    wait_for(
        agent,
        &format!("{} removed", pod["metadata"]["name"]),
        Duration::from_secs(20),
        || agent.logged_removal(&uid).then_some(()),
    );
}

/// Whether `ip` is inside the IPv4 `cidr`.
fn in_subnet(ip: &str, cidr: &str) -> bool {
    let (net, prefix) = cidr.split_once('/').expect("CIDR");
    let (Ok(ip), Ok(net), Ok(prefix)) = (
        ip.parse::<Ipv4Addr>(),
        net.parse::<Ipv4Addr>(),
        prefix.parse::<u32>(),
    ) else {
        return false;
    };
    let mask = u32::MAX.checked_shl(32 - prefix).unwrap_or(0);
    u32::from(ip) & mask == u32::from(net) & mask
}

/// `GET /` over HTTP/1.0 on 127.0.0.1:`port`: (status code, body).
fn http_get(port: u16) -> std::io::Result<(u16, String)> {
    let mut stream =
        TcpStream::connect_timeout(&(Ipv4Addr::LOCALHOST, port).into(), Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.write_all(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other(format!("malformed response {response:?}")))?;
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no status in {head:?}")))?;
    Ok((code, body.to_string()))
}

/// The page, once it is served and not caught between truncate and write.
fn fetch_page(agent: &Agent, port: u16) -> String {
    wait_for(
        agent,
        "the page on the hostPort",
        Duration::from_secs(20),
        || match http_get(port) {
            Ok((200, body)) if !body.trim().is_empty() => Some(body),
            _ => None,
        },
    )
}

const SITE: &str = r#"apiVersion: v1
kind: Pod
metadata: {name: site}
spec:
  terminationGracePeriodSeconds: 1
  volumes:
  - {name: html, emptyDir: {}}
  containers:
  - name: web
    image: podkeeper.local/busybox:latest
    imagePullPolicy: IfNotPresent
    command: [httpd, -f, -p, '80', -h, /html]
    ports: [{containerPort: 80, hostPort: HOST_PORT}]
    volumeMounts: [{name: html, mountPath: /html}]
  - name: writer
    image: podkeeper.local/busybox:latest
    imagePullPolicy: IfNotPresent
    command: [sh, -c, 'while true; do date +%s%N > /html/index.html; sleep 1; done']
    volumeMounts: [{name: html, mountPath: /html}]
"#;

/// The sidecar pattern on the built-in network: busybox httpd serves an
/// emptyDir that a second container rewrites every second, reached on
/// 127.0.0.1 through the pod's hostPort; after the pod is deleted the
/// hostPort no longer answers (its rules went with CNI DEL).
#[test]
fn host_port_serves_the_page_a_sidecar_keeps_rewriting() {
    if !e2e_enabled("host_port_serves_the_page_a_sidecar_keeps_rewriting") {
        return;
    }
    let node = Node::start("ps-hostport", true);
    let agent = &node.agent;
    let port = 18_000 + (std::process::id() % 1000) as u16;
    agent.write_manifest("site.yaml", &SITE.replace("HOST_PORT", &port.to_string()));
    let pod = wait_running(agent, "site", &["web", "writer"], Duration::from_secs(30));

    let first = fetch_page(agent, port);
    std::thread::sleep(Duration::from_millis(1200));
    let second = fetch_page(agent, port);
    for page in [&first, &second] {
        assert!(
            page.trim().starts_with(|c: char| c.is_ascii_digit()),
            "not the writer's timestamp: {page:?}"
        );
    }
    assert_ne!(first, second, "the page did not change in 1.2 s");

    agent.remove_manifest("site.yaml");
    wait_removed(agent, &pod);
    let after = http_get(port);
    assert!(
        after.is_err(),
        "the hostPort still answers after the pod is gone: {after:?}"
    );
    let nat = Command::new("iptables-save")
        .args(["-t", "nat"])
        .output()
        .expect("iptables-save");
    let rules = String::from_utf8_lossy(&nat.stdout);
    let dport = format!("--dport {port} ");
    let left: Vec<&str> = rules.lines().filter(|l| l.contains(&dport)).collect();
    assert!(left.is_empty(), "NAT rules for {port} left: {left:#?}");
}

const SERVER: &str = r#"apiVersion: v1
kind: Pod
metadata: {name: server}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: server
    image: podkeeper.local/busybox:latest
    imagePullPolicy: IfNotPresent
    command: [sh, -c, 'while true; do echo pong | nc -l -p 7000; done']
"#;

const CLIENT: &str = r#"apiVersion: v1
kind: Pod
metadata: {name: client}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: client
    image: podkeeper.local/busybox:latest
    imagePullPolicy: IfNotPresent
    env: [{name: SERVER, value: "SERVER_IP"}]
    command:
    - sh
    - -c
    - |
      for i in $(seq 150); do
        answer=$(nc "$SERVER" 7000 </dev/null)
        if [ -n "$answer" ]; then echo "answer=$answer"; break; fi
        sleep 0.2
      done
      exec sleep 3600
"#;

/// Pods on the built-in network get distinct IPs from host-local IPAM in the
/// agent's subnet and reach each other by them; deleting the pods releases
/// both reservations.
#[test]
fn pods_get_ips_from_cni_reach_each_other_and_release_them() {
    if !e2e_enabled("pods_get_ips_from_cni_reach_each_other_and_release_them") {
        return;
    }
    let node = Node::start("ps-podip", true);
    let agent = &node.agent;
    let pod_ip = |pod: &Value| pod["status"]["podIP"].as_str().map(String::from);

    agent.write_manifest("server.yaml", SERVER);
    let server = wait_running(agent, "server", &["server"], Duration::from_secs(30));
    let server_ip = pod_ip(&server).expect("the server has a podIP");
    agent.write_manifest("client.yaml", &CLIENT.replace("SERVER_IP", &server_ip));
    let client = wait_running(agent, "client", &["client"], Duration::from_secs(30));
    let client_ip = pod_ip(&client).expect("the client has a podIP");

    for ip in [&server_ip, &client_ip] {
        assert!(
            in_subnet(ip, &agent.subnet),
            "{ip} is not in {}",
            agent.subnet
        );
    }
    assert_ne!(server_ip, client_ip);
    let lines = wait_log(agent, &client, "client", "answer=");
    assert!(
        lines.iter().any(|l| l == "answer=pong"),
        "the client got no pong from {server_ip}: {lines:?}"
    );

    let ipam = agent.state.join("cni/networks/podkeeper");
    for ip in [&server_ip, &client_ip] {
        assert!(ipam.join(ip).is_file(), "no reservation {ip} in {ipam:?}");
    }
    agent.remove_manifest("server.yaml");
    agent.remove_manifest("client.yaml");
    wait_removed(agent, &server);
    wait_removed(agent, &client);
    for ip in [&server_ip, &client_ip] {
        assert!(
            !ipam.join(ip).exists(),
            "{ip} is still reserved in {ipam:?}"
        );
    }
}

const SHARE: &str = r#"apiVersion: v1
kind: Pod
metadata: {name: share}
spec:
  terminationGracePeriodSeconds: 1
  volumes:
  - {name: data, emptyDir: {}}
  containers:
  - name: writer
    image: podkeeper.local/busybox:latest
    imagePullPolicy: IfNotPresent
    command: [sh, -c, 'echo written-by-the-writer > /data/msg; exec sleep 3600']
    volumeMounts: [{name: data, mountPath: /data}]
  - name: reader
    image: podkeeper.local/busybox:latest
    imagePullPolicy: IfNotPresent
    command: [sh, -c, 'until [ -s /in/msg ]; do sleep 0.1; done; cat /in/msg; exec sleep 3600']
    volumeMounts: [{name: data, mountPath: /in}]
"#;

const HOST_DIR: &str = r#"apiVersion: v1
kind: Pod
metadata: {name: NAME}
spec:
  terminationGracePeriodSeconds: 1
  volumes:
  - name: host
    hostPath: {path: "PATH", type: TYPE}
  containers:
  - name: lister
    image: podkeeper.local/busybox:latest
    imagePullPolicy: IfNotPresent
    command: [sh, -c, 'ls /host; exec sleep 3600']
    volumeMounts: [{name: host, mountPath: /host}]
"#;

/// Two containers share an emptyDir, which goes with the pod; a hostPath
/// of `type: File` on a directory fails the pod with `FailedMount` naming
/// the volume's field, while `type: Directory` on it mounts it.
#[test]
fn volumes_share_files_and_empty_dirs_go_with_the_pod() {
    if !e2e_enabled("volumes_share_files_and_empty_dirs_go_with_the_pod") {
        return;
    }
    let node = Node::start("ps-volumes", false);
    let agent = &node.agent;
    let host_dir = node.containerd.dir().join("host-dir");
    std::fs::create_dir_all(&host_dir).unwrap();
    std::fs::write(host_dir.join("put-there-by-the-test"), "x").unwrap();
    let host_pod = |name: &str, typ: &str| {
        HOST_DIR
            .replace("NAME", name)
            .replace("PATH", &host_dir.display().to_string())
            .replace("TYPE", typ)
    };
    agent.write_manifest("share.yaml", SHARE);
    agent.write_manifest("as-file.yaml", &host_pod("as-file", "File"));
    agent.write_manifest("as-dir.yaml", &host_pod("as-dir", "Directory"));

    let share = wait_running(
        agent,
        "share",
        &["writer", "reader"],
        Duration::from_secs(30),
    );
    wait_log(agent, &share, "reader", "written-by-the-writer");
    let pod_dir = agent.state.join("pods").join(uid(&share));
    assert!(pod_dir.is_dir(), "{pod_dir:?} missing while the pod runs");

    let as_dir = wait_running(agent, "as-dir", &["lister"], Duration::from_secs(30));
    wait_log(agent, &as_dir, "lister", "put-there-by-the-test");

    let field = "spec.volumes[host].hostPath.path";
    let as_file_name = full("as-file");
    wait_for(
        agent,
        "FailedMount logged for as-file",
        Duration::from_secs(20),
        || {
            agent
                .log()
                .lines()
                .any(|l| {
                    l.contains(&format!("pod={as_file_name}"))
                        && l.contains("FailedMount")
                        && l.contains(field)
                })
                .then_some(())
        },
    );
    let events = String::from_utf8_lossy(&agent.cli(&["events"]).stdout).into_owned();
    assert!(
        events
            .lines()
            .any(|l| l.contains("Warning") && l.contains("FailedMount") && l.contains(field)),
        "no FailedMount event naming {field}:\n{events}"
    );
    let as_file = agent.pod(&as_file_name).expect("as-file listed");
    assert!(running_containers(&as_file).is_empty(), "{as_file}");
    assert_eq!(as_file["status"]["phase"], "Pending", "{as_file}");
    let uid16: String = uid(&as_file).chars().take(16).collect();
    let containers = node
        .containerd
        .ctr(&node.namespace, &["containers", "ls", "-q"])
        .unwrap();
    assert!(
        !containers.contains(&uid16),
        "as-file has containers: {containers}"
    );

    agent.remove_manifest("share.yaml");
    wait_removed(agent, &share);
    assert!(!pod_dir.exists(), "{pod_dir:?} left behind");
}

const LIMITED: &str = r#"apiVersion: v1
kind: Pod
metadata: {name: limited}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: podkeeper.local/busybox:latest
    imagePullPolicy: IfNotPresent
    command: [sleep, '3600']
    resources:
      requests: {cpu: 250m, memory: 32Mi}
      limits: {cpu: 500m, memory: 64Mi}
"#;

/// Requests and limits become the container cgroup's shares, CFS quota and
/// memory limit, in the Burstable pod cgroup under the agent's cgroup root.
#[test]
fn resource_limits_reach_the_container_cgroup() {
    if !e2e_enabled("resource_limits_reach_the_container_cgroup") {
        return;
    }
    let node = Node::start("ps-limits", false);
    let agent = &node.agent;
    agent.write_manifest("limited.yaml", LIMITED);
    let pod = wait_running(agent, "limited", &["main"], Duration::from_secs(30));
    assert_eq!(pod["status"]["qosClass"], "Burstable", "{pod}");
    let uid = uid(&pod);
    let id = status_of(&pod, "containerStatuses", "main")["containerID"]
        .as_str()
        .and_then(|id| id.strip_prefix("containerd://"))
        .expect("containerd:// container ID")
        .to_string();
    assert_eq!(id, format!("pk-{}-c-main-0", &uid[..16]));

    let file = |controller: &str, name: &str| {
        let path =
            format!("/sys/fs/cgroup/{controller}{CGROUP_ROOT}/burstable/pod{uid}/{id}/{name}");
        std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{path}: {e}"))
            .trim()
            .to_string()
    };
    assert_eq!(file("memory", "memory.limit_in_bytes"), "67108864");
    assert_eq!(file("cpu", "cpu.cfs_quota_us"), "50000");
    assert_eq!(file("cpu", "cpu.cfs_period_us"), "100000");
    assert_eq!(file("cpu", "cpu.shares"), "256");
    assert!(
        !file("memory", "cgroup.procs").is_empty(),
        "the container's process is not in its memory cgroup"
    );
}

const HOG: &str = r#"apiVersion: v1
kind: Pod
metadata: {name: hog}
spec:
  terminationGracePeriodSeconds: 1
  restartPolicy: Never
  containers:
  - name: hog
    image: podkeeper.local/busybox:latest
    imagePullPolicy: IfNotPresent
    command: [sh, -c, 'x=$(head -c 100000000 /dev/zero | tr "\0" a); echo survived']
    resources:
      limits: {memory: 32Mi}
"#;

/// A container that allocates past `limits.memory` is killed by the kernel
/// and reported as `OOMKilled` with exit code 137.
#[test]
fn a_container_past_its_memory_limit_is_oom_killed() {
    if !e2e_enabled("a_container_past_its_memory_limit_is_oom_killed") {
        return;
    }
    let node = Node::start("ps-oom", false);
    let agent = &node.agent;
    agent.write_manifest("hog.yaml", HOG);
    // containerd publishes `/tasks/oom` and `/tasks/exit` in either order,
    // so the reason may turn to OOMKilled just after the exit is shown.
    let pod = wait_for(agent, "hog OOMKilled", Duration::from_secs(40), || {
        let pod = agent.pod(&full("hog"))?;
        let status = status_of(&pod, "containerStatuses", "hog");
        (status["state"]["terminated"]["reason"] == "OOMKilled").then_some(pod)
    });
    let status = status_of(&pod, "containerStatuses", "hog");
    let terminated = &status["state"]["terminated"];
    let lines = log_lines(agent, &pod, "hog");
    assert_eq!(terminated["exitCode"], 137, "{status}");
    assert!(!lines.iter().any(|l| l == "survived"), "{lines:?}");
    assert_eq!(pod["status"]["phase"], "Failed", "{pod}");
}

const PID_PODS: &str = r#"apiVersion: v1
kind: Pod
metadata: {name: NAME}
spec:
  terminationGracePeriodSeconds: 1
  shareProcessNamespace: SHARE
  containers:
  - name: sleeper
    image: podkeeper.local/busybox:latest
    imagePullPolicy: IfNotPresent
    command: [sleep, '3601']
  - name: looker
    image: podkeeper.local/busybox:latest
    imagePullPolicy: IfNotPresent
    command: [sh, -c, 'i=0; while true; do i=$((i+1)); echo "round $i"; ps; sleep 0.5; done']
"#;

/// With `shareProcessNamespace: true` one container sees the other's
/// processes; without it, it does not.
#[test]
fn share_process_namespace_lets_containers_see_each_other() {
    if !e2e_enabled("share_process_namespace_lets_containers_see_each_other") {
        return;
    }
    let node = Node::start("ps-pidns", false);
    let agent = &node.agent;
    for (name, share) in [("shared", "true"), ("private", "false")] {
        agent.write_manifest(
            &format!("{name}.yaml"),
            &PID_PODS.replace("NAME", name).replace("SHARE", share),
        );
    }
    let rounds = |pod: &Value| {
        log_lines(agent, pod, "looker")
            .iter()
            .filter(|l| l.starts_with("round "))
            .count()
    };
    let mut logs = Vec::new();
    for name in ["shared", "private"] {
        let pod = wait_running(agent, name, &["sleeper", "looker"], Duration::from_secs(30));
        // Rounds that began after both containers were running.
        let seen = rounds(&pod);
        wait_for(
            agent,
            &format!("{name}: two more ps rounds"),
            Duration::from_secs(20),
            || (rounds(&pod) >= seen + 2).then_some(()),
        );
        logs.push(log_lines(agent, &pod, "looker"));
    }
    let sees = |lines: &[String]| lines.iter().any(|l| l.ends_with("sleep 3601"));
    assert!(
        sees(&logs[0]),
        "the shared pod's looker does not see sleep 3601:\n{}",
        logs[0].join("\n")
    );
    assert!(logs[1].iter().any(|l| l.contains("PID")), "{:?}", logs[1]);
    assert!(
        !sees(&logs[1]),
        "the private pod's looker sees sleep 3601:\n{}",
        logs[1].join("\n")
    );
}

const INIT: &str = r#"apiVersion: v1
kind: Pod
metadata: {name: init}
spec:
  terminationGracePeriodSeconds: 1
  volumes:
  - {name: work, emptyDir: {}}
  initContainers:
  - name: first
    image: podkeeper.local/busybox:latest
    imagePullPolicy: IfNotPresent
    command: [sh, -c, 'echo one >> /work/order']
    volumeMounts: [{name: work, mountPath: /work}]
  - name: side
    image: podkeeper.local/busybox:latest
    imagePullPolicy: IfNotPresent
    restartPolicy: Always
    command: [sleep, '3600']
  - name: second
    image: podkeeper.local/busybox:latest
    imagePullPolicy: IfNotPresent
    command: [sh, -c, 'echo two >> /work/order']
    volumeMounts: [{name: work, mountPath: /work}]
  containers:
  - name: main
    image: podkeeper.local/busybox:latest
    imagePullPolicy: IfNotPresent
    command: [sh, -c, 'cat /work/order; exec sleep 3600']
    volumeMounts: [{name: work, mountPath: /work}]
"#;

/// Init containers run one after the other before the app container; a
/// native sidecar (an init container with `restartPolicy: Always`) is
/// started among them and keeps running.
#[test]
fn init_containers_run_in_order_and_a_sidecar_keeps_running() {
    if !e2e_enabled("init_containers_run_in_order_and_a_sidecar_keeps_running") {
        return;
    }
    let node = Node::start("ps-init", false);
    let agent = &node.agent;
    agent.write_manifest("init.yaml", INIT);
    let pod = wait_running(agent, "init", &["main"], Duration::from_secs(40));
    let lines = wait_log(agent, &pod, "main", "two");
    assert_eq!(lines, ["one", "two"], "main's log");

    let pod = agent.pod(&full("init")).expect("init listed");
    let init = |name: &str| status_of(&pod, "initContainerStatuses", name);
    for name in ["first", "second"] {
        let status = init(name);
        assert_eq!(
            status["state"]["terminated"]["reason"], "Completed",
            "{pod}"
        );
        assert_eq!(status["state"]["terminated"]["exitCode"], 0, "{pod}");
    }
    assert_eq!(
        state_name(&init("side")).as_deref(),
        Some("running"),
        "{pod}"
    );
    assert_eq!(pod["status"]["phase"], "Running", "{pod}");
    let order: Vec<&str> = pod["status"]["initContainerStatuses"]
        .as_array()
        .expect("initContainerStatuses")
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert_eq!(order, ["first", "side", "second"]);
    // The sidecar started before `second` ran, and `second` after `first`.
    let time = |name: &str, field: &str| {
        let status = init(name);
        let state = state_name(&status).unwrap_or_default();
        status["state"][state][field]
            .as_str()
            .and_then(|t| t.parse::<jiff::Timestamp>().ok())
            .unwrap_or_else(|| panic!("{name} has no {field}: {status}"))
    };
    assert!(
        time("first", "finishedAt") <= time("second", "startedAt"),
        "{pod}"
    );
    assert!(
        time("side", "startedAt") <= time("second", "startedAt"),
        "{pod}"
    );
}

const CHATTY: &str = r#"apiVersion: v1
kind: Pod
metadata: {name: chatty}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: talker
    image: podkeeper.local/busybox:latest
    imagePullPolicy: IfNotPresent
    command: [sh, -c, 'i=0; while true; do i=$((i+1)); echo line-$i; done']
"#;

/// Whether `line` is a CRI record `<RFC3339Nano UTC> stdout|stderr P|F
/// line-<n>`.
fn is_cri_record(line: &str) -> bool {
    let fields: Vec<&str> = line.splitn(4, ' ').collect();
    let [time, stream, tag, text] = fields[..] else {
        return false;
    };
    let date_ok = time.len() > 11
        && time.bytes().enumerate().take(10).all(|(i, b)| match i {
            4 | 7 => b == b'-',
            _ => b.is_ascii_digit(),
        })
        && time.as_bytes()[10] == b'T'
        && time.ends_with('Z')
        && time.parse::<jiff::Timestamp>().is_ok();
    date_ok
        && matches!(stream, "stdout" | "stderr")
        && matches!(tag, "P" | "F")
        && text
            .strip_prefix("line-")
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// The number of the last complete `line-<n>` record of the current file
/// (`None` right after a rotation, before the new file has one).
fn last_line_number(path: &Path) -> Option<u64> {
    use std::io::{Seek, SeekFrom};
    let mut file = std::fs::File::open(path).ok()?;
    let len = file.metadata().ok()?.len();
    file.seek(SeekFrom::Start(len.saturating_sub(4096))).ok()?;
    let mut tail = Vec::new();
    file.read_to_end(&mut tail).ok()?;
    let tail = String::from_utf8_lossy(&tail);
    let (complete, _) = tail.rsplit_once('\n')?;
    let (_, n) = complete.lines().next_back()?.rsplit_once(" line-")?;
    n.parse().ok()
}

/// Container output is written by the shim's logger to the CRI path in CRI
/// format, and keeps flowing while the agent is dead (SIGKILLed), so a
/// chatty container never blocks on an absent reader.
#[test]
fn logs_use_the_cri_format_and_survive_an_agent_crash() {
    if !e2e_enabled("logs_use_the_cri_format_and_survive_an_agent_crash") {
        return;
    }
    let mut node = Node::start("ps-logs", false);
    node.agent.write_manifest("chatty.yaml", CHATTY);
    let pod = wait_running(&node.agent, "chatty", &["talker"], Duration::from_secs(30));
    let path = node
        .agent
        .logs
        .join(format!("default_{}_{}", full("chatty"), uid(&pod)))
        .join("talker/0.log");
    // The file rotates at 10 MiB, within a second at this rate, so the
    // current file need not start at line-1: its records are checked, and
    // that they count up one by one.
    let text = wait_for(
        &node.agent,
        "100 log lines",
        Duration::from_secs(10),
        || {
            let text = std::fs::read_to_string(&path).ok()?;
            (text.lines().count() > 100).then_some(text)
        },
    );
    let first: Vec<&str> = text.lines().take(100).collect();
    for line in &first {
        assert!(is_cri_record(line), "not a CRI record: {line:?}");
        assert!(line.contains(" stdout F line-"), "{line:?}");
    }
    let numbers: Vec<u64> = first
        .iter()
        .filter_map(|l| l.rsplit_once(" line-")?.1.parse().ok())
        .collect();
    assert!(
        numbers.windows(2).all(|w| w[1] == w[0] + 1),
        "records missing or out of order: {numbers:?}"
    );

    let last = |agent: &Agent| {
        wait_for(
            agent,
            "a last line-N record",
            Duration::from_secs(5),
            || last_line_number(&path),
        )
    };
    node.agent.kill();
    assert!(!node.agent.is_running());
    let before = last(&node.agent);
    std::thread::sleep(Duration::from_secs(2));
    let after = last(&node.agent);
    eprintln!("with no agent: line-{before} → line-{after} in 2 s");
    // A pipe nobody drained would hold some 64 KiB: about 5 000 of these
    // lines.
    assert!(
        after >= before + 20_000,
        "the container wrote only {} lines in 2 s without the agent (line-{before} → line-{after})",
        after.saturating_sub(before)
    );
}

/// Bad pod specs: a mount of an undefined volume, a subPath with `..` and a
/// Secret reference each leave that container waiting with
/// `CreateContainerConfigError` naming the field; an invalid quantity is a
/// Warning naming the pod and `resources`. A good pod keeps running through
/// all of it, and so does the agent.
#[test]
fn bad_pod_specs_are_reported_without_disturbing_others() {
    if !e2e_enabled("bad_pod_specs_are_reported_without_disturbing_others") {
        return;
    }
    let mut node = Node::start("ps-badspec", false);
    let agent = &node.agent;
    let pod = |name: &str, extra_spec: &str, extra_container: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  terminationGracePeriodSeconds: 1\n{extra_spec}  containers:\n  - name: c\n    image: {BUSYBOX}\n    imagePullPolicy: IfNotPresent\n    command: [sleep, '3600']\n{extra_container}"
        )
    };
    agent.write_manifest("good.yaml", &pod("good", "", ""));
    let good = wait_running(agent, "good", &["c"], Duration::from_secs(30));
    let good_id = status_of(&good, "containerStatuses", "c")["containerID"].clone();

    agent.write_manifest(
        "undefined.yaml",
        &pod(
            "undefined",
            "",
            "    volumeMounts: [{name: nowhere, mountPath: /x}]\n",
        ),
    );
    agent.write_manifest(
        "escape.yaml",
        &pod(
            "escape",
            "  volumes: [{name: data, emptyDir: {}}]\n",
            "    volumeMounts: [{name: data, mountPath: /x, subPath: ../../etc}]\n",
        ),
    );
    agent.write_manifest(
        "secret.yaml",
        &pod(
            "secret",
            "",
            "    env: [{name: PASSWORD, valueFrom: {secretKeyRef: {name: db, key: password}}}]\n",
        ),
    );
    agent.write_manifest(
        "quantity.yaml",
        &pod("quantity", "", "    resources: {limits: {memory: 10K}}\n"),
    );

    let good_unchanged = || {
        let pod = agent.pod(&full("good")).expect("good listed");
        let status = status_of(&pod, "containerStatuses", "c");
        assert_eq!(
            state_name(&status).as_deref(),
            Some("running"),
            "the good pod stopped: {status}"
        );
        assert_eq!(status["containerID"], good_id, "{status}");
        assert_eq!(status["restartCount"], 0, "{status}");
    };
    let config_error = |name: &str, field: &str| {
        let message = wait_for(
            agent,
            &format!("{name}: CreateContainerConfigError"),
            Duration::from_secs(20),
            || {
                good_unchanged();
                let pod = agent.pod(&full(name))?;
                let reason = waiting_reason(&pod, "c")?;
                (reason == "CreateContainerConfigError").then(|| {
                    status_of(&pod, "containerStatuses", "c")["state"]["waiting"]["message"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string()
                })
            },
        );
        assert!(
            message.contains(field),
            "{name}: the message does not name {field}: {message:?}"
        );
    };
    config_error("undefined", "spec.containers[c].volumeMounts[nowhere]");
    config_error("escape", "spec.containers[c].volumeMounts[data].subPath");
    config_error("secret", "spec.containers[c].env[0]");

    let quantity = full("quantity");
    let field = "spec.containers[c].resources.limits.memory";
    let line = wait_for(
        agent,
        "a warning about quantity's resources",
        Duration::from_secs(20),
        || {
            good_unchanged();
            agent
                .log()
                .lines()
                .find(|l| {
                    l.contains("WARN")
                        && l.contains(&format!("pod={quantity}"))
                        && l.contains(field)
                })
                .map(String::from)
        },
    );
    assert!(line.contains("10K"), "{line}");
    let events = String::from_utf8_lossy(&agent.cli(&["events"]).stdout).into_owned();
    assert!(
        events
            .lines()
            .any(|l| l.starts_with("Warning") && l.contains(field)),
        "no Warning event naming {field}:\n{events}"
    );
    let quantity_pod = agent.pod(&quantity).expect("quantity listed");
    assert!(
        running_containers(&quantity_pod).is_empty(),
        "{quantity_pod}"
    );

    // A little longer, in case a bad pod's retry disturbs the good one.
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        good_unchanged();
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(node.agent.is_running(), "the agent exited");
}
