//! The actions probes and lifecycle hooks run — exec, httpGet, tcpSocket,
//! grpc — with the kubelet's outcomes and messages (`pkg/probe/{exec,http,
//! tcp,grpc}`), so events read as they would on a kubelet node. Messages
//! that the kubelet takes from Go's standard library (dial and HTTP client
//! errors) are reproduced in Go's wording.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::{Container, HTTPGetAction, HTTPHeader};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

use crate::runtime::containerd::exec::ExecOutput;

/// The kubelet's probe `User-Agent`: `kube-probe/<major>.<minor>` of the
/// Kubernetes version podkeeper follows.
pub const PROBE_USER_AGENT: &str = "kube-probe/1.33";
/// The kubelet's `User-Agent` for httpGet lifecycle hooks.
pub const HOOK_USER_AGENT: &str = "kube-lifecycle/1.33";
/// How much of an HTTP response body is read (`maxRespBodyLength`).
pub const MAX_BODY: usize = 10 * 1024;
/// The kubelet follows at most this many redirects (Go's client default).
const MAX_REDIRECTS: usize = 10;
/// Pause between gRPC connection attempts while the probe's time lasts
/// (the kubelet dials with `WithBlock`, retrying until the deadline).
const GRPC_RETRY: Duration = Duration::from_millis(100);

/// The result of one attempt, as the kubelet's `probe.Result` plus output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Success(String),
    /// Counts as success but is reported (`ProbeWarning`), e.g. a redirect
    /// to another host that was not followed.
    Warning(String),
    Failure(String),
    /// The probe could not be run at all (e.g. an unknown named port, the
    /// runtime failed); the kubelet counts it as a failure and reports it
    /// as "errored".
    Error(String),
}

impl Outcome {
    pub fn is_success(&self) -> bool {
        matches!(self, Outcome::Success(_) | Outcome::Warning(_))
    }
}

/// An exec probe's outcome from what the command did.
pub fn exec_outcome(command: &[String], result: Result<ExecOutput, String>) -> Outcome {
    match result {
        Ok(out) if out.timed_out => Outcome::Failure(format!(
            "command {} timed out",
            go_quote(&command.join(" "))
        )),
        Ok(out) if out.exit_code == 0 => Outcome::Success(out.output),
        Ok(out) => Outcome::Failure(out.output),
        Err(error) => Outcome::Error(error),
    }
}

/// Resolves a probe or hook port: a number, or the name of one of the
/// container's ports, or a number written as a string (`ResolveContainerPort`).
pub fn resolve_port(port: &IntOrString, container: &Container) -> Result<u16, String> {
    let number = match port {
        IntOrString::Int(n) => *n,
        IntOrString::String(name) => container
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .map(|p| p.container_port)
            .map_or_else(
                || {
                    name.parse::<i32>().map_err(|_| {
                        format!("strconv.Atoi: parsing {}: invalid syntax", go_quote(name))
                    })
                },
                Ok,
            )?,
    };
    u16::try_from(number)
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| format!("invalid port number: {number}"))
}

/// `host:port`, with brackets around IPv6 addresses (Go's `JoinHostPort`).
pub fn join_host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// A tcpSocket probe: the port accepts a connection within `timeout`.
pub async fn tcp_probe(host: &str, port: u16, timeout: Duration) -> Outcome {
    match connect(host, port, timeout).await {
        Ok(_) => Outcome::Success(String::new()),
        Err(message) => Outcome::Failure(message),
    }
}

/// Connects as Go's `net.DialTimeout("tcp", …)` and words errors as it does.
async fn connect(host: &str, port: u16, timeout: Duration) -> Result<TcpStream, String> {
    let addr = join_host_port(host, port);
    match tokio::time::timeout(timeout, TcpStream::connect((host, port))).await {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(e)) => Err(format!("dial tcp {addr}: connect: {}", errno_text(&e))),
        Err(_) => Err(format!("dial tcp {addr}: i/o timeout")),
    }
}

/// An OS error as Go prints it: the lower-case `strerror` text.
fn errno_text(error: &std::io::Error) -> String {
    let Some(code) = error.raw_os_error() else {
        return error.to_string();
    };
    let text = std::io::Error::from_raw_os_error(code).to_string();
    let text = text
        .split(" (os error")
        .next()
        .unwrap_or_default()
        .to_string();
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => text,
    }
}

