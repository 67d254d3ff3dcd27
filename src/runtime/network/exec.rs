//! The CNI exec protocol: one plugin binary per call, parameters in
//! `CNI_*` environment variables, the network configuration on stdin, the
//! result (or an error object) as JSON on stdout.

use std::net::IpAddr;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use serde_json::{Map, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::config::NetConfList;
use super::{NetworkError, PodNetwork};

/// PATH for plugins when the agent has none: they run iptables, ip6tables
/// and sysctl-like helpers found through it.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum CniCommand {
    Add,
    Del,
    Check,
}

impl CniCommand {
    pub fn as_str(self) -> &'static str {
        match self {
            CniCommand::Add => "ADD",
            CniCommand::Del => "DEL",
            CniCommand::Check => "CHECK",
        }
    }
}

/// The `CNI_*` parameters of one call.
#[derive(Debug, Clone, Copy)]
pub(super) struct Invocation<'a> {
    pub command: CniCommand,
    pub container_id: &'a str,
    /// Empty on DEL when the namespace is gone (the spec allows it).
    pub netns: &'a str,
    pub ifname: &'a str,
    pub args: &'a str,
    pub cni_path: &'a str,
}

/// The first `<dir>/<plugin>` that is a file.
pub(super) fn find_plugin(bin_dirs: &[PathBuf], plugin: &str) -> Option<PathBuf> {
    bin_dirs
        .iter()
        .map(|dir| dir.join(plugin))
        .find(|path| path.is_file())
}

/// The configuration one plugin gets on stdin: its own object with the
/// list's `name` and `cniVersion`, the previous result if any, and
/// `runtimeConfig` with just the capabilities it declares (libcni's rule:
/// a plugin must not see runtime values it did not ask for).
pub(super) fn plugin_stdin(
    list: &NetConfList,
    plugin: &Map<String, Value>,
    prev: Option<&Value>,
    capability_args: &Map<String, Value>,
) -> Vec<u8> {
    let mut conf = plugin.clone();
    conf.insert("name".into(), Value::String(list.name.clone()));
    conf.insert("cniVersion".into(), Value::String(list.cni_version.clone()));
    if let Some(prev) = prev {
        conf.insert("prevResult".into(), prev.clone());
    }
    let declared = plugin.get("capabilities").and_then(Value::as_object);
    let wanted: Vec<(&String, &Value)> = capability_args
        .iter()
        .filter(|(cap, _)| {
            declared
                .and_then(|caps| caps.get(cap.as_str()))
                .and_then(Value::as_bool)
                .unwrap_or(false)
        })
        .collect();
    if !wanted.is_empty() {
        let runtime = conf
            .entry("runtimeConfig")
            .or_insert_with(|| Value::Object(Map::new()));
        if !runtime.is_object() {
            *runtime = Value::Object(Map::new());
        }
        if let Value::Object(runtime) = runtime {
            for (cap, value) in wanted {
                runtime.insert(cap.clone(), value.clone());
            }
        }
    }
    // Serializing a Value cannot fail: its keys are strings.
    serde_json::to_vec(&Value::Object(conf)).unwrap_or_default()
}

/// Why a plugin call failed, before the caller adds which plugin and
/// network it was.
#[derive(Debug)]
pub(super) enum Failure {
    Spawn(std::io::Error),
    Timeout(Duration),
    /// The plugin's CNI error object.
    Cni {
        code: u64,
        msg: String,
        details: String,
    },
    /// A failure without a CNI error, or an unusable result.
    Other(String),
}

impl Failure {
    pub fn into_error(self, plugin: &str, command: CniCommand, conf: String) -> NetworkError {
        let plugin = plugin.to_string();
        let command = command.as_str();
        match self {
            Failure::Spawn(e) => NetworkError::PluginFailed {
                plugin,
                command,
                conf,
                reason: format!("cannot run it: {e}"),
            },
            Failure::Timeout(timeout) => NetworkError::Timeout {
                plugin,
                command,
                conf,
                timeout,
            },
            Failure::Cni { code, msg, details } => NetworkError::Plugin {
                plugin,
                command,
                conf,
                code,
                msg,
                details,
            },
            Failure::Other(reason) => NetworkError::PluginFailed {
                plugin,
                command,
                conf,
                reason,
            },
        }
    }
}

