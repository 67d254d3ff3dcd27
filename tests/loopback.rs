//! End-to-end: the host's loopback stays the host's on the built-in network
//! (CVE-2020-8558). A hostPort on 127.0.0.1 makes portmap turn on
//! `route_localnet` on the bridge; a pod with `NET_ADMIN` that then routes
//! 127.0.0.1 through its gateway must still not reach a host service bound
//! to 127.0.0.1, while the hostPort keeps answering on 127.0.0.1; also
//! after a firewall reload removed the guard and the agent restarted.
//!
//! Needs root. Starts its own containerd and agent; the host side is two
//! UDP sockets of the test, one on 127.0.0.1 and one on the test bridge's
//! address. When the test ends (also by a failure) its pods are removed
//! through the agent (CNI DEL takes their NAT rules), then the bridge and
//! the agent's loopback guard chain are deleted.

mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::agent::{remove_loopback_guard, Agent, BUSYBOX, NODE};
use common::containerd::{e2e_enabled, PrivateContainerd};
use podkeeper::runtime::network::localnet;

/// A pod serving a page on a hostPort bound to 127.0.0.1 only.
const WEB: &str = r#"apiVersion: v1
kind: Pod
metadata: {name: web}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: web
    image: podkeeper.local/busybox:latest
    imagePullPolicy: IfNotPresent
    command: [sh, -c, 'mkdir /www && echo served-by-the-pod > /www/index.html && exec httpd -f -p 80 -h /www']
    ports: [{containerPort: 80, hostPort: HOST_PORT, hostIP: 127.0.0.1}]
"#;

/// A pod that takes 127.0.0.0/8 off its loopback, routes 127.0.0.1 through
/// its gateway, and then keeps sending UDP datagrams (busybox tftp read
/// requests): one to 127.0.0.1:SECRET_PORT, then one to
/// GATEWAY:CONTROL_PORT, which shows the host that a round went out.
const ATTACKER: &str = r#"apiVersion: v1
kind: Pod
metadata: {name: attacker}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: attacker
    image: podkeeper.local/busybox:latest
    imagePullPolicy: IfNotPresent
    securityContext: {capabilities: {add: [NET_ADMIN]}}
    command:
    - sh
    - -c
    - |
      ip route del local 127.0.0.0/8 dev lo table local
      ip route del local 127.0.0.1 dev lo table local
      ip route add 127.0.0.1/32 via GATEWAY dev eth0 || exit 1
      while true; do
        timeout 1 tftp -g -r secret -l /tmp/x 127.0.0.1 SECRET_PORT
        timeout 1 tftp -g -r control -l /tmp/x GATEWAY CONTROL_PORT
      done
"#;

/// A containerd with busybox and an agent on its built-in network; removes
/// the pods through the agent when dropped.
struct Node {
    agent: Agent,
    _containerd: PrivateContainerd,
}

impl Node {
    fn start(namespace: &str) -> Node {
        let containerd = PrivateContainerd::start().expect("starting containerd");
        containerd
            .import_busybox(namespace, BUSYBOX)
            .expect("importing busybox");
        let agent = Agent::start_with(&containerd, namespace, |agent| agent.use_bridge())
            .expect("starting the agent");
        Node {
            agent,
            _containerd: containerd,
        }
    }
}

impl Drop for Node {
    /// Removes the manifests and waits (bounded, never panicking) until the
    /// agent logged each pod's removal, which comes after its CNI DEL took
    /// the pod's rules; the agent's own drop then deletes the bridge and
    /// the guard chain.
    fn drop(&mut self) {
        self.agent.remove_all_pods(Duration::from_secs(30));
    }
}

