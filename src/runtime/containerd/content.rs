//! Writing into containerd's content store: blobs streamed under a lease,
//! so a garbage collection running meanwhile cannot remove a half-finished
//! pull or import; the lease is released when the image is registered and
//! its content labelled.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use containerd_client::services::v1::content_client::ContentClient;
use containerd_client::services::v1::leases_client::LeasesClient;
use containerd_client::services::v1::{
    CreateRequest, DeleteRequest, Info, InfoRequest, ReadContentRequest, UpdateRequest,
    WriteAction, WriteContentRequest,
};
use futures::{Stream, StreamExt};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::client::{rpc, Containerd, RuntimeError};
use crate::images::digest::hex;

/// Content writes carry at most this much data per message.
const WRITE_CHUNK: usize = 1 << 20;

/// How long a lease outlives an agent that died before releasing it.
const LEASE_EXPIRY_HOURS: i64 = 1;

/// How long to wait for another writer of the same blob ("ref locked").
const LOCKED_RETRY: Duration = Duration::from_millis(250);
const LOCKED_RETRIES: u32 = 1200;

/// An open lease for one pull or import. Release it with [`Ingest::finish`];
/// if the agent dies first, the lease expires by itself. Clones share the
/// lease (blobs of one image may be written concurrently).
#[derive(Clone)]
pub struct Ingest {
    runtime: Containerd,
    lease: String,
}

impl Containerd {
    /// Starts an ingest under a new lease.
    pub async fn begin_ingest(&self, purpose: &str) -> Result<Ingest, RuntimeError> {
        let expires = jiff::Timestamp::now() + jiff::SignedDuration::from_hours(LEASE_EXPIRY_HOURS);
        let id = format!(
            "podkeeper-{purpose}-{}",
            jiff::Timestamp::now().as_nanosecond()
        );
        let mut leases = LeasesClient::new(self.channel.clone());
        let request = CreateRequest {
            id: id.clone(),
            labels: HashMap::from([("containerd.io/gc.expire".into(), expires.to_string())]),
        };
        leases
            .create(self.request(request, None))
            .await
            .map_err(rpc("create lease", &id))?;
        Ok(Ingest {
            runtime: self.clone(),
            lease: id,
        })
    }

    /// Metadata of a blob, `None` if the store does not have it.
    pub async fn content_info(&self, digest: &str) -> Result<Option<Info>, RuntimeError> {
        let mut content = ContentClient::new(self.channel.clone());
        let request = InfoRequest {
            digest: digest.into(),
        };
        match content.info(self.request(request, None)).await {
            Ok(response) => Ok(response.into_inner().info),
            Err(status) if status.code() == tonic::Code::NotFound => Ok(None),
            Err(status) => Err(rpc("content info", digest)(status)),
        }
    }

    /// Reads a whole blob. Only for small blobs (manifests, configs).
    pub async fn read_blob(&self, digest: &str) -> Result<Vec<u8>, RuntimeError> {
        let mut content = ContentClient::new(self.channel.clone());
        let request = ReadContentRequest {
            digest: digest.into(),
            offset: 0,
            size: 0,
        };
        let mut stream = content
            .read(self.request(request, None))
            .await
            .map_err(rpc("read content", digest))?
            .into_inner();
        let mut data = Vec::new();
        while let Some(chunk) = stream.next().await {
            data.extend(chunk.map_err(rpc("read content", digest))?.data);
        }
        Ok(data)
    }

    /// Sets labels on a blob, keeping its other labels.
    pub async fn label_blob(
        &self,
        digest: &str,
        labels: HashMap<String, String>,
    ) -> Result<(), RuntimeError> {
        if labels.is_empty() {
            return Ok(());
        }
        let paths = labels.keys().map(|k| format!("labels.{k}")).collect();
        let request = UpdateRequest {
            info: Some(Info {
                digest: digest.into(),
                labels,
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask { paths }),
        };
        let mut content = ContentClient::new(self.channel.clone());
        content
            .update(self.request(request, None))
            .await
            .map_err(rpc("label content", digest))?;
        Ok(())
    }
}

impl Ingest {
    pub fn lease(&self) -> &str {
        &self.lease
    }

    pub fn runtime(&self) -> &Containerd {
        &self.runtime
    }

