//! Runs the real `podkeeper` binary against a private containerd, with its
//! own manifest, state and log directories, and talks to its HTTP API on
//! the root-only unix socket.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use podkeeper::runtime::network::localnet;

use super::containerd::PrivateContainerd;
use super::process::kill_and_wait;

pub const NODE: &str = "node1";

/// The busybox image the tests import (see `examples/build-busybox-image.sh`).
pub const BUSYBOX: &str = "podkeeper.local/busybox:latest";

/// A pod whose one container prints a line and exits 1, over and over.
pub const CRASHING_POD: &str = r#"apiVersion: v1
kind: Pod
metadata: {name: crash}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: app
    image: podkeeper.local/busybox:latest
    command: [sh, -c, 'echo starting; exit 1']
"#;

fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Sends one `GET path` with `headers` on `stream` and reads the whole
/// answer: (status code, body).
pub fn request(
    mut stream: impl Read + Write,
    path: &str,
    headers: &[&str],
) -> anyhow::Result<(u16, String)> {
    let mut head = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    for header in headers {
        head.push_str(header);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    let mut response = Vec::new();
    // A TLS peer may close without close_notify; what arrived counts.
    if let Err(e) = stream.read_to_end(&mut response) {
        if response.is_empty() {
            return Err(e.into());
        }
    }
    let response = String::from_utf8_lossy(&response);
    let (head, body) = response
        .split_once("\r\n\r\n")
        .context("malformed HTTP response")?;
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("no status code")?;
    Ok((code, body.to_string()))
}

/// A private containerd with busybox imported into `namespace`, and an
/// agent on it.
pub fn start_with_busybox(namespace: &str) -> (PrivateContainerd, Agent) {
    let containerd = PrivateContainerd::start().expect("starting containerd");
    containerd
        .import_busybox(namespace, BUSYBOX)
        .expect("importing busybox");
    let agent = Agent::start(&containerd, namespace).expect("starting the agent");
    (containerd, agent)
}

/// Pod cgroups of the tests go under their own root, never `/kubepods`.
pub const CGROUP_ROOT: &str = "/podkeeper-e2e";

/// The test network's config file.
const PLAIN_BRIDGE: &str = "10-plain-bridge.conflist";

/// Tells the agents of one test process apart in bridge names and subnets.
static AGENTS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

pub struct Agent {
    child: Child,
    pub manifests: PathBuf,
    pub state: PathBuf,
    pub logs: PathBuf,
    /// The air-gap images directory.
    pub images: PathBuf,
    /// Docker-style credentials file given as `--registry-config`.
    pub registry_config: PathBuf,
    pub namespace: String,
    /// CNI config dir: a plain bridge network unless [`Agent::use_bridge`]
    /// empties it so the agent's built-in network (NAT, hostPorts) is used.
    pub cni_conf_dir: PathBuf,
    /// The built-in network's bridge and subnet, unique per agent.
    pub bridge: String,
    pub subnet: String,
    socket: PathBuf,
    http: String,
    api: String,
    log_file: PathBuf,
}

impl Agent {
    /// Starts the agent on `containerd`, in containerd namespace `namespace`,
    /// and waits until its HTTP endpoint answers.
    pub fn start(containerd: &PrivateContainerd, namespace: &str) -> anyhow::Result<Agent> {
        Self::start_with(containerd, namespace, |_| {})
    }

    /// Like [`Agent::start`], letting `prepare` put files (archives,
    /// credentials, manifests) in place before the agent starts.
    pub fn start_with(
        containerd: &PrivateContainerd,
        namespace: &str,
        prepare: impl FnOnce(&Agent),
    ) -> anyhow::Result<Agent> {
        let base = containerd.dir().join(format!("agent-{namespace}"));
        let manifests = base.join("manifests");
        let images = base.join("images");
        std::fs::create_dir_all(&manifests)?;
        std::fs::create_dir_all(&images)?;
        let port = free_port()?;
        let api_port = free_port()?;
        let cni_conf_dir = base.join("cni");
        std::fs::create_dir_all(&cni_conf_dir)?;
        let n = AGENTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let unique = (std::process::id() % 200) * 7 + n;
        let bridge = format!("pke{}", unique % 100_000);
        let subnet = format!("10.{}.{}.0/24", 100 + (unique / 250) % 150, unique % 250);
        // A bridge without NAT or port mapping leaves no iptables rules
        // behind when a test ends with its pods still running.
        let plain = serde_json::json!({
            "cniVersion": "0.4.0",
            "name": format!("podkeeper-test-{unique}"),
            "plugins": [{
                "type": "bridge",
                "bridge": bridge,
                "isGateway": true,
                "ipMasq": false,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": subnet}]],
                    "dataDir": base.join("ipam"),
                },
            }],
        });
        std::fs::write(cni_conf_dir.join(PLAIN_BRIDGE), plain.to_string())?;
        let mut agent = Agent {
            cni_conf_dir,
            bridge,
            subnet,
            child: Command::new("/bin/true").spawn()?,
            state: base.join("state"),
            logs: base.join("logs"),
            registry_config: base.join("docker-config.json"),
            manifests,
            images,
            namespace: namespace.into(),
            socket: containerd.socket().to_path_buf(),
            http: format!("127.0.0.1:{port}"),
            api: format!("127.0.0.1:{api_port}"),
            log_file: base.join("agent.log"),
        };
        prepare(&agent);
        agent.restart()?;
        Ok(agent)
    }

    /// Kills the agent (SIGKILL, as a crash would) and starts it again with
    /// the same directories; returns once it answers.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.restart_with_flags(&[])
    }

    /// Like [`Agent::restart`], with `flags` added to the usual command line
    /// (a short `--manifest-resync-seconds`, say); a later
    /// [`Agent::restart`] drops them again.
    pub fn restart_with_flags(&mut self, flags: &[&str]) -> anyhow::Result<()> {
        self.restart_with(flags, &[])
    }

    /// Like [`Agent::restart`], with `env` added to the agent's environment
    /// (a test hook, say); a later [`Agent::restart`] drops it again.
    pub fn restart_with_env(&mut self, env: &[(&str, &str)]) -> anyhow::Result<()> {
        self.restart_with(&[], env)
    }

    fn restart_with(&mut self, flags: &[&str], env: &[(&str, &str)]) -> anyhow::Result<()> {
        kill_and_wait(&mut self.child);
        self.child = self.spawn(flags, env)?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if self.get("/healthz").is_ok() {
                return Ok(());
            }
            if let Some(status) = self.child.try_wait()? {
                bail!("agent exited with {status}:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!(
            "agent did not answer on {} within 30 s:\n{}",
            self.http,
            self.log()
        )
    }

    /// Kills the agent (SIGKILL, as a crash would) and does not start it
    /// again; its pods keep running. [`Agent::restart`] brings it back.
    pub fn kill(&mut self) {
        kill_and_wait(&mut self.child);
    }

    fn spawn(&self, extra_flags: &[&str], env: &[(&str, &str)]) -> anyhow::Result<Child> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_file)?;
        Command::new(env!("CARGO_BIN_EXE_podkeeper"))
            .arg("run")
            .arg("--config")
            .arg("/dev/null")
            .arg("--manifest-dir")
            .arg(&self.manifests)
            .arg("--containerd-address")
            .arg(&self.socket)
            .args(["--containerd-namespace", &self.namespace])
            .args(["--http-listen", &self.http])
            .args(["--api-listen", &self.api])
            .arg("--state-dir")
            .arg(&self.state)
            .arg("--pod-log-dir")
            .arg(&self.logs)
            .arg("--images-dir")
            .arg(&self.images)
            .arg("--registry-config")
            .arg(&self.registry_config)
            .args(["--node-name", NODE])
            .arg("--cni-conf-dir")
            .arg(&self.cni_conf_dir)
            .args(["--cni-default-bridge", &self.bridge])
            .args(["--cni-default-subnet", &self.subnet])
            .args(["--cgroup-root", CGROUP_ROOT])
            .args(extra_flags)
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting podkeeper")
    }

    /// Writes a manifest the safe way (temporary dot-file, then rename).
    pub fn write_manifest(&self, file: &str, text: &str) {
        let temporary = self.manifests.join(format!(".{file}.tmp"));
        std::fs::write(&temporary, text).expect("writing manifest");
        std::fs::rename(&temporary, self.manifests.join(file)).expect("renaming manifest");
    }

    pub fn remove_manifest(&self, file: &str) {
        std::fs::remove_file(self.manifests.join(file)).expect("removing manifest");
    }

    /// Makes the agent use its built-in bridge network (call in the
    /// `prepare` of [`Agent::start_with`]).
    pub fn use_bridge(&self) {
        let _ = std::fs::remove_file(self.cni_conf_dir.join(PLAIN_BRIDGE));
    }

    /// Runs a `podkeeper` client command against this agent.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(env!("CARGO_BIN_EXE_podkeeper"))
            .args(args)
            .arg("--state-dir")
            .arg(&self.state)
            .output()
            .expect("running the podkeeper CLI")
    }

    /// The agent's own log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_file).unwrap_or_default()
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The agent process's PID, for reading its footprint from /proc.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// GET `path` on the agent's root-only HTTP socket, which serves the
    /// whole API without credentials: (status code, body).
    pub fn get(&self, path: &str) -> anyhow::Result<(u16, String)> {
        let stream = UnixStream::connect(self.http_socket())?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        request(stream, path, &[])
    }

    /// GET `path` on the plain HTTP port (`http-listen`), with `headers`.
    pub fn get_plain(&self, path: &str, headers: &[&str]) -> anyhow::Result<(u16, String)> {
        let stream = TcpStream::connect(&self.http)?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        request(stream, path, headers)
    }

    /// The root-only unix socket of the HTTP API.
    pub fn http_socket(&self) -> PathBuf {
        self.state.join("podkeeper-http.sock")
    }

    /// The kubeconfig the agent wrote for its HTTPS API.
    pub fn kubeconfig(&self) -> PathBuf {
        self.state.join("kubeconfig")
    }

    /// The `/pods` PodList.
    pub fn pods(&self) -> serde_json::Value {
        let (code, body) = self.get("/pods").expect("GET /pods");
        assert_eq!(code, 200, "{body}");
        serde_json::from_str(&body).expect("/pods is JSON")
    }

    /// One pod of `/pods` by its full name.
    pub fn pod(&self, name: &str) -> Option<serde_json::Value> {
        self.pods()["items"]
            .as_array()?
            .iter()
            .find(|p| p["metadata"]["name"] == name)
            .cloned()
    }

    /// Waits until pod `name` has `count` running containers.
    pub fn wait_running(&self, name: &str, count: usize, timeout: Duration) -> Duration {
        self.wait_until(
            &format!("{count} running containers in {name}"),
            timeout,
            || {
                self.pod(name)
                    .is_some_and(|p| running_containers(&p).len() == count)
            },
        )
    }

    /// Polls until `check` is true; panics with the agent log on timeout.
    pub fn wait_until(
        &self,
        what: &str,
        timeout: Duration,
        mut check: impl FnMut() -> bool,
    ) -> Duration {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if check() {
                return start.elapsed();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "timed out after {timeout:?} waiting for {what}\nagent log:\n{}",
            self.log()
        );
    }

    /// Waits up to `timeout` for the agent to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<std::process::ExitStatus> {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!("the agent did not exit within {timeout:?}:\n{}", self.log())
    }

    /// Sends SIGTERM, as a service manager stops the agent, and waits up to
    /// `timeout` for it to exit; returns its exit status and how long it
    /// took.
    pub fn terminate(
        &mut self,
        timeout: Duration,
    ) -> anyhow::Result<(std::process::ExitStatus, Duration)> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "the agent had already exited with {status}:\n{}",
                self.log()
            );
        }
        let pid = libc::pid_t::try_from(self.child.id())?;
        let sent = Instant::now();
        // SAFETY: kill(2) on our own child, which is not reaped yet.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
        while sent.elapsed() < timeout {
            if let Some(status) = self.child.try_wait()? {
                return Ok((status, sent.elapsed()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!(
            "the agent did not exit within {timeout:?} of SIGTERM:\n{}",
            self.log()
        )
    }

    /// Removes every manifest and waits, bounded by `within` and never
    /// panicking (it runs in `Drop`s), until the agent logged each pod's
    /// removal, which comes after its teardown (containers, CNI DEL,
    /// volumes, pod files, cgroup). Restarts a stopped agent first.
    pub fn remove_all_pods(&mut self, within: Duration) {
        if !self.is_running() {
            if let Err(e) = self.restart() {
                eprintln!("cleanup: cannot restart the agent: {e}");
                return;
            }
        }
        let uids: Vec<String> = self
            .get("/pods")
            .ok()
            .and_then(|(_, body)| serde_json::from_str::<serde_json::Value>(&body).ok())
            .and_then(|list| {
                let items = list["items"].as_array()?.iter();
                Some(
                    items
                        .filter_map(|p| p["metadata"]["uid"].as_str().map(String::from))
                        .collect(),
                )
            })
            .unwrap_or_default();
        for entry in std::fs::read_dir(&self.manifests)
            .into_iter()
            .flatten()
            .flatten()
        {
            let _ = std::fs::remove_file(entry.path());
        }
        let deadline = Instant::now() + within;
        while !uids.iter().all(|uid| self.logged_removal(uid)) {
            if Instant::now() > deadline {
                eprintln!("cleanup: pods {uids:?} not all removed within {within:?}");
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Whether the agent logged that it removed pod `uid` (after its
    /// teardown: containers, network, volumes, pod files and cgroup).
    pub fn logged_removal(&self, uid: &str) -> bool {
        self.log()
            .lines()
            .any(|l| l.contains("pod removed") && l.contains(&format!("uid={uid}")))
    }

    /// The plain HTTP port's `127.0.0.1:<port>`.
    pub fn http_address(&self) -> &str {
        &self.http
    }

    /// The HTTPS API's `127.0.0.1:<port>`.
    pub fn api_address(&self) -> &str {
        &self.api
    }
}

impl Drop for Agent {
    /// Stops the agent and removes what its pods hold on the host beyond
    /// the private containerd's directory: their tasks (so runc removes
    /// their cgroups), the emptied pod cgroups, and the test bridge.
    fn drop(&mut self) {
        kill_and_wait(&mut self.child);
        let ctr = |args: &[&str]| {
            Command::new("ctr")
                .arg("--address")
                .arg(&self.socket)
                .args(["--connect-timeout", "2s", "-n", &self.namespace])
                .args(args)
                .stderr(Stdio::null())
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default()
        };
        for id in ctr(&["tasks", "ls", "-q"]).lines() {
            ctr(&["tasks", "delete", "--force", id]);
        }
        remove_empty_pod_cgroups();
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .stderr(Stdio::null())
            .status();
        remove_loopback_guard(&self.bridge);
    }
}

/// Removes the chain that keeps pods off the host's loopback, which the
/// agent installs for a bridge with hostPorts and leaves in place when it
/// stops (as a node would): every jump to it from INPUT, then the chain.
/// Pieces already gone are fine.
pub fn remove_loopback_guard(bridge: &str) {
    let chain = localnet::chain_name(Some(bridge));
    let iptables = |args: &[&str]| {
        Command::new("iptables")
            .arg("--wait")
            .args(args)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    while iptables(&["-D", "INPUT", "-j", &chain]) {}
    iptables(&["-F", &chain]);
    iptables(&["-X", &chain]);
}

/// rmdir of every pod cgroup under the tests' cgroup root; the kernel
/// refuses those still in use, so other tests' pods are unaffected.
fn remove_empty_pod_cgroups() {
    let Ok(controllers) = std::fs::read_dir("/sys/fs/cgroup") else {
        return;
    };
    for controller in controllers.flatten() {
        let root = controller.path().join(CGROUP_ROOT.trim_start_matches('/'));
        let qos_dirs = [
            root.clone(),
            root.join("burstable"),
            root.join("besteffort"),
        ];
        for dir in qos_dirs {
            for pod in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                if pod.file_name().to_string_lossy().starts_with("pod") {
                    let _ = std::fs::remove_dir(pod.path());
                }
            }
        }
    }
}

/// Names of containers whose state in a pod's status is `running`.
pub fn running_containers(pod: &serde_json::Value) -> Vec<String> {
    pod["status"]["containerStatuses"]
        .as_array()
        .map(|list| {
            list.iter()
                .filter(|c| c["state"]["running"].is_object())
                .filter_map(|c| c["name"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// The waiting reason of a pod's container, if it is waiting.
pub fn waiting_reason(pod: &serde_json::Value, container: &str) -> Option<String> {
    pod["status"]["containerStatuses"]
        .as_array()?
        .iter()
        .find(|c| c["name"] == container)?["state"]["waiting"]["reason"]
        .as_str()
        .map(String::from)
}