/// Runs one plugin and returns its result (`None` when it printed nothing,
/// as DEL and CHECK do). The plugin runs in its own process group, so on
/// timeout the IPAM plugin it may have started is killed with it.
pub(super) async fn run(
    binary: &Path,
    invocation: &Invocation<'_>,
    stdin: &[u8],
    timeout: Duration,
) -> Result<Option<Value>, Failure> {
    let mut cmd = tokio::process::Command::new(binary);
    cmd.env("CNI_COMMAND", invocation.command.as_str())
        .env("CNI_CONTAINERID", invocation.container_id)
        .env("CNI_NETNS", invocation.netns)
        .env("CNI_IFNAME", invocation.ifname)
        .env("CNI_ARGS", invocation.args)
        .env("CNI_PATH", invocation.cni_path)
        .current_dir("/")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    if std::env::var_os("PATH").is_none() {
        cmd.env("PATH", DEFAULT_PATH);
    }
    let started = std::time::Instant::now();
    let mut child = cmd.spawn().map_err(Failure::Spawn)?;
    let pid = child.id();
    let mut stdin_pipe = child.stdin.take();
    let mut stdout_pipe = child.stdout.take();
    let mut stderr_pipe = child.stderr.take();
    let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
    let finished = async {
        let write = async {
            if let Some(pipe) = stdin_pipe.as_mut() {
                // A plugin that exits without reading its stdin is judged
                // by its exit status and output, not by this broken pipe.
                let _ = pipe.write_all(stdin).await;
            }
            // Closing stdin is the end of the configuration.
            drop(stdin_pipe);
        };
        let (_, out, err, status) = tokio::join!(
            write,
            read_all(stdout_pipe.as_mut(), &mut stdout),
            read_all(stderr_pipe.as_mut(), &mut stderr),
            child.wait()
        );
        out.and(err).and(status)
    };
    let status = match tokio::time::timeout(timeout, finished).await {
        Ok(status) => status.map_err(Failure::Spawn)?,
        Err(_) => {
            if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) {
                // SAFETY: kill(2) of the process group this call created
                // (process_group(0) made the plugin its leader). Its ID
                // cannot have been reused: either the leader is not reaped
                // yet, or a member still holds an output pipe open, and
                // Linux does not reuse the ID of a live group.
                unsafe { libc::kill(-pid, libc::SIGKILL) };
            }
            let _ = child.kill().await;
            return Err(Failure::Timeout(timeout));
        }
    };
    tracing::debug!(
        plugin = %binary.display(),
        command = invocation.command.as_str(),
        container = invocation.container_id,
        %status,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "CNI plugin ran"
    );
    interpret(status, &stdout, &stderr)
}

/// Reads a pipe to its end (when every process holding it has closed it).
async fn read_all<R: tokio::io::AsyncRead + Unpin>(
    pipe: Option<&mut R>,
    buf: &mut Vec<u8>,
) -> std::io::Result<()> {
    match pipe {
        Some(pipe) => pipe.read_to_end(buf).await.map(|_| ()),
        None => Ok(()),
    }
}

/// Judges a finished plugin by its exit status and output.
pub(super) fn interpret(
    status: ExitStatus,
    stdout: &[u8],
    stderr: &[u8],
) -> Result<Option<Value>, Failure> {
    let text = String::from_utf8_lossy(stdout);
    let trimmed = text.trim();
    if !status.success() {
        if let Some(error) = parse_error(trimmed) {
            return Err(error);
        }
        let how = match (status.code(), status.signal()) {
            (Some(code), _) => format!("exit status {code}"),
            (None, Some(signal)) => format!("signal {signal}"),
            _ => status.to_string(),
        };
        return Err(Failure::Other(format!(
            "{how} without a CNI error; stdout: {:?}, stderr: {:?}",
            clip(trimmed),
            clip(String::from_utf8_lossy(stderr).trim())
        )));
    }
    if trimmed.is_empty() {
        return Ok(None);
    }
    match serde_json::from_str::<Value>(trimmed) {
        Ok(value @ Value::Object(_)) => Ok(Some(value)),
        Ok(_) | Err(_) => Err(Failure::Other(format!(
            "succeeded but its stdout is not a JSON object: {:?}",
            clip(trimmed)
        ))),
    }
}

