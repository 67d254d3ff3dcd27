//! The read-only HTTP API (hyper): the kubelet read-only port's `/pods`,
//! `/healthz`, `/readyz`, `/metrics`, and enough of the Kubernetes API
//! (discovery, pods, pod logs, events, watches) that stock kubectl works
//! against the agent. Served on three listeners that differ only in whom
//! they let in ([`Access`]): HTTPS on `api-listen` to authenticated
//! callers, a root-only unix socket in the state directory to root, and
//! plain HTTP on `http-listen` with health checks only.
//!
//! Layout: [`access`] decides whether a caller may send a request;
//! [`route`] and [`selector`] turn it into a route, purely; [`handlers`]
//! and [`watch`] answer it; [`discovery`], [`table`] and [`metrics`]
//! render documents.
//!
//! Robustness: request heads are bounded in size, header count and time;
//! bodies are never read (every method that would carry one is refused);
//! connections per listener and per peer are bounded ([`peers`]); a
//! client that stops reading loses its connection ([`timed_io`]); streams
//! write into bounded channels, so a slow client only holds up its own
//! task.

mod access;
mod cache;
mod discovery;
mod handlers;
mod log_stream;
mod metrics;
mod peers;
mod response;
mod route;
mod selector;
mod table;
mod timed_io;
mod watch;

use std::convert::Infallible;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::auth;
use super::tls::Https;
use super::ApiState;
pub use access::Access;
use peers::{Peer, PeerLimits, PeerPermit};
use response::Body;
use route::RouteError;

/// Connections served at once per listener; more wait in the kernel's
/// backlog. Each peer may hold [`peers::PER_PEER`] of them.
const MAX_CONNECTIONS: usize = 64;

/// Headers accepted in a request.
const MAX_HEADERS: usize = 64;

/// Bytes buffered for a request head (the minimum hyper allows): longer
/// request lines or headers are refused with 431.
const MAX_HEAD: usize = 8192;

/// Time a client has to send a whole request head, also between requests
/// on a kept-alive connection.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// Time a client has for the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What the HTTP API keeps between requests, shared by its listeners.
#[derive(Default)]
pub struct Shared {
    metrics: metrics::HttpMetrics,
    pods: cache::PodCache,
}

/// Serves plain HTTP on `listener` to callers `access` admits, until the
/// task is dropped.
pub async fn serve(listener: TcpListener, state: ApiState, access: Access) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let peers = PeerLimits::new(peers::PER_PEER);
    loop {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        match listener.accept().await {
            Ok((stream, remote)) => {
                let peer = tcp_peer(&stream, remote);
                if let Some(share) = take_share(&peers, peer, &state) {
                    let permit = (permit, share);
                    tokio::spawn(connection(stream, state.clone(), permit, access.clone()));
                }
            }
            Err(e) => tracing::warn!(error = %e, "accepting an HTTP connection failed"),
        }
    }
}

/// Serves HTTPS on `listener` to authenticated callers, until the task is
/// dropped. A client certificate is checked during the handshake; the
/// user it names holds for every request of the connection.
pub async fn serve_tls(listener: TcpListener, state: ApiState, https: Https) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let peers = PeerLimits::new(peers::PER_PEER);
    loop {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let (stream, remote) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "accepting an HTTPS connection failed");
                continue;
            }
        };
        let peer = tcp_peer(&stream, remote);
        let Some(share) = take_share(&peers, peer, &state) else {
            continue;
        };
        let acceptor = https.acceptor.clone();
        let tokens = https.tokens.clone();
        let state = state.clone();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => return,
            };
            let certificate = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|chain| chain.first())
                .and_then(|cert| auth::user_from_certificate(cert))
                .map(Arc::new);
            let access = Access::Authenticated {
                tokens,
                certificate,
            };
            connection(tls, state, (permit, share), access).await;
        });
    }
}

/// Serves the same API on a unix socket at `path` (replacing a stale one),
/// which only root may open, until the task is dropped.
pub async fn serve_unix(path: &Path, state: ApiState) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let peers = PeerLimits::new(peers::PER_PEER);
    loop {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return Ok(());
        };
        match listener.accept().await {
            Ok((stream, _)) => {
                if let Some(share) = take_share(&peers, Peer::of_unix(&stream), &state) {
                    let permit = (permit, share);
                    tokio::spawn(connection(stream, state.clone(), permit, Access::Root));
                }
            }
            Err(e) => tracing::warn!(error = %e, "accepting an HTTP connection failed"),
        }
    }
}

/// Who is at the other end of an accepted TCP connection, for its share
/// of the listener. Also turns Nagle's algorithm off: a response written
/// in several pieces (TLS records, a streamed body) would otherwise hold
/// its last small piece until the client's delayed ACK, 40 ms later.
fn tcp_peer(stream: &tokio::net::TcpStream, remote: std::net::SocketAddr) -> Peer {
    let _ = stream.set_nodelay(true);
    stream
        .local_addr()
        .map_or(Peer::Unknown, |local| Peer::of_tcp(local, remote))
}

/// `peer`'s share of a listener, or `None` (counted; the caller drops the
/// connection) when it holds all of it already.
fn take_share(peers: &PeerLimits, peer: Peer, state: &ApiState) -> Option<PeerPermit> {
    let share = peers.try_acquire(peer);
    if share.is_none() {
        tracing::debug!(
            ?peer,
            "closing an HTTP connection: its peer holds its share"
        );
        state.http.metrics.refuse();
    }
    share
}

async fn connection(
    io: impl AsyncRead + AsyncWrite + Unpin + Send + 'static,
    state: ApiState,
    permit: (OwnedSemaphorePermit, PeerPermit),
    access: Access,
) {
    let service = service_fn(move |request| {
        let state = state.clone();
        let access = access.clone();
        async move { Ok::<_, Infallible>(dispatch(&request, &state, &access).await) }
    });
    let _ = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEAD_TIMEOUT)
        .max_headers(MAX_HEADERS)
        .max_buf_size(MAX_HEAD)
        .serve_connection(
            TokioIo::new(timed_io::WriteTimeout::new(io, timed_io::WRITE_TIMEOUT)),
            service,
        )
        .await;
    drop(permit);
}

/// Admits, routes and answers one request, and records it in the metrics.
async fn dispatch(
    request: &Request<Incoming>,
    state: &ApiState,
    access: &Access,
) -> Response<Body> {
    let started = Instant::now();
    let admitted = access.admit(request.method(), request.uri().path(), request.headers());
    let (label, response) = if let Err(refusal) = admitted {
        (refusal.label(), refusal.response())
    } else if request.method() != Method::GET && request.method() != Method::HEAD {
        ("write", response::route_error(&RouteError::ReadOnly))
    } else {
        match route::route(request.uri().path(), request.uri().query()) {
            Ok(route) => {
                let wants_table = request
                    .headers()
                    .get(hyper::header::ACCEPT)
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(route::wants_table);
                let label = route.label();
                (label, handlers::handle(route, wants_table, state).await)
            }
            Err(e) => ("invalid", response::route_error(&e)),
        }
    };
    state
        .http
        .metrics
        .record(label, response.status().as_u16(), started.elapsed());
    response
}