/// A grpc probe: `grpc.health.v1.Health/Check` answers `SERVING` in time.
pub async fn grpc_probe(host: &str, port: u16, service: &str, timeout: Duration) -> Outcome {
    let addr = join_host_port(host, port);
    let deadline = Instant::now() + timeout;
    let endpoint = match tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .and_then(|e| e.user_agent(PROBE_USER_AGENT))
    {
        Ok(endpoint) => endpoint.connect_timeout(timeout),
        Err(e) => {
            return Outcome::Failure(format!(
                "error: failed to connect service at {}: {e}",
                go_quote(&addr)
            ))
        }
    };
    let timed_out = || {
        Outcome::Failure(format!(
            "timeout: failed to connect service {} within {}: context deadline exceeded",
            go_quote(&addr),
            go_duration(timeout)
        ))
    };
    let channel = loop {
        match tokio::time::timeout_at(deadline, endpoint.connect()).await {
            Ok(Ok(channel)) => break channel,
            Ok(Err(_)) if Instant::now() + GRPC_RETRY < deadline => {
                tokio::time::sleep(GRPC_RETRY).await;
            }
            Ok(Err(_)) => {
                tokio::time::sleep_until(deadline).await;
                return timed_out();
            }
            Err(_) => return timed_out(),
        }
    };
    let request = HealthCheckRequest {
        service: service.into(),
    };
    let checked =
        tokio::time::timeout_at(deadline, HealthClient::new(channel).check(request)).await;
    match checked {
        Err(_) => Outcome::Failure(format!(
            "timeout: health rpc did not complete within {}",
            go_duration(timeout)
        )),
        Ok(Err(status)) => match status.code() {
            tonic::Code::Unimplemented => Outcome::Failure(format!(
                "error: this server does not implement the grpc health protocol (grpc.health.v1.Health): {}",
                status.message()
            )),
            tonic::Code::DeadlineExceeded => Outcome::Failure(format!(
                "timeout: health rpc did not complete within {}",
                go_duration(timeout)
            )),
            code => Outcome::Failure(format!(
                "error: health rpc probe failed: rpc error: code = {} desc = {}",
                go_code(code),
                status.message()
            )),
        },
        Ok(Ok(response)) => {
            let status = response.into_inner().status;
            if status == ServingStatus::Serving as i32 {
                Outcome::Success("service healthy".into())
            } else {
                let name = ServingStatus::try_from(status)
                    .map_or_else(|_| status.to_string(), |s| s.as_str_name().to_string());
                Outcome::Failure(format!(
                    "service unhealthy (responded with {})",
                    go_quote(&name)
                ))
            }
        }
    }
}

/// gRPC code names as grpc-go prints them.
fn go_code(code: tonic::Code) -> String {
    match code {
        tonic::Code::Cancelled => "Canceled".into(),
        other => format!("{other:?}"),
    }
}

/// A duration as Go's `time.Duration` prints it: `300ms`, `1s`, `1.5s`,
/// `1m30s`, `1h0m0s`.
pub fn go_duration(d: Duration) -> String {
    let total = d.as_secs();
    let nanos = d.subsec_nanos();
    if total == 0 && nanos.is_multiple_of(1_000_000) && nanos > 0 {
        return format!("{}ms", nanos / 1_000_000);
    }
    let (h, m, s) = (total / 3600, total / 60 % 60, total % 60);
    let fraction = if nanos == 0 {
        String::new()
    } else {
        format!(".{nanos:09}").trim_end_matches('0').to_string()
    };
    if h > 0 {
        format!("{h}h{m}m{s}{fraction}s")
    } else if m > 0 {
        format!("{m}m{s}{fraction}s")
    } else {
        format!("{s}{fraction}s")
    }
}

/// A string as Go's `%q` prints it (for the ASCII cases that matter here).
pub fn go_quote(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// An httpGet answer: the final status and up to [`MAX_BODY`] of the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpAnswer {
    pub status: u16,
    pub body: String,
}

/// Why an httpGet got no answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpError {
    /// The request could not be made (port, scheme) or its body not be
    /// read; the probe "errored".
    Setup(String),
    /// The request failed (connection, timeout, TLS), worded as Go's
    /// `url.Error`: `Get "<url>": <reason>`.
    Request(String),
}