/// The body of `GET /` on 127.0.0.1:`port`.
fn http_get(port: u16) -> std::io::Result<String> {
    let mut stream =
        TcpStream::connect_timeout(&(Ipv4Addr::LOCALHOST, port).into(), Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.write_all(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    Ok(response)
}

/// The bridge's address: the first host of the agent's /24 test subnet,
/// which the bridge plugin gives the bridge as the pods' gateway.
fn gateway(agent: &Agent) -> Ipv4Addr {
    let network: Ipv4Addr = agent
        .subnet
        .split_once('/')
        .and_then(|(net, _)| net.parse().ok())
        .expect("the agent's subnet");
    Ipv4Addr::from(u32::from(network) + 1)
}

/// Waits until `socket` has received `rounds` datagrams mentioning `what`.
fn wait_for_datagrams(socket: &UdpSocket, what: &str, rounds: usize, agent: &Agent) {
    socket
        .set_read_timeout(Some(Duration::from_millis(500)))
        .expect("read timeout");
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = 0;
    let mut buf = [0u8; 512];
    while seen < rounds {
        assert!(
            Instant::now() < deadline,
            "no {what} datagram from the pod within 60 s; agent log:\n{}",
            agent.log()
        );
        if let Ok((n, _)) = socket.recv_from(&mut buf) {
            if String::from_utf8_lossy(&buf[..n]).contains(what) {
                seen += 1;
            }
        }
    }
}

/// The first datagram waiting on `socket`, if any, without waiting.
fn pending(socket: &UdpSocket) -> Option<(String, SocketAddr)> {
    socket.set_nonblocking(true).expect("non-blocking");
    let mut buf = [0u8; 512];
    let got = socket
        .recv_from(&mut buf)
        .ok()
        .map(|(n, from)| (String::from_utf8_lossy(&buf[..n]).into_owned(), from));
    socket.set_nonblocking(false).expect("blocking");
    got
}

/// Lets the attacker pod send two more rounds, each to 127.0.0.1 a second
/// before the control datagram, so anything let through has arrived; then
/// checks that nothing did.
fn assert_loopback_unreachable(secret: &UdpSocket, control: &UdpSocket, agent: &Agent) {
    wait_for_datagrams(control, "control", 2, agent);
    if let Some((datagram, from)) = pending(secret) {
        panic!(
            "a pod reached the host's {}: {datagram:?} from {from}",
            secret.local_addr().expect("local address")
        );
    }
}

/// Whether INPUT jumps to the agent's loopback guard for `bridge`.
fn guard_installed(bridge: &str) -> bool {
    Command::new("iptables")
        .args(["--wait", "-C", "INPUT", "-j"])
        .arg(localnet::chain_name(Some(bridge)))
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The attack of CVE-2020-8558 once portmap turned on `route_localnet`,
/// right after the pods' ADD and again after a firewall reload dropped the
/// guard and the agent restarted (which puts it back for running pods).
#[test]
fn a_pod_rerouting_loopback_cannot_reach_the_host_but_host_ports_on_it_work() {
    if !e2e_enabled("a_pod_rerouting_loopback_cannot_reach_the_host_but_host_ports_on_it_work") {
        return;
    }
    let mut node = Node::start("loopback");
    let agent = &node.agent;
    let host_port = 19_000 + (std::process::id() % 1000) as u16;
    agent.write_manifest(
        "web.yaml",
        &WEB.replace("HOST_PORT", &host_port.to_string()),
    );
    agent.wait_running(&format!("web-{NODE}"), 1, Duration::from_secs(60));
    let page = || http_get(host_port).is_ok_and(|r| r.contains("served-by-the-pod"));
    agent.wait_until(
        "the page on 127.0.0.1:hostPort",
        Duration::from_secs(20),
        page,
    );

    // The host service a pod must not reach, and the pod's proof of life.
    let secret = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("binding on 127.0.0.1");
    let control = UdpSocket::bind((gateway(agent), 0)).expect("binding on the bridge");
    let port = |s: &UdpSocket| s.local_addr().map(|a| a.port()).expect("local address");
    let manifest = ATTACKER
        .replace("GATEWAY", &gateway(agent).to_string())
        .replace("SECRET_PORT", &port(&secret).to_string())
        .replace("CONTROL_PORT", &port(&control).to_string());
    agent.write_manifest("attacker.yaml", &manifest);
    assert_loopback_unreachable(&secret, &control, agent);
    assert!(
        page(),
        "127.0.0.1:{host_port} no longer serves the pod's page"
    );

    // A firewall reload flushes the guard; the restarted agent puts it back
    // before any new pod's ADD would.
    remove_loopback_guard(&agent.bridge);
    node.agent.restart().expect("restarting the agent");
    let agent = &node.agent;
    agent.wait_until(
        "the loopback guard after the restart",
        Duration::from_secs(20),
        || guard_installed(&agent.bridge),
    );
    // What got through while the guard was gone, a round ago at most.
    wait_for_datagrams(&control, "control", 1, agent);
    while pending(&secret).is_some() {}
    assert_loopback_unreachable(&secret, &control, agent);
    assert!(
        page(),
        "127.0.0.1:{host_port} no longer serves the pod's page"
    );
}
