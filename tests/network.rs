//! End-to-end: pod networking through the real CNI plugins
//! (containernetworking-plugins in /usr/lib/cni or /opt/cni/bin).
//!
//! Needs root. Each test uses its own network (bridge
//! `pkt<pid%1000><letter>`, subnet `10.<200+n>.0.0/16`) and state dir, talks
//! only to 127.0.0.1, to its bridge's address and to namespaces it created,
//! and removes its namespaces, bridge, per-pod rules and the loopback guard
//! chain for its bridge when done, also when it fails. Left on the host by design: the plugins' shared iptables chains
//! (CNI-HOSTPORT-*, CNI-FORWARD, CNI-ADMIN), which hold no per-pod rule, and
//! that is what a real node keeps too. `net.ipv4.ip_forward`, which the
//! bridge plugin turns on, is restored when the last test ends.

mod common;

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::containerd::e2e_enabled;
use podkeeper::runtime::network::{
    netns, Network, NetworkSettings, PodNetwork, PodNetworkRequest, PortMapping,
};

/// The CNI network name of the built-in configuration.
const BUILTIN_NAME: &str = "podkeeper";
const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// One test's network: a temp state dir, a network on its own bridge and
/// subnet, and what to clean up.
struct TestNet {
    dir: tempfile::TempDir,
    bridge: String,
    octet: u8,
    network: Network,
    /// (sandbox ID, netns path) of every pod set up, for cleanup.
    pods: Mutex<Vec<(String, PathBuf)>>,
    _forward: ForwardGuard,
}

impl TestNet {
    /// A built-in network; `n` makes the bridge and subnet unique among this
    /// file's tests, the PID keeps bridges of concurrent test runs apart.
    fn new(n: u8) -> TestNet {
        let dir = tempfile::tempdir().expect("temp dir");
        let settings = settings(n, dir.path());
        TestNet::load(n, dir, settings)
    }

    fn load(n: u8, dir: tempfile::TempDir, settings: NetworkSettings) -> TestNet {
        let forward = ForwardGuard::acquire();
        let network = Network::load(settings).expect("loading the network");
        TestNet {
            dir,
            bridge: bridge_name(n),
            octet: 200 + n,
            network,
            pods: Mutex::new(Vec::new()),
            _forward: forward,
        }
    }

    fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    fn netns_dir(&self) -> PathBuf {
        self.state_dir().join("netns")
    }

    /// host-local's reservations: one file per address, named by it.
    fn reservations(&self, network_name: &str) -> Vec<String> {
        let dir = self.state_dir().join("cni/networks").join(network_name);
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|name| name.parse::<IpAddr>().is_ok())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    fn cached_results(&self) -> Vec<String> {
        std::fs::read_dir(self.state_dir().join("cni/results"))
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The bridge's ports (the hosts' ends of the pods' veths).
    fn bridge_ports(&self) -> Vec<String> {
        std::fs::read_dir(format!("/sys/class/net/{}/brif", self.bridge))
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    fn gateway(&self) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, self.octet, 0, 1))
    }

    fn new_netns(&self, name: &str) -> PathBuf {
        let path = netns::create(&self.netns_dir(), name).expect("creating a netns");
        self.pods
            .lock()
            .unwrap()
            .push((name.to_string(), path.clone()));
        path
    }
}

impl Drop for TestNet {
    /// Tears every pod down again (a no-op for those the test tore down),
    /// removes the namespaces and deletes the bridge. Runs the async
    /// teardown on a thread of its own: Drop may run inside the test's
    /// runtime, which cannot be blocked on.
    fn drop(&mut self) {
        let pods = std::mem::take(&mut *self.pods.lock().unwrap_or_else(|p| p.into_inner()));
        let network = &self.network;
        std::thread::scope(|s| {
            s.spawn(|| {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("cleanup runtime");
                for (id, path) in &pods {
                    let req = request(id, path, &[]);
                    if let Err(e) = rt.block_on(network.teardown(&req)) {
                        eprintln!("cleanup: teardown of {id}: {e}");
                    }
                    if let Err(e) = netns::remove(path) {
                        eprintln!("cleanup: removing {}: {e}", path.display());
                    }
                }
            });
        });
        if Path::new("/sys/class/net").join(&self.bridge).exists() {
            match Command::new("ip")
                .args(["link", "del", &self.bridge])
                .status()
            {
                Ok(s) if s.success() => {}
                other => eprintln!("cleanup: ip link del {}: {other:?}", self.bridge),
            }
        }
        common::agent::remove_loopback_guard(&self.bridge);
    }
}

