//! Handlers against real servers on 127.0.0.1, the runner and hooks over the
//! fake runtime on tokio's paused clock.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::{Container, HTTPGetAction, LifecycleHandler};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use super::handler::{self, HttpAnswer, HttpError, Outcome};
use super::*;
use crate::pod::fake::FakeRuntime;
use crate::runtime::containerd::exec::ExecOutput;
use crate::status::events::{test_recorder, EventType, Occurrence};

fn container(yaml: &str) -> Container {
    serde_yaml::from_str(yaml).unwrap()
}

fn target(container: Container) -> ProbeTarget {
    ProbeTarget {
        pod_ip: Some("127.0.0.1".into()),
        host_network: false,
        container_id: "pk-c".into(),
        object: ObjectRef {
            kind: "Pod".into(),
            namespace: "default".into(),
            name: "web".into(),
            uid: "u1".into(),
            field_path: format!("spec.containers{{{}}}", container.name),
        },
        container,
        run: 1,
    }
}

/// Request headers the test server saw, by path.
type Seen = Arc<Mutex<HashMap<String, hyper::HeaderMap>>>;

/// An HTTP server answering by path: `/ok` 200, `/fail` 500, `/moved` a
/// same-host redirect to `/ok`, `/away` a redirect to another host, `/big`
/// 20 KiB, `/hang` never.
async fn http_server() -> (u16, Seen) {
    http_server_with(None).await
}

/// A self-signed certificate for a name no test connects to: probes do not
/// verify certificates.
const TEST_CERT: &str = "-----BEGIN CERTIFICATE-----
MIIBmDCCAT2gAwIBAgIUVC9OM/b4d3PzDd4rBrQSpvmAOckwCgYIKoZIzj0EAwIw
IDEeMBwGA1UEAwwVbm90LXRoaXMtaG9zdC5pbnZhbGlkMCAXDTI2MTEyNjIxMTEw
OVoYDzIxMjYxMTAyMjExMTA5WjAgMR4wHAYDVQQDDBVub3QtdGhpcy1ob3N0Lmlu
dmFsaWQwWTATBgcqhkjOPQIBBggqhkjOPQMBBwNCAAQpcIAOZGAeHqaj9nP/KQMX
pWqm3sHtPM4Th484ZU8dTpZOiAhdtfTuhzJTR6cI2c8p/8ciBKhqTVGBWRO+eW4i
o1MwUTAdBgNVHQ4EFgQUQ2vDg5uXHOAe5fFS9UlEIb8JH8cwHwYDVR0jBBgwFoAU
Q2vDg5uXHOAe5fFS9UlEIb8JH8cwDwYDVR0TAQH/BAUwAwEB/zAKBggqhkjOPQQD
AgNJADBGAiEAo20in9rGAGl9OWZGngC5R6+adz0OqRem3FaFKo0IKXYCIQC924bG
u+06JWoqUmhoGrxi3AilkdQIe+bs0nHOxQc9pw==
-----END CERTIFICATE-----
";
const TEST_KEY: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgEGofvFHnaMNmIebo
moMxNOMf/RI1DmA4nPRs+9TK5EihRANCAAQpcIAOZGAeHqaj9nP/KQMXpWqm3sHt
PM4Th484ZU8dTpZOiAhdtfTuhzJTR6cI2c8p/8ciBKhqTVGBWRO+eW4i
-----END PRIVATE KEY-----
";

fn tls_acceptor() -> tokio_rustls::TlsAcceptor {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let cert = CertificateDer::from_pem_slice(TEST_CERT.as_bytes()).unwrap();
    let key = PrivateKeyDer::from_pem_slice(TEST_KEY.as_bytes()).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![cert], key)
    .unwrap();
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