/// An httpGet probe's outcome (`DoHTTPProbe`): 2xx is success, a 3xx that
/// was not followed a warning, anything else a failure.
pub fn http_outcome(result: Result<HttpAnswer, HttpError>) -> Outcome {
    match result {
        Err(HttpError::Setup(e)) => Outcome::Error(e),
        Err(HttpError::Request(e)) => Outcome::Failure(e),
        Ok(answer) if (200..300).contains(&answer.status) => Outcome::Success(answer.body),
        Ok(answer) if (300..400).contains(&answer.status) => Outcome::Warning(format!(
            "Probe terminated redirects, Response body: {}",
            answer.body
        )),
        Ok(answer) => Outcome::Failure(format!(
            "HTTP probe failed with statuscode: {}",
            answer.status
        )),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scheme {
    Http,
    Https,
}

/// The URL being requested, kept in parts.
#[derive(Debug, Clone)]
struct Url {
    scheme: Scheme,
    host: String,
    port: u16,
    /// Path and query; empty means `/`.
    target: String,
}

impl Url {
    fn authority(&self) -> String {
        join_host_port(&self.host, self.port)
    }

    /// As Go prints a URL: `http://host:port/path`.
    fn text(&self) -> String {
        let scheme = match self.scheme {
            Scheme::Http => "http",
            Scheme::Https => "https",
        };
        format!("{scheme}://{}{}", self.authority(), self.target)
    }

    /// Where a redirect's `Location` leads, if it stays on this host (Go's
    /// kubelet client follows only those; others end the probe).
    fn follow(&self, location: &str) -> Option<Url> {
        let parse_absolute = |rest: &str, scheme: Scheme, default_port: u16| {
            let (authority, target) = match rest.find('/') {
                Some(i) => (&rest[..i], &rest[i..]),
                None => (rest, ""),
            };
            let (host, port) = split_authority(authority, default_port)?;
            Some(Url {
                scheme,
                host,
                port,
                target: target.to_string(),
            })
        };
        let next = if let Some(rest) = location.strip_prefix("http://") {
            parse_absolute(rest, Scheme::Http, 80)?
        } else if let Some(rest) = location.strip_prefix("https://") {
            parse_absolute(rest, Scheme::Https, 443)?
        } else if location.starts_with('/') {
            Url {
                target: location.to_string(),
                ..self.clone()
            }
        } else {
            let path = self.target.split('?').next().unwrap_or_default();
            let dir = &path[..path.rfind('/').map_or(0, |i| i + 1)];
            let dir = if dir.is_empty() { "/" } else { dir };
            Url {
                target: format!("{dir}{location}"),
                ..self.clone()
            }
        };
        (next.host == self.host).then_some(next)
    }
}

fn split_authority(authority: &str, default_port: u16) -> Option<(String, u16)> {
    if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().ok()?,
            None => default_port,
        };
        return Some((host.to_string(), port));
    }
    match authority.rsplit_once(':') {
        Some((host, port)) => Some((host.to_string(), port.parse().ok()?)),
        None => Some((authority.to_string(), default_port)),
    }
}

/// Performs an httpGet action against `default_host` (when it names no
/// host) within `timeout`, following same-host redirects.
pub async fn http_get(
    action: &HTTPGetAction,
    container: &Container,
    default_host: &str,
    timeout: Duration,
    user_agent: &str,
) -> Result<HttpAnswer, HttpError> {
    let port = resolve_port(&action.port, container).map_err(HttpError::Setup)?;
    let scheme = match action
        .scheme
        .as_deref()
        .map(str::to_ascii_uppercase)
        .as_deref()
    {
        None | Some("") | Some("HTTP") => Scheme::Http,
        Some("HTTPS") => Scheme::Https,
        Some(_) => {
            return Err(HttpError::Setup(format!(
                "unsupported scheme: {}",
                action.scheme.as_deref().unwrap_or_default()
            )))
        }
    };
    let host = action
        .host
        .as_deref()
        .filter(|h| !h.is_empty())
        .unwrap_or(default_host)
        .to_string();
    let path = action.path.as_deref().unwrap_or_default();
    let target = if path.is_empty() || path.starts_with('/') {
        path.to_string()
    } else {
        format!("/{path}")
    };
    let mut url = Url {
        scheme,
        host,
        port,
        target,
    };
    let headers = action.http_headers.as_deref().unwrap_or_default();
    let deadline = Instant::now() + timeout;
    for _ in 0..=MAX_REDIRECTS {
        let request_error =
            |reason: String| HttpError::Request(format!("Get {}: {reason}", go_quote(&url.text())));
        let exchange = tokio::time::timeout_at(deadline, send(&url, headers, user_agent, timeout));
        let (response, connection) =
            match exchange.await {
                Ok(Ok(sent)) => sent,
                Ok(Err(reason)) => return Err(request_error(reason)),
                Err(_) => return Err(request_error(
                    "context deadline exceeded (Client.Timeout exceeded while awaiting headers)"
                        .into(),
                )),
            };
        let status = response.status().as_u16();
        if (300..400).contains(&status) {
            let next = response
                .headers()
                .get(hyper::header::LOCATION)
                .and_then(|l| l.to_str().ok())
                .and_then(|l| url.follow(l));
            if let Some(next) = next {
                drop(connection);
                url = next;
                continue;
            }
        }
        let body = tokio::time::timeout_at(deadline, read_capped(response.into_body()))
            .await
            .map_err(|_| {
                HttpError::Setup(format!(
                    "reading the response body of {}: context deadline exceeded",
                    url.text()
                ))
            })?
            .map_err(|e| {
                HttpError::Setup(format!("reading the response body of {}: {e}", url.text()))
            })?;
        drop(connection);
        return Ok(HttpAnswer { status, body });
    }
    Err(HttpError::Request(format!(
        "Get {}: stopped after {MAX_REDIRECTS} redirects",
        go_quote(&url.text())
    )))
}