fn bridge_name(n: u8) -> String {
    format!("pkt{}{}", std::process::id() % 1000, char::from(b'a' + n))
}

fn settings(n: u8, dir: &Path) -> NetworkSettings {
    NetworkSettings {
        // Empty, so the host's /etc/cni/net.d does not matter.
        conf_dir: dir.join("net.d"),
        state_dir: dir.join("state"),
        default_bridge: bridge_name(n),
        default_subnet: format!("10.{}.0.0/16", 200 + n),
        ..NetworkSettings::default()
    }
}

fn request<'a>(id: &'a str, netns: &'a Path, mappings: &'a [PortMapping]) -> PodNetworkRequest<'a> {
    PodNetworkRequest {
        sandbox_id: id,
        netns,
        pod_name: "web-node1",
        pod_namespace: "default",
        pod_uid: "0a1b2c3d",
        port_mappings: mappings,
    }
}

fn tcp(host_port: u16, container_port: u16, host_ip: &str) -> PortMapping {
    PortMapping {
        host_port,
        container_port,
        protocol: "tcp".into(),
        host_ip: host_ip.into(),
    }
}

/// Keeps `net.ipv4.ip_forward` as the tests found it: the bridge plugin
/// turns it on (a node needs it; a test machine should get it back).
struct ForwardGuard;

/// (tests running, value found by the first).
static FORWARD: Mutex<(usize, Option<String>)> = Mutex::new((0, None));
const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";

impl ForwardGuard {
    fn acquire() -> ForwardGuard {
        let mut state = FORWARD.lock().unwrap_or_else(|p| p.into_inner());
        if state.0 == 0 {
            state.1 = std::fs::read_to_string(IP_FORWARD).ok();
        }
        state.0 += 1;
        ForwardGuard
    }
}

impl Drop for ForwardGuard {
    fn drop(&mut self) {
        let mut state = FORWARD.lock().unwrap_or_else(|p| p.into_inner());
        state.0 -= 1;
        if state.0 == 0 {
            if let Some(value) = state.1.take() {
                let _ = std::fs::write(IP_FORWARD, value);
            }
        }
    }
}

/// Runs `f` on a thread that has joined the network namespace at `path`.
fn in_netns<T: Send + 'static>(
    path: &Path,
    f: impl FnOnce() -> T + Send + 'static,
) -> JoinHandle<T> {
    let file = std::fs::File::open(path).expect("opening the netns");
    std::thread::spawn(move || {
        // SAFETY: setns(2) on an open nsfs fd; affects only this thread.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
        f()
    })
}

/// A TCP server in a namespace answering every connection with
/// "pong <peer address>\n" until dropped.
struct Server {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    fn start(netns: &Path, port: u16) -> Server {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = in_netns(netns, move || {
            let listener = TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)).expect("bind in netns");
            listener.set_nonblocking(true).unwrap();
            ready_tx.send(()).unwrap();
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut conn, peer)) => {
                        conn.set_nonblocking(false).unwrap();
                        let _ = writeln!(conn, "pong {}", peer.ip());
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    Err(e) => panic!("accept: {e}"),
                }
            }
        });
        ready_rx.recv_timeout(IO_TIMEOUT).expect("server ready");
        Server {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Connects and reads the server's line.
fn fetch(addr: SocketAddr) -> std::io::Result<String> {
    let mut conn = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
    conn.set_read_timeout(Some(IO_TIMEOUT))?;
    let mut text = String::new();
    conn.read_to_string(&mut text)?;
    Ok(text.trim().to_string())
}

fn fetch_from(netns: &Path, addr: SocketAddr) -> std::io::Result<String> {
    in_netns(netns, move || fetch(addr))
        .join()
        .expect("client thread")
}

/// Every iptables and ip6tables rule line mentioning one of `needles`.
fn rules_mentioning(needles: &[String]) -> Vec<String> {
    let mut found = Vec::new();
    for save in ["iptables-save", "ip6tables-save"] {
        let out = Command::new(save).output().expect("running iptables-save");
        assert!(
            out.status.success(),
            "{save}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            if needles.iter().any(|n| line.contains(n.as_str())) {
                found.push(format!("{save}: {line}"));
            }
        }
    }
    found
}