async fn http_server_with(tls: Option<tokio_rustls::TlsAcceptor>) -> (u16, Seen) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen: Seen = Default::default();
    let record = seen.clone();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let record = record.clone();
            let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
                let record = record.clone();
                async move {
                    let path = req.uri().path().to_string();
                    record
                        .lock()
                        .unwrap()
                        .insert(path.clone(), req.headers().clone());
                    let mut response = hyper::Response::builder();
                    let body = match path.as_str() {
                        "/ok" | "/" => "fine".to_string(),
                        "/fail" => {
                            response = response.status(500);
                            "broken".into()
                        }
                        "/moved" => {
                            response = response.status(302).header("location", "/ok");
                            String::new()
                        }
                        "/away" => {
                            response = response
                                .status(301)
                                .header("location", "http://elsewhere.invalid/");
                            "gone".into()
                        }
                        "/big" => "x".repeat(20 * 1024),
                        "/hang" => {
                            tokio::time::sleep(Duration::from_secs(3600)).await;
                            String::new()
                        }
                        _ => {
                            response = response.status(404);
                            String::new()
                        }
                    };
                    response.body(Full::new(Bytes::from(body)))
                }
            });
            let tls = tls.clone();
            tokio::spawn(async move {
                let builder = hyper::server::conn::http1::Builder::new();
                let _ = match tls {
                    None => {
                        builder
                            .serve_connection(TokioIo::new(stream), service)
                            .await
                    }
                    Some(tls) => match tls.accept(stream).await {
                        Ok(stream) => {
                            builder
                                .serve_connection(TokioIo::new(stream), service)
                                .await
                        }
                        Err(_) => return,
                    },
                };
            });
        }
    });
    (port, seen)
}

/// A port nothing listens on.
async fn closed_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap().port()
}

fn get(yaml: &str) -> HTTPGetAction {
    serde_yaml::from_str(yaml).unwrap()
}

async fn probe_get(action: &HTTPGetAction, c: &Container, timeout: Duration) -> Outcome {
    handler::http_outcome(
        handler::http_get(action, c, "127.0.0.1", timeout, handler::PROBE_USER_AGENT).await,
    )
}

const SECOND: Duration = Duration::from_secs(1);

#[tokio::test]
async fn http_get_judges_status_codes_like_the_kubelet() {
    let (port, _) = http_server().await;
    let c = container("{name: c}");
    let cases = [
        ("/ok", Outcome::Success("fine".into())),
        (
            "/fail",
            Outcome::Failure("HTTP probe failed with statuscode: 500".into()),
        ),
        ("/moved", Outcome::Success("fine".into())),
        (
            "/away",
            Outcome::Warning("Probe terminated redirects, Response body: gone".into()),
        ),
        (
            "/nothing",
            Outcome::Failure("HTTP probe failed with statuscode: 404".into()),
        ),
    ];
    for (path, expected) in cases {
        let action = get(&format!("{{port: {port}, path: {path}}}"));
        assert_eq!(probe_get(&action, &c, SECOND).await, expected, "{path}");
    }
    // The body is read up to 10 KiB.
    let action = get(&format!("{{port: {port}, path: /big}}"));
    let answer = handler::http_get(&action, &c, "127.0.0.1", SECOND, "ua")
        .await
        .unwrap();
    assert_eq!(answer.status, 200);
    assert_eq!(answer.body.len(), handler::MAX_BODY);
}

