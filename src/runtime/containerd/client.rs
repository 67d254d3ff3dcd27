//! The connection to containerd and the metadata every request carries.

use std::path::{Path, PathBuf};

use tonic::transport::Channel;

use crate::metrics::CONTAINERD_CALLS;
use tonic::{Code, Request, Status};

/// Header selecting the containerd namespace of a request.
const NAMESPACE_HEADER: &str = "containerd-namespace";
/// Header attaching a request's new objects to a lease, protecting them from
/// garbage collection until the lease is deleted.
const LEASE_HEADER: &str = "containerd-lease";

/// Errors from containerd, keeping the gRPC code: "already exists" and "not
/// found" are ordinary outcomes of idempotent calls, not failures.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("cannot connect to containerd at {address}: {source}")]
    Connect {
        address: PathBuf,
        source: tonic::transport::Error,
    },
    #[error("containerd {op} {object}: {}", status.message())]
    Rpc {
        op: &'static str,
        object: String,
        status: Status,
    },
    #[error("image {image}: {reason}")]
    Image { image: String, reason: String },
    #[error("building the image for {image}: {source}")]
    Io {
        image: String,
        source: std::io::Error,
    },
}

impl RuntimeError {
    pub fn code(&self) -> Option<Code> {
        match self {
            RuntimeError::Rpc { status, .. } => Some(status.code()),
            _ => None,
        }
    }
    pub fn is_not_found(&self) -> bool {
        self.code() == Some(Code::NotFound)
    }
    pub fn is_already_exists(&self) -> bool {
        self.code() == Some(Code::AlreadyExists)
    }
    /// containerd could not be reached (not started yet, restarting): worth
    /// trying again, unlike an answer containerd gave.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, RuntimeError::Connect { .. }) || self.code() == Some(Code::Unavailable)
    }
}

/// Adds the call's name and object to a gRPC status.
pub(crate) fn rpc(
    op: &'static str,
    object: impl Into<String>,
) -> impl FnOnce(Status) -> RuntimeError {
    let object = object.into();
    move |status| RuntimeError::Rpc { op, object, status }
}

/// A handle on containerd for one namespace. Cloning shares the channel.
#[derive(Clone)]
pub struct Containerd {
    pub(crate) channel: MeteredChannel,
    namespace: String,
}

/// The one channel to containerd, timing every call by gRPC method into
/// [`CONTAINERD_CALLS`] for `/metrics`.
#[derive(Clone)]
pub(crate) struct MeteredChannel {
    inner: Channel,
}

type GrpcRequest = tonic::codegen::http::Request<tonic::body::Body>;
type ChannelResponse = <Channel as tower::Service<GrpcRequest>>::Response;
type ChannelError = <Channel as tower::Service<GrpcRequest>>::Error;

impl tower::Service<GrpcRequest> for MeteredChannel {
    type Response = ChannelResponse;
    type Error = ChannelError;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<ChannelResponse, ChannelError>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: GrpcRequest) -> Self::Future {
        let method = request.uri().path().to_string();
        let started = std::time::Instant::now();
        let call = self.inner.call(request);
        Box::pin(async move {
            let response = call.await;
            CONTAINERD_CALLS.record(&method, started.elapsed());
            response
        })
    }
}

impl Containerd {
    /// Connects to the socket at `address`. The channel reconnects by itself
    /// if containerd restarts later: calls in flight when it goes fail, calls
    /// made while it is down fail with `Unavailable` (see
    /// [`RuntimeError::is_unavailable`]), and each dials again, so the first
    /// call after it is back succeeds.
    pub async fn connect(address: &Path, namespace: &str) -> Result<Containerd, RuntimeError> {
        let channel = containerd_client::connect(address)
            .await
            .map_err(|source| RuntimeError::Connect {
                address: address.into(),
                source,
            })?;
        Ok(Containerd {
            channel: MeteredChannel { inner: channel },
            namespace: namespace.into(),
        })
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// A request in podkeeper's namespace, optionally under a lease.
    pub(crate) fn request<T>(&self, message: T, lease: Option<&str>) -> Request<T> {
        let mut request = Request::new(message);
        let metadata = request.metadata_mut();
        // Namespace and lease IDs are validated ASCII identifiers.
        if let Ok(value) = self.namespace.parse() {
            metadata.insert(NAMESPACE_HEADER, value);
        }
        if let Some(Ok(value)) = lease.map(str::parse) {
            metadata.insert(LEASE_HEADER, value);
        }
        request
    }

    /// containerd's version; used as a reachability check.
    pub async fn version(&self) -> Result<String, RuntimeError> {
        let mut client = containerd_client::services::v1::version_client::VersionClient::new(
            self.channel.clone(),
        );
        let response = client
            .version(Request::new(()))
            .await
            .map_err(rpc("version", ""))?;
        Ok(response.into_inner().version)
    }
}
