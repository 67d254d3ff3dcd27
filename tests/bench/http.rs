//! Benchmark: the HTTP API under load, in process, with a synthetic node
//! of 110 pods (the kubelet's default pod limit), each with two running
//! containers and a few events. No containerd: the image service (unused
//! by the HTTP API) is pointed at a socket that is never served.
//!
//! `cargo bench --bench http` (env HTTP_BENCH_RATE, default 1000 req/s;
//! HTTP_BENCH_SECONDS, default 5; HTTP_BENCH_CONNECTIONS, default 16, the
//! most one user may hold).
//! For each endpoint: an open-loop run at the target rate spread over
//! keep-alive connections, latency measured from each request's scheduled
//! send time (so a stall also counts for the requests queued behind it),
//! then a closed-loop run for the most it serves. Each endpoint is measured
//! over plain HTTP (the API as the root-only socket serves it, on TCP here)
//! and over HTTPS with the admin token (the `api-listen` listener, its
//! certificate issued from a CA made in a temporary state directory).
//! Client and server share the process and its cores. Prints a table;
//! asserts nothing about time.

use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper::Request;
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::PodStatus;
use podkeeper::api::pki::Pki;
use podkeeper::api::{tls, ApiState};
use podkeeper::config::ApiSettings;
use podkeeper::desired::{self, DesiredSet};
use podkeeper::images::credentials::Credentials;
use podkeeper::images::registry::RegistryClient;
use podkeeper::images::service::ImageService;
use podkeeper::manifest::parse::parse_manifest;
use podkeeper::runtime::containerd::Containerd;
use podkeeper::status::events::{EventLog, EventType, ObjectRef, Retention};
use podkeeper::status::store::StatusStore;
use rustls::pki_types::pem::PemObject;

const PODS: usize = 110;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() -> anyhow::Result<()> {
    let rate = env("HTTP_BENCH_RATE", 1000);
    let seconds = env("HTTP_BENCH_SECONDS", 5);
    let connections = env("HTTP_BENCH_CONNECTIONS", 16);
    let tokio = tokio::runtime::Runtime::new()?;
    tokio.block_on(async {
        let work = tempfile::tempdir()?;
        let (plain, https) = start_server(work.path()).await?;
        println!(
            "{PODS} pods, 2 containers and 5 events each; open loop {rate} req/s for {seconds} s over {connections} connections, then closed loop"
        );
        println!(
            "{:<44} {:>5} {:>8} {:>9} {:>9} {:>9} {:>10} {:>12}",
            "endpoint", "over", "requests", "p50 ms", "p99 ms", "max ms", "req/s", "closed req/s"
        );
        for (name, path, accept) in [
            ("/pods (kubelet PodList)", "/pods", "application/json"),
            ("/api/v1/namespaces/default/pods (Table)", "/api/v1/namespaces/default/pods", TABLE),
            ("/describe/pods/default/web-42", "/describe/pods/default/web-42", "text/plain"),
        ] {
            for (over, transport) in [("http", &plain), ("https", &https)] {
                let open = run(transport, path, accept, connections, Some(rate), seconds).await?;
                settle().await;
                let closed = run(transport, path, accept, 8, None, 2).await?;
                settle().await;
                let (p50, p99, max) = percentiles(&open.latencies);
                println!(
                    "{name:<44} {over:>5} {:>8} {p50:>9.3} {p99:>9.3} {max:>9.3} {:>10.0} {:>12.0}",
                    open.latencies.len(),
                    open.throughput,
                    closed.throughput
                );
            }
        }
        drop(work);
        Ok(())
    })
}

/// Lets the server see the last run's connections close before the next
/// run opens its own: all of them come from one user, who may hold at
/// most 16 of the listener's connections at once.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(200)).await;
}

const TABLE: &str = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json";

/// How the client reaches the API.
enum Transport {
    Plain(std::net::SocketAddr),
    Tls {
        address: std::net::SocketAddr,
        connector: tokio_rustls::TlsConnector,
        token: String,
    },
}