#[tokio::test]
async fn http_get_resolves_named_ports_and_sends_the_kubelet_headers() {
    let (port, seen) = http_server().await;
    let c = container(&format!(
        "{{name: c, ports: [{{name: web, containerPort: {port}}}]}}"
    ));
    let action = get("{port: web, path: ok, httpHeaders: [{name: X-Custom, value: yes}]}");
    assert_eq!(
        probe_get(&action, &c, SECOND).await,
        Outcome::Success("fine".into())
    );
    let headers = seen.lock().unwrap()["/ok"].clone();
    assert_eq!(headers["user-agent"], "kube-probe/1.33");
    assert_eq!(headers["accept"], "*/*");
    assert_eq!(headers["x-custom"], "yes");
    assert_eq!(headers["host"], format!("127.0.0.1:{port}").as_str());

    // Given headers win; an empty Accept removes it.
    let action = get(&format!(
        "{{port: {port}, path: /, httpHeaders: [{{name: User-Agent, value: mine}}, {{name: Accept, value: ''}}, {{name: Host, value: example.com}}]}}"
    ));
    assert!(probe_get(&action, &c, SECOND).await.is_success());
    let headers = seen.lock().unwrap()["/"].clone();
    assert_eq!(headers["user-agent"], "mine");
    assert!(!headers.contains_key("accept"));
    assert_eq!(headers["host"], "example.com");

    // A name the container does not declare is an error, not a failure.
    let action = get("{port: nope}");
    assert_eq!(
        probe_get(&action, &c, SECOND).await,
        Outcome::Error("strconv.Atoi: parsing \"nope\": invalid syntax".into())
    );
    // A number written as a string is a number.
    let action = get(&format!("{{port: '{port}', path: /ok}}"));
    assert!(probe_get(&action, &c, SECOND).await.is_success());
}