fn in_subnet(ip: IpAddr, octet: u8) -> bool {
    matches!(ip, IpAddr::V4(v4) if v4.octets()[..2] == [10, octet])
}

#[tokio::test(flavor = "multi_thread")]
async fn pods_reach_each_other_and_their_host_ports_and_teardown_leaves_nothing() {
    if !e2e_enabled("pods_reach_each_other_and_their_host_ports_and_teardown_leaves_nothing") {
        return;
    }
    let net = TestNet::new(0);
    assert_eq!(
        net.network.describe(),
        format!("built-in {} 10.200.0.0/16", net.bridge)
    );
    let (id_a, id_b, id_c) = ("pk-net0-a-pause", "pk-net0-b-pause", "pk-net0-c-pause");
    let ns_a = net.new_netns(id_a);
    let ns_b = net.new_netns(id_b);
    let ns_c = net.new_netns(id_c);
    let b_ports = [tcp(18080, 8000, "")];
    let c_ports = [tcp(18081, 8000, "127.0.0.1")];

    // Concurrent setups, as pod workers do them.
    let (req_a, req_b, req_c) = (
        request(id_a, &ns_a, &[]),
        request(id_b, &ns_b, &b_ports),
        request(id_c, &ns_c, &c_ports),
    );
    let started = Instant::now();
    let (a, b, c) = tokio::join!(
        net.network.setup(&req_a),
        net.network.setup(&req_b),
        net.network.setup(&req_c),
    );
    let setup_three = started.elapsed();
    let (a, b, c) = (
        a.expect("setup A"),
        b.expect("setup B"),
        c.expect("setup C"),
    );
    for pod in [&a, &b, &c] {
        assert_eq!(pod.interface, "eth0");
        assert_eq!(pod.ips.len(), 1, "{pod:?}");
        assert!(in_subnet(pod.ips[0], net.octet), "{pod:?}");
    }
    let (ip_a, ip_b, ip_c) = (a.ips[0], b.ips[0], c.ips[0]);
    assert!(ip_a != ip_b && ip_b != ip_c && ip_a != ip_c);
    let mut want = vec![ip_a.to_string(), ip_b.to_string(), ip_c.to_string()];
    want.sort();
    assert_eq!(net.reservations(BUILTIN_NAME), want);
    assert_eq!(net.bridge_ports().len(), 3);
    assert_eq!(net.cached_results().len(), 3);

    // Pod to pod.
    let server_b = Server::start(&ns_b, 8000);
    let server_c = Server::start(&ns_c, 8000);
    let reply = fetch_from(&ns_a, SocketAddr::new(ip_b, 8000)).expect("A to B");
    assert_eq!(reply, format!("pong {ip_a}"));

    // hostPort like `docker run -p 18080:8000`: 127.0.0.1 and the node's
    // own addresses (the bridge's is one), from the node and from pods, and
    // from B itself (hairpin).
    let gateway = net.gateway();
    assert!(fetch(SocketAddr::from(([127, 0, 0, 1], 18080)))
        .expect("127.0.0.1:18080")
        .starts_with("pong "));
    assert!(fetch(SocketAddr::new(gateway, 18080))
        .expect("gateway:18080")
        .starts_with("pong "));
    assert!(fetch_from(&ns_a, SocketAddr::new(gateway, 18080))
        .expect("A to the hostPort")
        .starts_with("pong "));
    assert!(fetch_from(&ns_b, SocketAddr::new(gateway, 18080))
        .expect("B to its own hostPort")
        .starts_with("pong "));

    // hostIP restricts it: C's port is on 127.0.0.1 only.
    assert!(fetch(SocketAddr::from(([127, 0, 0, 1], 18081)))
        .expect("127.0.0.1:18081")
        .starts_with("pong "));
    assert!(
        fetch(SocketAddr::new(gateway, 18081)).is_err(),
        "C's hostPort answered on the bridge address"
    );

    // CHECK passes for a pod without port mappings.
    net.network
        .check(&request(id_a, &ns_a, &[]), &a)
        .await
        .expect("CHECK of A");
    let other = PodNetwork {
        ips: vec![ip_b],
        interface: "eth0".into(),
    };
    let err = net
        .network
        .check(&request(id_a, &ns_a, &[]), &other)
        .await
        .unwrap_err();
    assert!(err.to_string().contains(&ip_b.to_string()), "{err}");
    match net.network.check(&request(id_b, &ns_b, &b_ports), &b).await {
        Ok(()) => eprintln!("CHECK of B (with a hostPort) passed"),
        Err(e) => eprintln!("CHECK of B (with a hostPort) failed: {e}"),
    }
    drop(server_b);
    drop(server_c);

    // Teardown, B and C without their mappings: the cached ones are used.
    let (req_a, req_b, req_c) = (
        request(id_a, &ns_a, &[]),
        request(id_b, &ns_b, &[]),
        request(id_c, &ns_c, &[]),
    );
    let started = Instant::now();
    let (ta, tb, tc) = tokio::join!(
        net.network.teardown(&req_a),
        net.network.teardown(&req_b),
        net.network.teardown(&req_c),
    );
    let teardown_three = started.elapsed();
    ta.expect("teardown A");
    tb.expect("teardown B");
    tc.expect("teardown C");
    eprintln!("timings: setup of 3 pods {setup_three:?}, teardown of 3 pods {teardown_three:?}");

    assert_eq!(net.reservations(BUILTIN_NAME), Vec::<String>::new());
    assert_eq!(net.bridge_ports(), Vec::<String>::new());
    assert_eq!(net.cached_results(), Vec::<String>::new());
    let needles = [
        id_a.to_string(),
        id_b.to_string(),
        id_c.to_string(),
        format!("{ip_a}/"),
        format!("{ip_b}/"),
        format!("{ip_c}/"),
        format!("{ip_b}:"),
        "18080".to_string(),
        "18081".to_string(),
    ];
    assert_eq!(rules_mentioning(&needles), Vec::<String>::new());
    assert!(fetch(SocketAddr::from(([127, 0, 0, 1], 18080))).is_err());

    // A second teardown is a no-op.
    net.network
        .teardown(&request(id_b, &ns_b, &b_ports))
        .await
        .expect("second teardown");

    // One more pod, timed alone.
    let started = Instant::now();
    let d = net
        .network
        .setup(&request(id_a, &ns_a, &b_ports))
        .await
        .expect("setup A again");
    let setup_one = started.elapsed();
    let started = Instant::now();
    net.network
        .teardown(&request(id_a, &ns_a, &[]))
        .await
        .expect("teardown A again");
    let teardown_one = started.elapsed();
    eprintln!(
        "timings: setup of 1 pod with a hostPort {setup_one:?}, teardown {teardown_one:?} ({d:?})"
    );

    for path in [&ns_a, &ns_b, &ns_c] {
        netns::remove(path).expect("removing a netns");
        assert!(!path.exists());
        netns::remove(path).expect("removing a removed netns");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn teardown_after_the_netns_is_gone_leaves_nothing() {
    if !e2e_enabled("teardown_after_the_netns_is_gone_leaves_nothing") {
        return;
    }
    let net = TestNet::new(1);
    let id = "pk-net1-gone-pause";
    let ns = net.new_netns(id);
    let ports = [tcp(18090, 8000, "")];
    let pod = net
        .network
        .setup(&request(id, &ns, &ports))
        .await
        .expect("setup");
    let ip = pod.ips[0];
    assert_eq!(net.reservations(BUILTIN_NAME), [ip.to_string()]);
    assert!(!rules_mentioning(&[id.to_string()]).is_empty());

    // The namespace goes first (and its veth with it); what remains at the
    // path is a bare mount point, as after a reboot.
    netns::remove(&ns).expect("removing the netns");
    std::fs::write(&ns, "").unwrap();
    assert!(!netns::is_netns(&ns));
    net.network
        .teardown(&request(id, &ns, &[]))
        .await
        .expect("teardown without the netns");
    assert_eq!(net.reservations(BUILTIN_NAME), Vec::<String>::new());
    assert_eq!(net.bridge_ports(), Vec::<String>::new());
    assert_eq!(net.cached_results(), Vec::<String>::new());
    let needles = [
        id.to_string(),
        format!("{ip}/"),
        format!("{ip}:"),
        "18090".to_string(),
    ];
    assert_eq!(rules_mentioning(&needles), Vec::<String>::new());
    net.network
        .teardown(&request(id, &ns, &[]))
        .await
        .expect("second teardown");
    std::fs::remove_file(&ns).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_plugin_rolls_the_chain_back() {
    if !e2e_enabled("a_failing_plugin_rolls_the_chain_back") {
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("temp dir");
    let bin = dir.path().join("bin");
    let conf_dir = dir.path().join("net.d");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::create_dir_all(&conf_dir).unwrap();
    // Fails ADD with a CNI error; DEL succeeds.
    let plugin = bin.join("pkfail");
    std::fs::write(
        &plugin,
        "#!/bin/sh\ncat >/dev/null\nif [ \"$CNI_COMMAND\" = ADD ]; then\n\
         echo '{\"cniVersion\":\"1.0.0\",\"code\":11,\"msg\":\"not today\",\"details\":\"a test\"}'\n\
         exit 1\nfi\nexit 0\n",
    )
    .unwrap();
    std::fs::set_permissions(&plugin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let bridge = bridge_name(2);
    let ipam_dir = dir.path().join("state/cni/networks");
    let conflist = serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "pkfailnet",
        "plugins": [
            {"type": "bridge", "bridge": bridge, "isGateway": true, "ipMasq": true,
             "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.202.0.0/16"}]], "dataDir": ipam_dir}},
            {"type": "pkfail"},
        ],
    });
    let conf_file = conf_dir.join("10-pkfail.conflist");
    std::fs::write(&conf_file, conflist.to_string()).unwrap();
    let mut s = settings(2, dir.path());
    s.bin_dirs.insert(0, bin.clone());
    let net = TestNet::load(2, dir, s);
    assert!(
        net.network.describe().contains("10-pkfail.conflist"),
        "{}",
        net.network.describe()
    );

    let id = "pk-net2-fail-pause";
    let ns = net.new_netns(id);
    let mut attempts = 0;
    let err = loop {
        attempts += 1;
        let err = net
            .network
            .setup(&request(id, &ns, &[]))
            .await
            .expect_err("setup must fail");
        // A script just written can be "busy" while another test thread
        // forks: not what this test is about.
        if err.to_string().contains("Text file busy") && attempts < 5 {
            continue;
        }
        break err.to_string();
    };
    for part in [
        "pkfail",
        "ADD",
        "code 11",
        "not today",
        "a test",
        "10-pkfail.conflist",
    ] {
        assert!(err.contains(part), "{part:?} missing in {err}");
    }
    assert_eq!(net.reservations("pkfailnet"), Vec::<String>::new());
    assert_eq!(net.bridge_ports(), Vec::<String>::new());
    assert_eq!(net.cached_results(), Vec::<String>::new());
    assert_eq!(rules_mentioning(&[id.to_string()]), Vec::<String>::new());
}