impl Transport {
    /// A new keep-alive connection, and the token its requests carry.
    async fn connect(
        &self,
    ) -> anyhow::Result<(
        hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
        Option<String>,
    )> {
        let address = match self {
            Transport::Plain(address) | Transport::Tls { address, .. } => *address,
        };
        let stream = tokio::net::TcpStream::connect(address).await?;
        stream.set_nodelay(true)?;
        Ok(match self {
            Transport::Plain(_) => {
                let (sender, connection) =
                    hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
                tokio::spawn(connection);
                (sender, None)
            }
            Transport::Tls {
                connector, token, ..
            } => {
                let name = rustls::pki_types::ServerName::try_from("127.0.0.1")?;
                let tls = connector.connect(name, stream).await?;
                let (sender, connection) =
                    hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
                tokio::spawn(connection);
                (sender, Some(token.clone()))
            }
        })
    }
}

/// Starts the HTTP API on 127.0.0.1 over a synthetic node, on a plain and
/// on an HTTPS listener.
async fn start_server(dir: &std::path::Path) -> anyhow::Result<(Transport, Transport)> {
    // Accepts nothing: connecting only needs the kernel's backlog.
    let socket = dir.join("containerd.sock");
    let listener = std::os::unix::net::UnixListener::bind(&socket)?;
    std::mem::forget(listener);
    let runtime = Containerd::connect(&socket, "bench").await?;
    let images = Arc::new(ImageService::new(
        runtime,
        RegistryClient::new(Credentials::default(), vec![]),
    ));
    let (recorder, events) = EventLog::start("node1".into(), dir, Retention::default())?;
    let status = Arc::new(StatusStore::default());
    let mut set = DesiredSet::new();
    for i in 0..PODS {
        let manifest = format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: web-{i}, labels: {{app: web, index: \"{i}\"}}}}\n\
             spec:\n  containers:\n  - {{name: app, image: busybox, command: [sleep, inf], ports: [{{containerPort: 80}}]}}\n\
             \x20 - {{name: sidecar, image: busybox, command: [sleep, inf]}}\n"
        );
        let pod = parse_manifest(
            manifest.as_bytes(),
            std::path::Path::new(&format!("/m/{i}.yaml")),
            "node1",
        )?;
        status.set(pod.uid(), running_status(i));
        for (reason, message) in [
            ("Scheduled", "Successfully assigned to node1"),
            (
                "Pulled",
                "Container image \"busybox\" already present on machine",
            ),
            ("Created", "Created container app"),
            ("Started", "Started container app"),
            ("BackOff", "Back-off restarting failed container"),
        ] {
            recorder.record(ObjectRef::pod(&pod), EventType::Normal, reason, message);
        }
        set.insert(pod.uid().to_string(), Arc::new(pod));
    }
    let (writer, reader) = desired::channel();
    writer.replace(set);
    std::mem::forget(writer);
    let state = ApiState {
        desired: reader,
        status,
        events,
        pod_log_dir: dir.join("logs"),
        images,
        sandbox_image: "pause".into(),
        containerd_reachable: Arc::new(true.into()),
        tasks: Default::default(),
        http: Default::default(),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    tokio::spawn(podkeeper::api::http::serve(
        listener,
        state.clone(),
        podkeeper::api::http::Access::Root,
    ));
    let tls_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let tls_address = tls_listener.local_addr()?;
    let settings = ApiSettings {
        api_listen: Some(tls_address),
        http_listen: None,
        tls: None,
        client_ca_file: None,
        token_auth_file: None,
        metrics_unauthenticated: false,
    };
    let node = tls::Node {
        state_dir: dir,
        name: "node1",
        ip: None,
        access_group: None,
    };
    let https = tls::prepare(&settings, tls_address, &node)?;
    tokio::spawn(podkeeper::api::http::serve_tls(tls_listener, state, https));
    let pki = Pki::ensure(dir, "node1")?;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(rustls::pki_types::CertificateDer::from_pem_slice(
        pki.ca_pem.as_bytes(),
    )?)?;
    let client = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    // Let the recorder's events land.
    tokio::time::sleep(Duration::from_millis(200)).await;
    Ok((
        Transport::Plain(address),
        Transport::Tls {
            address: tls_address,
            connector: tokio_rustls::TlsConnector::from(Arc::new(client)),
            token: pki.admin_token,
        },
    ))
}

fn running_status(i: usize) -> PodStatus {
    let started = "2024-01-01T00:00:00Z";
    let container = |name: &str| {
        serde_json::json!({
            "name": name, "ready": true, "restartCount": i % 3, "started": true,
            "image": "docker.io/library/busybox:latest", "imageID": "sha256:0123",
            "containerID": format!("containerd://{i:064}"),
            "state": {"running": {"startedAt": started}},
        })
    };
    let conditions: Vec<serde_json::Value> = [
        "PodReadyToStartContainers",
        "Initialized",
        "Ready",
        "ContainersReady",
        "PodScheduled",
    ]
    .iter()
    .map(|t| serde_json::json!({"type": t, "status": "True", "lastTransitionTime": started}))
    .collect();
    serde_json::from_value(serde_json::json!({
        "phase": "Running",
        "podIP": format!("10.88.{}.{}", i / 250, i % 250 + 2),
        "podIPs": [{"ip": format!("10.88.{}.{}", i / 250, i % 250 + 2)}],
        "hostIP": "192.168.1.10",
        "startTime": started,
        "qosClass": "BestEffort",
        "conditions": conditions,
        "containerStatuses": [container("app"), container("sidecar")],
    }))
    .unwrap_or_default()
}

struct RunResult {
    latencies: Vec<Duration>,
    throughput: f64,
}

/// Sends GETs of `path` over `connections` keep-alive connections: at
/// `rate` in total if given (open loop), else back to back (closed loop).
async fn run(
    transport: &Transport,
    path: &str,
    accept: &str,
    connections: u64,
    rate: Option<u64>,
    seconds: u64,
) -> anyhow::Result<RunResult> {
    // Connections (and TLS handshakes) are made before the clock starts:
    // what is measured is requests on kept-alive connections.
    let mut senders = Vec::new();
    for _ in 0..connections {
        senders.push(transport.connect().await?);
    }
    let started = Instant::now();
    let end = started + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for (c, (mut sender, token)) in (0..connections).zip(senders) {
        let (path, accept) = (path.to_string(), accept.to_string());
        tasks.push(tokio::spawn(async move {
            let interval = rate.map(|r| Duration::from_secs_f64(connections as f64 / r as f64));
            // Connections start staggered over one interval.
            let mut next = started
                + interval.map_or(Duration::ZERO, |i| i.mul_f64(c as f64 / connections as f64));
            let mut latencies = Vec::new();
            while next < end {
                if interval.is_some() {
                    tokio::time::sleep_until(next.into()).await;
                }
                let scheduled = if interval.is_some() {
                    next
                } else {
                    Instant::now()
                };
                let mut request = Request::get(&path)
                    .header("host", "bench")
                    .header("accept", &accept);
                if let Some(token) = &token {
                    request = request.header("authorization", format!("Bearer {token}"));
                }
                let request = request.body(Empty::<Bytes>::new())?;
                let response = sender.send_request(request).await?;
                anyhow::ensure!(
                    response.status().is_success(),
                    "{path}: {}",
                    response.status()
                );
                response.into_body().collect().await?;
                latencies.push(scheduled.elapsed());
                next = match interval {
                    Some(i) => next + i,
                    None => Instant::now(),
                };
            }
            Ok::<_, anyhow::Error>(latencies)
        }));
    }
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await??);
    }
    let elapsed = started.elapsed().as_secs_f64();
    Ok(RunResult {
        throughput: latencies.len() as f64 / elapsed,
        latencies,
    })
}

/// p50, p99 and max in milliseconds.
fn percentiles(latencies: &[Duration]) -> (f64, f64, f64) {
    let mut sorted: Vec<f64> = latencies.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    sorted.sort_by(f64::total_cmp);
    let at = |q: f64| {
        sorted
            .get(((sorted.len() as f64 * q) as usize).min(sorted.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0.0)
    };
    (at(0.5), at(0.99), sorted.last().copied().unwrap_or(0.0))
}