#[tokio::test]
async fn http_get_failures_read_as_go_errors() {
    let (port, _) = http_server().await;
    let c = container("{name: c}");
    let action = get(&format!("{{port: {port}, path: /hang}}"));
    let started = std::time::Instant::now();
    assert_eq!(
        probe_get(&action, &c, Duration::from_millis(300)).await,
        Outcome::Failure(format!(
            "Get \"http://127.0.0.1:{port}/hang\": context deadline exceeded (Client.Timeout exceeded while awaiting headers)"
        ))
    );
    assert!(started.elapsed() < Duration::from_secs(2));

    let closed = closed_port().await;
    let action = get(&format!("{{port: {closed}, path: /healthz}}"));
    assert_eq!(
        handler::http_get(&action, &c, "127.0.0.1", SECOND, "ua").await,
        Err(HttpError::Request(format!(
            "Get \"http://127.0.0.1:{closed}/healthz\": dial tcp 127.0.0.1:{closed}: connect: connection refused"
        )))
    );
    // An HTTPS probe of a plain HTTP server fails in the TLS handshake.
    let action = get(&format!("{{port: {port}, path: /ok, scheme: HTTPS}}"));
    match probe_get(&action, &c, SECOND).await {
        Outcome::Failure(message) => assert!(
            message.starts_with(&format!("Get \"https://127.0.0.1:{port}/ok\": tls: ")),
            "{message}"
        ),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn https_probes_do_not_verify_certificates() {
    let (port, seen) = http_server_with(Some(tls_acceptor())).await;
    let c = container("{name: c}");
    let action = get(&format!("{{port: {port}, path: /ok, scheme: HTTPS}}"));
    assert_eq!(
        probe_get(&action, &c, SECOND).await,
        Outcome::Success("fine".into())
    );
    let action = get(&format!("{{port: {port}, path: /fail, scheme: HTTPS}}"));
    assert_eq!(
        probe_get(&action, &c, SECOND).await,
        Outcome::Failure("HTTP probe failed with statuscode: 500".into())
    );
    assert_eq!(seen.lock().unwrap()["/ok"]["user-agent"], "kube-probe/1.33");
}

#[tokio::test]
async fn tcp_socket_connects_or_says_why_not() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let open = listener.local_addr().unwrap().port();
    assert_eq!(
        handler::tcp_probe("127.0.0.1", open, SECOND).await,
        Outcome::Success(String::new())
    );
    let closed = closed_port().await;
    assert_eq!(
        handler::tcp_probe("127.0.0.1", closed, SECOND).await,
        Outcome::Failure(format!(
            "dial tcp 127.0.0.1:{closed}: connect: connection refused"
        ))
    );
}

#[tokio::test]
async fn grpc_health_check_like_the_kubelet() {
    use tonic_health::ServingStatus;
    let (reporter, service) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("sick", ServingStatus::NotServing)
        .await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    assert_eq!(
        handler::grpc_probe("127.0.0.1", port, "", SECOND).await,
        Outcome::Success("service healthy".into())
    );
    assert_eq!(
        handler::grpc_probe("127.0.0.1", port, "sick", SECOND).await,
        Outcome::Failure("service unhealthy (responded with \"NOT_SERVING\")".into())
    );
    match handler::grpc_probe("127.0.0.1", port, "unknown", SECOND).await {
        Outcome::Failure(m) => assert!(
            m.starts_with("error: health rpc probe failed: rpc error: code = NotFound desc = "),
            "{m}"
        ),
        other => panic!("{other:?}"),
    }
    let closed = closed_port().await;
    assert_eq!(
        handler::grpc_probe("127.0.0.1", closed, "", Duration::from_millis(300)).await,
        Outcome::Failure(format!(
            "timeout: failed to connect service \"127.0.0.1:{closed}\" within 300ms: context deadline exceeded"
        ))
    );
}

#[test]
fn exec_outcomes() {
    let cmd = ["sh".to_string(), "-c".into(), "sleep 9".into()];
    let out = |exit_code, output: &str, timed_out| {
        Ok(ExecOutput {
            exit_code,
            output: output.into(),
            timed_out,
        })
    };
    assert_eq!(
        handler::exec_outcome(&cmd, out(0, "hi\n", false)),
        Outcome::Success("hi\n".into())
    );
    assert_eq!(
        handler::exec_outcome(&cmd, out(3, "bad\n", false)),
        Outcome::Failure("bad\n".into())
    );
    assert_eq!(
        handler::exec_outcome(&cmd, out(137, "", true)),
        Outcome::Failure("command \"sh -c sleep 9\" timed out".into())
    );
    assert_eq!(
        handler::exec_outcome(&cmd, Err("gone".into())),
        Outcome::Error("gone".into())
    );
}

#[test]
fn go_formatting() {
    assert_eq!(handler::go_duration(Duration::from_secs(1)), "1s");
    assert_eq!(handler::go_duration(Duration::from_secs(90)), "1m30s");
    assert_eq!(handler::go_duration(Duration::from_secs(3600)), "1h0m0s");
    assert_eq!(handler::go_duration(Duration::from_millis(1500)), "1.5s");
    assert_eq!(handler::go_duration(Duration::from_millis(300)), "300ms");
    assert_eq!(handler::go_quote("a \"b\"\n\\"), r#""a \"b\"\n\\""#);
    assert_eq!(handler::join_host_port("fd00::1", 80), "[fd00::1]:80");
    let c = container("{name: c, ports: [{name: http, containerPort: 8080}]}");
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    assert_eq!(
        handler::resolve_port(&IntOrString::String("http".into()), &c),
        Ok(8080)
    );
    assert_eq!(
        handler::resolve_port(&IntOrString::Int(70000), &c),
        Err("invalid port number: 70000".into())
    );
    assert_eq!(
        handler::http_outcome(Ok(HttpAnswer {
            status: 399,
            body: "b".into()
        })),
        Outcome::Warning("Probe terminated redirects, Response body: b".into())
    );
}

// ---- the runner -------------------------------------------------------

fn ok(output: &str) -> Result<ExecOutput, String> {
    Ok(ExecOutput {
        exit_code: 0,
        output: output.into(),
        timed_out: false,
    })
}

fn fail(output: &str) -> Result<ExecOutput, String> {
    Ok(ExecOutput {
        exit_code: 1,
        output: output.into(),
        timed_out: false,
    })
}

struct Probing {
    fake: Arc<FakeRuntime>,
    updates: mpsc::UnboundedReceiver<ProbeUpdate>,
    events: mpsc::Receiver<Occurrence>,
    probes: Option<ContainerProbes>,
}

fn probing(yaml: &str, script: Vec<(&str, Vec<Result<ExecOutput, String>>)>) -> Probing {
    let fake = Arc::new(FakeRuntime::new(&[]));
    for (program, results) in script {
        fake.script_exec(program, results);
    }
    let (recorder, events) = test_recorder();
    let (tx, updates) = mpsc::unbounded_channel();
    let probes = ContainerProbes::spawn(fake.clone(), recorder, target(container(yaml)), tx);
    Probing {
        fake,
        updates,
        events,
        probes,
    }
}

impl Probing {
    fn updates(&mut self) -> Vec<(ProbeKind, bool)> {
        let mut out = Vec::new();
        while let Ok(u) = self.updates.try_recv() {
            assert_eq!((u.container.as_str(), u.run), ("c", 1));
            out.push((u.kind, u.healthy));
        }
        out
    }

    fn events(&mut self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        while let Ok(o) = self.events.try_recv() {
            assert_eq!(o.event_type, EventType::Warning);
            assert_eq!(o.object.field_path, "spec.containers{c}");
            out.push((o.reason, o.message));
        }
        out
    }

    fn execs(&self) -> Vec<String> {
        self.fake
            .calls()
            .into_iter()
            .filter(|c| c.starts_with("exec "))
            .collect()
    }
}

async fn advance(seconds: u64) {
    tokio::time::sleep(Duration::from_secs(seconds)).await;
}

#[tokio::test(start_paused = true)]
async fn a_container_without_probes_gets_no_runner() {
    let p = probing("{name: c}", vec![]);
    assert!(p.probes.is_none());
}

#[tokio::test(start_paused = true)]
async fn liveness_failing_three_times_kills_once_and_stops() {
    let mut p = probing(
        "{name: c, livenessProbe: {exec: {command: [check]}, periodSeconds: 5}}",
        vec![("check", vec![fail("bad\n")])],
    );
    advance(1).await;
    assert_eq!(p.execs().len(), 1, "the first probe runs at once");
    advance(30).await;
    assert_eq!(p.updates(), [(ProbeKind::Liveness, false)]);
    let unhealthy = (
        "Unhealthy".to_string(),
        "Liveness probe failed: bad\n".to_string(),
    );
    assert_eq!(p.events(), vec![unhealthy.clone(); 3]);
    assert_eq!(p.execs(), vec!["exec pk-c check"; 3], "probing stopped");
}

#[tokio::test(start_paused = true)]
async fn startup_gates_liveness_and_readiness() {
    let mut p = probing(
        "{name: c, startupProbe: {exec: {command: [start]}, periodSeconds: 2, failureThreshold: 5}, livenessProbe: {exec: {command: [live]}}, readinessProbe: {exec: {command: [ready]}, initialDelaySeconds: 1}}",
        vec![
            ("start", vec![fail("no"), fail("no"), ok("")]),
            ("live", vec![ok("")]),
            ("ready", vec![ok("")]),
        ],
    );
    advance(3).await;
    assert_eq!(p.execs(), ["exec pk-c start", "exec pk-c start"]);
    assert_eq!(p.updates(), []);
    advance(2).await;
    assert_eq!(
        p.updates(),
        [(ProbeKind::Startup, true), (ProbeKind::Readiness, true)]
    );
    let mut execs = p.execs();
    // Liveness and readiness run concurrently, in either order.
    execs[3..].sort();
    assert_eq!(
        execs,
        [
            "exec pk-c start",
            "exec pk-c start",
            "exec pk-c start",
            "exec pk-c live",
            "exec pk-c ready"
        ]
    );
    assert_eq!(
        p.events(),
        vec![
            (
                "Unhealthy".to_string(),
                "Startup probe failed: no".to_string()
            );
            2
        ]
    );
    // The startup probe stopped; the others go on every 10 s.
    advance(20).await;
    let execs = p.execs();
    assert_eq!(execs.iter().filter(|c| c.ends_with("start")).count(), 3);
    assert_eq!(execs.iter().filter(|c| c.ends_with("live")).count(), 3);
    assert_eq!(p.updates(), []);
}

#[tokio::test(start_paused = true)]
async fn startup_failing_past_its_threshold_kills() {
    let mut p = probing(
        "{name: c, startupProbe: {exec: {command: [start]}, failureThreshold: 2}, readinessProbe: {exec: {command: [ready]}}}",
        vec![("start", vec![fail("")])],
    );
    advance(60).await;
    assert_eq!(p.updates(), [(ProbeKind::Startup, false)]);
    assert_eq!(p.execs(), ["exec pk-c start", "exec pk-c start"]);
    assert_eq!(p.events().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn readiness_goes_up_and_down() {
    let mut p = probing(
        "{name: c, readinessProbe: {exec: {command: [ready]}, failureThreshold: 2}}",
        vec![("ready", vec![ok(""), fail("x"), fail("y"), ok("")])],
    );
    advance(1).await;
    assert_eq!(p.updates(), [(ProbeKind::Readiness, true)]);
    advance(20).await;
    assert_eq!(p.updates(), [(ProbeKind::Readiness, false)]);
    advance(10).await;
    assert_eq!(p.updates(), [(ProbeKind::Readiness, true)]);
    assert_eq!(
        p.events(),
        [
            (
                "Unhealthy".to_string(),
                "Readiness probe failed: x".to_string()
            ),
            (
                "Unhealthy".to_string(),
                "Readiness probe failed: y".to_string()
            )
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn probes_that_cannot_run_are_retried_then_reported_as_errored() {
    let mut p = probing(
        "{name: c, readinessProbe: {exec: {command: [missing]}}}",
        vec![],
    );
    advance(1).await;
    assert_eq!(p.execs().len(), 3, "three attempts");
    assert_eq!(
        p.events(),
        [(
            "Unhealthy".to_string(),
            "Readiness probe errored and resulted in unknown state: containerd exec in pk-c: missing: not scripted".to_string()
        )]
    );
}

#[tokio::test(start_paused = true)]
async fn exec_probes_expand_literal_variables() {
    let p = probing(
        "{name: c, env: [{name: A, value: alpha}, {name: B, valueFrom: {fieldRef: {fieldPath: metadata.name}}}], readinessProbe: {exec: {command: [echo, '$(A)', '$(B)', '$(C)']}}}",
        vec![("echo", vec![ok("")])],
    );
    advance(1).await;
    assert_eq!(p.execs(), ["exec pk-c echo alpha  $(C)"]);
}

#[tokio::test(start_paused = true)]
async fn dropping_the_handle_stops_probing() {
    let mut p = probing(
        "{name: c, livenessProbe: {exec: {command: [check]}}}",
        vec![("check", vec![ok("")])],
    );
    advance(1).await;
    p.probes = None;
    advance(60).await;
    assert_eq!(p.execs().len(), 1);
}

#[test]
fn container_health_follows_updates() {
    let update = |kind, healthy| ProbeUpdate {
        container: "c".into(),
        run: 1,
        kind,
        healthy,
        message: String::new(),
    };
    let plain = ContainerHealth::new(&container("{name: c}"));
    assert!(plain.started && plain.ready);

    let mut h = ContainerHealth::new(&container("{name: c, startupProbe: {}}"));
    assert!(!h.started && !h.ready);
    h.apply(&update(ProbeKind::Startup, true));
    assert!(h.started && h.ready);

    let mut h = ContainerHealth::new(&container(
        "{name: c, startupProbe: {}, readinessProbe: {}}",
    ));
    h.apply(&update(ProbeKind::Readiness, true));
    assert!(!h.ready, "not ready before started");
    h.apply(&update(ProbeKind::Startup, true));
    assert!(h.started && !h.ready);
    h.apply(&update(ProbeKind::Readiness, true));
    assert!(h.ready);
    h.apply(&update(ProbeKind::Readiness, false));
    assert!(!h.ready);

    assert_eq!(
        update(ProbeKind::Liveness, false).killing_message(true),
        Some("Container c failed liveness probe, will be restarted".into())
    );
    assert_eq!(
        update(ProbeKind::Startup, false).killing_message(false),
        Some("Container c failed startup probe".into())
    );
    assert_eq!(
        update(ProbeKind::Readiness, false).killing_message(true),
        None
    );
}

// ---- hooks ------------------------------------------------------------

fn hook(yaml: &str) -> LifecycleHandler {
    serde_yaml::from_str(yaml).unwrap()
}

#[tokio::test(start_paused = true)]
async fn exec_hooks_report_like_the_kubelet() {
    let fake = FakeRuntime::new(&[]);
    fake.script_exec("sh", vec![fail("oops\n")]);
    fake.script_exec("true", vec![ok("")]);
    let t = target(container("{name: c}"));
    assert_eq!(
        run_hook(&fake, &hook("exec: {command: ['true']}"), &t, None).await,
        Ok(())
    );
    assert_eq!(
        run_hook(&fake, &hook("exec: {command: [sh, -c, exit 1]}"), &t, None).await,
        Err("Exec lifecycle hook ([sh -c exit 1]) for Container \"c\" in Pod \"web_default(u1)\" failed - error: command 'sh -c exit 1' exited with 1: oops\n, message: \"oops\\n\"".into())
    );
    assert_eq!(
        (
            Hook::PostStart.event_reason(),
            Hook::PostStart.event_message()
        ),
        ("FailedPostStartHook", "PostStartHook failed")
    );
    assert_eq!(
        (Hook::PreStop.event_reason(), Hook::PreStop.event_message()),
        ("FailedPreStopHook", "PreStopHook failed")
    );
    let c = container("{name: c, lifecycle: {preStop: {sleep: {seconds: 1}}}}");
    assert!(Hook::PreStop.handler_of(&c).is_some());
    assert!(Hook::PostStart.handler_of(&c).is_none());
}

#[tokio::test(start_paused = true)]
async fn sleep_hooks_end_at_the_limit() {
    let fake = FakeRuntime::new(&[]);
    let t = target(container("{name: c}"));
    let start = tokio::time::Instant::now();
    assert_eq!(
        run_hook(&fake, &hook("sleep: {seconds: 5}"), &t, None).await,
        Ok(())
    );
    assert_eq!(start.elapsed(), Duration::from_secs(5));
    let start = tokio::time::Instant::now();
    assert_eq!(
        run_hook(&fake, &hook("sleep: {seconds: 30}"), &t, Some(Duration::from_secs(2))).await,
        Err("Sleep lifecycle hook (30) for Container \"c\" in Pod \"web_default(u1)\" failed - error: container terminated before sleep hook finished".into())
    );
    assert_eq!(start.elapsed(), Duration::from_secs(2));
    assert_eq!(
        run_hook(&fake, &hook("tcpSocket: {port: 80}"), &t, None).await,
        Err("Cannot run handler: invalid handler: no exec, httpGet or sleep action".into())
    );
}

#[tokio::test]
async fn http_hooks_ignore_the_status_but_not_errors() {
    let (port, seen) = http_server().await;
    let fake = FakeRuntime::new(&[]);
    let t = target(container("{name: c}"));
    let handler = hook(&format!("httpGet: {{port: {port}, path: /fail}}"));
    assert_eq!(run_hook(&fake, &handler, &t, None).await, Ok(()));
    assert_eq!(
        seen.lock().unwrap()["/fail"]["user-agent"],
        "kube-lifecycle/1.33"
    );
    let closed = closed_port().await;
    let handler = hook(&format!("httpGet: {{port: {closed}, path: /stop}}"));
    assert_eq!(
        run_hook(&fake, &handler, &t, None).await,
        Err(format!("HTTP lifecycle hook (/stop) for Container \"c\" in Pod \"web_default(u1)\" failed - error: Get \"http://127.0.0.1:{closed}/stop\": dial tcp 127.0.0.1:{closed}: connect: connection refused"))
    );
}