    /// Stores a blob from a stream of chunks and returns its digest. With
    /// `expected`, containerd verifies digest and size at commit and an
    /// existing blob is not written again. Another writer of the same blob
    /// is waited for.
    pub async fn put_stream<S>(
        &self,
        expected: Option<&str>,
        size: u64,
        chunks: S,
    ) -> Result<String, RuntimeError>
    where
        S: Stream<Item = Result<Bytes, String>> + Send + 'static,
    {
        if let Some(digest) = expected {
            if self.runtime.content_info(digest).await?.is_some() {
                return Ok(digest.to_string());
            }
        }
        let reference = match expected {
            Some(digest) => format!("podkeeper-{digest}"),
            None => format!(
                "podkeeper-upload-{}",
                jiff::Timestamp::now().as_nanosecond()
            ),
        };
        let (tx, rx) = mpsc::channel::<WriteContentRequest>(4);
        let opening = WriteContentRequest {
            action: WriteAction::Stat as i32,
            r#ref: reference.clone(),
            ..Default::default()
        };
        if tx.send(opening).await.is_err() {
            return Err(write_error(&reference, "write stream closed"));
        }
        let expected_digest = expected.unwrap_or_default().to_string();
        let feeder_ref = reference.clone();
        let feeder = tokio::spawn(feed(chunks, tx, feeder_ref, expected_digest, size));
        let mut content = ContentClient::new(self.runtime.channel.clone());
        let request = self
            .runtime
            .request(ReceiverStream::new(rx), Some(&self.lease));
        let result = async {
            let mut replies = content.write(request).await?.into_inner();
            while let Some(reply) = replies.next().await {
                reply?;
            }
            Ok::<_, tonic::Status>(())
        }
        .await;
        let fed = feeder
            .await
            .map_err(|e| write_error(&reference, &e.to_string()))?;
        match result {
            Ok(()) => fed,
            Err(status) if status.code() == tonic::Code::AlreadyExists => match expected {
                Some(digest) => Ok(digest.to_string()),
                None => fed,
            },
            Err(status) if status.code() == tonic::Code::Unavailable && expected.is_some() => {
                // Another pull writes the same blob ("ref ... locked"):
                // wait for it to land rather than write it twice.
                let digest = expected.unwrap_or_default();
                for _ in 0..LOCKED_RETRIES {
                    tokio::time::sleep(LOCKED_RETRY).await;
                    if self.runtime.content_info(digest).await?.is_some() {
                        return Ok(digest.to_string());
                    }
                }
                Err(rpc("write content", digest)(status))
            }
            Err(status) => {
                // A failure of the source (network, archive) explains more
                // than the aborted write it caused.
                fed?;
                Err(rpc("write content", &reference)(status))
            }
        }
    }

    /// Stores a small blob held in memory.
    pub async fn put_bytes(
        &self,
        expected: Option<&str>,
        data: Vec<u8>,
    ) -> Result<String, RuntimeError> {
        let size = data.len() as u64;
        let stream = futures::stream::iter([Ok(Bytes::from(data))]);
        self.put_stream(expected, size, stream).await
    }

    /// Releases the lease. Content referenced by an image (through its GC
    /// labels) stays; anything else written under it becomes collectable.
    pub async fn finish(&self) {
        let mut leases = LeasesClient::new(self.runtime.channel.clone());
        let request = DeleteRequest {
            id: self.lease.clone(),
            sync: false,
        };
        if let Err(status) = leases.delete(self.runtime.request(request, None)).await {
            tracing::warn!(lease = %self.lease, error = %status.message(), "could not delete lease; it expires by itself");
        }
    }
}

fn write_error(reference: &str, message: &str) -> RuntimeError {
    RuntimeError::Image {
        image: reference.into(),
        reason: message.into(),
    }
}

/// Turns the chunk stream into Write messages and a final Commit, and
/// returns the digest of what it sent.
async fn feed<S>(
    chunks: S,
    tx: mpsc::Sender<WriteContentRequest>,
    reference: String,
    expected: String,
    size: u64,
) -> Result<String, RuntimeError>
where
    S: Stream<Item = Result<Bytes, String>> + Send + 'static,
{
    let mut chunks = Box::pin(chunks);
    let mut offset: i64 = 0;
    let mut hasher = Sha256::new();
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.map_err(|e| write_error(&reference, &e))?;
        hasher.update(&chunk);
        for piece in chunk.chunks(WRITE_CHUNK) {
            let message = WriteContentRequest {
                action: WriteAction::Write as i32,
                r#ref: reference.clone(),
                total: size as i64,
                expected: expected.clone(),
                offset,
                data: piece.to_vec(),
                ..Default::default()
            };
            offset += piece.len() as i64;
            if tx.send(message).await.is_err() {
                // containerd ended the stream; its reply says why.
                return Err(write_error(&reference, "containerd ended the write"));
            }
        }
    }
    if offset as u64 != size {
        return Err(write_error(
            &reference,
            &format!("got {offset} bytes, expected {size}"),
        ));
    }
    let digest = format!("sha256:{}", hex(&hasher.finalize()));
    if !expected.is_empty() && expected != digest {
        return Err(write_error(
            &reference,
            &format!("content hashes to {digest}, expected {expected}"),
        ));
    }
    let commit = WriteContentRequest {
        action: WriteAction::Commit as i32,
        r#ref: reference,
        total: size as i64,
        expected: digest.clone(),
        offset,
        ..Default::default()
    };
    let _ = tx.send(commit).await;
    Ok(digest)
}