#[test]
fn netns_create_pins_a_namespace_with_loopback_up() {
    if !e2e_enabled("netns_create_pins_a_namespace_with_loopback_up") {
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let netns_dir = dir.path().join("netns");
    let path = netns::create(&netns_dir, "pk-net3-pause").expect("create");
    assert_eq!(path, netns_dir.join("pk-net3-pause"));
    assert!(netns::is_netns(&path));
    let own = std::fs::metadata("/proc/self/ns/net").unwrap().ino();
    assert_ne!(
        std::fs::metadata(&path).unwrap().ino(),
        own,
        "not a new namespace"
    );
    assert_eq!(
        netns::create(&netns_dir, "pk-net3-pause")
            .unwrap_err()
            .kind(),
        std::io::ErrorKind::AlreadyExists
    );

    // 127.0.0.1 works inside: lo is up.
    let loopback = in_netns(&path, || {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let client = std::thread::spawn(move || TcpStream::connect_timeout(&addr, IO_TIMEOUT));
        let (mut conn, _) = listener.accept()?;
        conn.write_all(b"ok")?;
        client.join().expect("client")?;
        Ok::<_, std::io::Error>(())
    });
    loopback
        .join()
        .expect("netns thread")
        .expect("loopback inside the netns");

    netns::remove(&path).expect("remove");
    assert!(!path.exists());
    assert!(!netns::is_netns(&path));
    netns::remove(&path).expect("remove again");
}