/// A CNI error object: `{"code": N, "msg": "...", "details": "..."}`.
pub(super) fn parse_error(stdout: &str) -> Option<Failure> {
    let value: Value = serde_json::from_str(stdout).ok()?;
    let code = value.get("code")?.as_u64()?;
    let text = |key: &str| {
        value
            .get(key)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    Some(Failure::Cni {
        code,
        msg: text("msg"),
        details: text("details"),
    })
}

/// What the well-known CNI error codes mean, for messages.
pub(super) fn code_meaning(code: u64) -> &'static str {
    match code {
        1 => "incompatible CNI version",
        2 => "unsupported field in network configuration",
        3 => "container unknown or does not exist",
        4 => "invalid necessary environment variables",
        5 => "I/O failure",
        6 => "failed to decode content",
        7 => "invalid network config",
        11 => "try again later",
        50..=99 => "plugin-specific error",
        _ => "plugin error",
    }
}

/// Keeps error messages readable when a plugin prints a lot.
fn clip(text: &str) -> String {
    const MAX: usize = 2000;
    if text.len() <= MAX {
        return text.to_string();
    }
    let mut end = MAX;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// The pod's addresses from an ADD result: those on interface `ifname`
/// inside the sandbox (or not tied to an interface), IPv4 first. Reads the
/// 0.3.0+ `ips` list and the 0.1/0.2 `ip4`/`ip6` objects.
pub(super) fn pod_network(result: &Value, ifname: &str) -> Result<PodNetwork, String> {
    let interfaces = result
        .get("interfaces")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    let in_pod = |index: Option<u64>| match index {
        None => true,
        Some(i) => usize::try_from(i)
            .ok()
            .and_then(|i| interfaces.get(i))
            .is_some_and(|iface| {
                iface.get("name").and_then(Value::as_str) == Some(ifname)
                    && iface
                        .get("sandbox")
                        .and_then(Value::as_str)
                        .is_some_and(|s| !s.is_empty())
            }),
    };
    let mut addresses = Vec::new();
    if let Some(ips) = result.get("ips").and_then(Value::as_array) {
        for ip in ips {
            if !in_pod(ip.get("interface").and_then(Value::as_u64)) {
                continue;
            }
            let address = ip
                .get("address")
                .and_then(Value::as_str)
                .ok_or_else(|| format!("result has an IP without an address: {ip}"))?;
            addresses.push(parse_address(address)?);
        }
    }
    for key in ["ip4", "ip6"] {
        if let Some(address) = result
            .get(key)
            .and_then(|v| v.get("ip"))
            .and_then(Value::as_str)
        {
            addresses.push(parse_address(address)?);
        }
    }
    if addresses.is_empty() {
        return Err(format!("the result has no IP address for {ifname}"));
    }
    // Stable: keeps the plugin's order within each family.
    addresses.sort_by_key(|ip| ip.is_ipv6());
    addresses.dedup();
    Ok(PodNetwork {
        ips: addresses,
        interface: ifname.to_string(),
    })
}

/// "10.85.0.2/16" → 10.85.0.2.
fn parse_address(cidr: &str) -> Result<IpAddr, String> {
    let addr = cidr.split_once('/').map_or(cidr, |(addr, _)| addr);
    addr.parse()
        .map_err(|_| format!("result has an invalid address {cidr:?}"))
}

#[cfg(test)]
mod tests {
    use super::super::config::Source;
    use super::*;
    use serde_json::json;

    fn list(plugins: Value) -> NetConfList {
        let Value::Array(plugins) = plugins else {
            panic!("plugins must be a list")
        };
        NetConfList {
            name: "testnet".into(),
            cni_version: "1.0.0".into(),
            disable_check: false,
            plugins: plugins
                .into_iter()
                .map(|p| p.as_object().unwrap().clone())
                .collect(),
            source: Source::File("/etc/cni/net.d/10-test.conflist".into()),
        }
    }

    fn stdin_of(
        list: &NetConfList,
        i: usize,
        prev: Option<&Value>,
        caps: &Map<String, Value>,
    ) -> Value {
        serde_json::from_slice(&plugin_stdin(list, &list.plugins[i], prev, caps)).unwrap()
    }

    fn port_caps() -> Map<String, Value> {
        json!({"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]})
            .as_object()
            .unwrap()
            .clone()
    }

    #[test]
    fn stdin_has_the_lists_name_and_version_and_the_previous_result() {
        let l = list(json!([
            {"type": "bridge", "bridge": "cni0", "cniVersion": "0.3.1"},
            {"type": "tuning"},
        ]));
        let first = stdin_of(&l, 0, None, &port_caps());
        assert_eq!(
            first,
            json!({"type": "bridge", "bridge": "cni0", "name": "testnet", "cniVersion": "1.0.0"})
        );
        let prev = json!({"cniVersion": "1.0.0", "ips": [{"address": "10.1.0.2/16"}]});
        let second = stdin_of(&l, 1, Some(&prev), &port_caps());
        assert_eq!(
            second,
            json!({"type": "tuning", "name": "testnet", "cniVersion": "1.0.0", "prevResult": prev})
        );
    }

    #[test]
    fn runtime_config_goes_only_to_plugins_declaring_the_capability() {
        let l = list(json!([
            {"type": "bridge"},
            {"type": "portmap", "capabilities": {"portMappings": true}},
            {"type": "other", "capabilities": {"portMappings": false, "bandwidth": true}},
            {"type": "merged", "capabilities": {"portMappings": true}, "runtimeConfig": {"kept": 1}},
        ]));
        let caps = port_caps();
        assert!(stdin_of(&l, 0, None, &caps).get("runtimeConfig").is_none());
        assert_eq!(
            stdin_of(&l, 1, None, &caps)["runtimeConfig"],
            json!({"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]})
        );
        assert!(stdin_of(&l, 2, None, &caps).get("runtimeConfig").is_none());
        assert_eq!(
            stdin_of(&l, 3, None, &caps)["runtimeConfig"],
            json!({"kept": 1, "portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]})
        );
    }

    #[test]
    fn cni_errors_are_parsed_from_stdout() {
        let status = ExitStatus::from_raw(1 << 8);
        let out = br#"{"code": 7, "msg": "bad config", "details": "field x"}"#;
        match interpret(status, out, b"") {
            Err(Failure::Cni { code, msg, details }) => {
                assert_eq!(
                    (code, msg.as_str(), details.as_str()),
                    (7, "bad config", "field x")
                );
            }
            other => panic!("{other:?}"),
        }
        let err = Failure::Cni {
            code: 7,
            msg: "bad config".into(),
            details: String::new(),
        }
        .into_error("bridge", CniCommand::Add, "testnet from /x.conflist".into())
        .to_string();
        assert_eq!(
            err,
            "CNI plugin bridge ADD failed (network testnet from /x.conflist): \
             code 7 (invalid network config): bad config"
        );
        match interpret(status, b"panic: oops", b"goroutine 1") {
            Err(Failure::Other(reason)) => {
                assert!(reason.contains("exit status 1"), "{reason}");
                assert!(
                    reason.contains("panic: oops") && reason.contains("goroutine 1"),
                    "{reason}"
                );
            }
            other => panic!("{other:?}"),
        }
        let killed = ExitStatus::from_raw(libc::SIGKILL);
        match interpret(killed, b"", b"") {
            Err(Failure::Other(reason)) => assert!(reason.contains("signal 9"), "{reason}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn success_output_is_a_result_or_nothing() {
        let ok = ExitStatus::from_raw(0);
        assert_eq!(interpret(ok, b"  \n", b"").unwrap(), None);
        assert_eq!(
            interpret(ok, br#"{"cniVersion":"1.0.0"}"#, b"").unwrap(),
            Some(json!({"cniVersion": "1.0.0"}))
        );
        assert!(matches!(interpret(ok, b"[1]", b""), Err(Failure::Other(_))));
    }

    #[test]
    fn pod_addresses_come_from_the_sandbox_interface_ipv4_first() {
        let result = json!({
            "cniVersion": "1.0.0",
            "interfaces": [
                {"name": "cni0", "mac": "aa"},
                {"name": "veth1", "mac": "bb"},
                {"name": "eth0", "mac": "cc", "sandbox": "/run/netns/x"},
            ],
            "ips": [
                {"interface": 2, "address": "fd00::5/64"},
                {"interface": 2, "address": "10.85.0.5/16", "gateway": "10.85.0.1"},
                {"interface": 0, "address": "10.85.0.1/16"},
            ],
        });
        let network = pod_network(&result, "eth0").unwrap();
        assert_eq!(
            network.ips,
            [
                "10.85.0.5".parse::<IpAddr>().unwrap(),
                "fd00::5".parse().unwrap()
            ]
        );
        assert_eq!(network.interface, "eth0");

        let old = json!({"cniVersion": "0.2.0", "ip4": {"ip": "10.1.0.3/24"}});
        assert_eq!(
            pod_network(&old, "eth0").unwrap().ips,
            ["10.1.0.3".parse::<IpAddr>().unwrap()]
        );
        let no_interface = json!({"ips": [{"address": "10.1.0.4/24"}]});
        assert_eq!(pod_network(&no_interface, "eth0").unwrap().ips.len(), 1);

        assert!(pod_network(&json!({"cniVersion": "1.0.0"}), "eth0").is_err());
        assert!(pod_network(&json!({"ips": [{"address": "nonsense"}]}), "eth0").is_err());
    }

    /// A fake plugin (a shell script) that records what it got.
    fn fake_plugin(dir: &Path, name: &str, body: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    fn invocation(command: CniCommand) -> Invocation<'static> {
        Invocation {
            command,
            container_id: "sbx1",
            netns: "/run/netns/x",
            ifname: "eth0",
            args: "IgnoreUnknown=1;K8S_POD_NAME=web",
            cni_path: "/a:/b",
        }
    }

    #[tokio::test]
    async fn a_plugin_gets_the_cni_environment_and_stdin() {
        let dir = tempfile::tempdir().unwrap();
        let record = dir.path().join("record");
        let plugin = fake_plugin(
            dir.path(),
            "recorder",
            &format!(
                "{{ env | grep '^CNI_' | sort; cat; }} > {}\necho '{{\"cniVersion\":\"1.0.0\",\"ips\":[]}}'",
                record.display()
            ),
        );
        let result = run(
            &plugin,
            &invocation(CniCommand::Add),
            b"{\"x\":1}",
            Duration::from_secs(10),
        )
        .await
        .unwrap();
        assert_eq!(result, Some(json!({"cniVersion": "1.0.0", "ips": []})));
        let recorded = std::fs::read_to_string(&record).unwrap();
        assert_eq!(
            recorded,
            "CNI_ARGS=IgnoreUnknown=1;K8S_POD_NAME=web\nCNI_COMMAND=ADD\nCNI_CONTAINERID=sbx1\n\
             CNI_IFNAME=eth0\nCNI_NETNS=/run/netns/x\nCNI_PATH=/a:/b\n{\"x\":1}"
        );
        assert_eq!(
            find_plugin(
                &[dir.path().join("none"), dir.path().to_path_buf()],
                "recorder"
            ),
            Some(plugin)
        );
        assert_eq!(find_plugin(&[dir.path().to_path_buf()], "missing"), None);
    }

    #[tokio::test]
    async fn a_hung_plugin_and_its_children_are_killed() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("child.pid");
        let plugin = fake_plugin(
            dir.path(),
            "hang",
            &format!("sleep 30 &\necho $! > {}\nwait", pidfile.display()),
        );
        let started = std::time::Instant::now();
        let err = run(
            &plugin,
            &invocation(CniCommand::Del),
            b"{}",
            Duration::from_millis(500),
        )
        .await
        .unwrap_err();
        assert!(matches!(err, Failure::Timeout(_)), "{err:?}");
        assert!(started.elapsed() < Duration::from_secs(10));
        let child: i32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // The grandchild (an IPAM plugin, in real life) is gone too.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let stat = std::fs::read_to_string(format!("/proc/{child}/stat")).unwrap_or_default();
            // Gone, or a zombie waiting for init to reap it.
            if stat.is_empty() || stat.split(' ').nth(2) == Some("Z") {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "sleep {child} survived: {stat}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