/// Aborts the task driving an HTTP connection when the exchange is over,
/// so a server that never answers holds nothing after the timeout.
struct Connection(tokio::task::JoinHandle<()>);

impl Drop for Connection {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// One request on a new connection.
async fn send(
    url: &Url,
    headers: &[HTTPHeader],
    user_agent: &str,
    timeout: Duration,
) -> Result<(hyper::Response<Incoming>, Connection), String> {
    let stream = connect(&url.host, url.port, timeout).await?;
    let request = build_request(url, headers, user_agent)?;
    match url.scheme {
        Scheme::Http => exchange(stream, request).await,
        Scheme::Https => {
            let name = ServerName::try_from(url.host.clone()).map_err(|e| e.to_string())?;
            let tls = tokio_rustls::TlsConnector::from(tls_config())
                .connect(name, stream)
                .await
                .map_err(|e| format!("tls: {e}"))?;
            exchange(tls, request).await
        }
    }
}

/// The request as the kubelet builds it: the action's headers, a `Host`
/// header of the URL's authority unless given, `User-Agent` and `Accept:
/// */*` unless given (an empty `Accept` removes it).
fn build_request(
    url: &Url,
    headers: &[HTTPHeader],
    user_agent: &str,
) -> Result<hyper::Request<Empty<Bytes>>, String> {
    let target = if url.target.is_empty() {
        "/"
    } else {
        &url.target
    };
    let mut builder = hyper::Request::get(target);
    let given = |name: &str| headers.iter().any(|h| h.name.eq_ignore_ascii_case(name));
    if !given("host") {
        builder = builder.header(hyper::header::HOST, url.authority());
    }
    if !given("user-agent") {
        builder = builder.header(hyper::header::USER_AGENT, user_agent);
    }
    if !given("accept") {
        builder = builder.header(hyper::header::ACCEPT, "*/*");
    }
    for header in headers {
        if header.name.eq_ignore_ascii_case("accept") && header.value.is_empty() {
            continue;
        }
        builder = builder.header(header.name.as_str(), header.value.as_str());
    }
    builder
        .body(Empty::new())
        .map_err(|e| format!("building the request: {e}"))
}

async fn exchange<T>(
    io: T,
    request: hyper::Request<Empty<Bytes>>,
) -> Result<(hyper::Response<Incoming>, Connection), String>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::Builder::new()
        .title_case_headers(true)
        .handshake(TokioIo::new(io))
        .await
        .map_err(|e| e.to_string())?;
    let connection = Connection(tokio::spawn(async move {
        let _ = connection.await;
    }));
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    Ok((response, connection))
}

/// Reads at most [`MAX_BODY`] bytes of a body; the rest is left unread.
async fn read_capped(mut body: Incoming) -> Result<String, hyper::Error> {
    let mut bytes = Vec::new();
    while bytes.len() < MAX_BODY {
        let Some(frame) = body.frame().await else {
            break;
        };
        if let Ok(data) = frame?.into_data() {
            let room = MAX_BODY - bytes.len();
            bytes.extend_from_slice(&data[..data.len().min(room)]);
        }
    }
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// TLS as the kubelet's probes do it: no certificate verification
/// (`InsecureSkipVerify`), since probe targets are pod IPs that no
/// certificate names.
fn tls_config() -> Arc<rustls::ClientConfig> {
    static CONFIG: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let verifier = Arc::new(AcceptAnyCertificate(provider.clone()));
            let config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                // The ring provider supports the safe default versions; a
                // failure here would be a bug in the provider.
                .expect("the ring provider supports TLS 1.2 and 1.3")
                .dangerous()
                .with_custom_certificate_verifier(verifier)
                .with_no_client_auth();
            Arc::new(config)
        })
        .clone()
}

/// Accepts any server certificate but still checks the handshake
/// signatures, so the connection is at least consistent.
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
