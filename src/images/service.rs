//! The image service: makes sure a container's image is on the node, by the
//! pod's pull policy, pulling from a registry or importing archives into
//! containerd through its own services (content, leases, diff, snapshots,
//! images) — never by running `ctr`.
//!
//! Concurrent needs for one image share one pull (`in_flight.rs`). Every successful pull or
//! import bumps a counter that waiting pod workers watch, so a pod waiting
//! for an image starts as soon as it arrives.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::Instant;

use bytes::Bytes;
use containerd_client::types::Descriptor;
use futures::{StreamExt, TryStreamExt};
use oci_spec::image::ImageManifest;
use tokio::sync::watch;

use super::archive::{self, ArchiveImage, BlobSink};
use super::in_flight::InFlight;
use super::policy::{Ensured, ImageError, OnPull, Provenance, PullPolicy};
use super::reference;
use super::registry::{RegistryClient, RegistryError};
use crate::runtime::containerd::content::Ingest;

use crate::metrics::IMAGE_PULLS;
use crate::runtime::containerd::images::ResolvedImage;
use crate::runtime::containerd::{Containerd, RuntimeError};
use crate::runtime::pause;

/// Layers of one image downloaded at once.
const PARALLEL_BLOBS: usize = 3;

pub struct ImageService {
    runtime: Containerd,
    registry: RegistryClient,
    /// Pulls in progress by image name.
    pulls: InFlight<Result<(), PullFailure>>,
    changed: watch::Sender<u64>,
    /// Resolved images by target digest. What a digest names never changes,
    /// so starting another container of a known image costs one Images.Get
    /// instead of reading its manifest and config and statting its snapshot
    /// again.
    resolved: Mutex<HashMap<String, ResolvedImage>>,
}

impl ImageService {
    pub fn new(runtime: Containerd, registry: RegistryClient) -> ImageService {
        ImageService {
            runtime,
            registry,
            pulls: InFlight::default(),
            changed: watch::channel(0).0,
            resolved: Mutex::new(HashMap::new()),
        }
    }

    /// Removes image `name` from containerd (its unused content and
    /// snapshots go with it) and forgets its resolution.
    pub async fn delete(&self, name: &str) -> Result<(), RuntimeError> {
        let target = self.runtime.image_target(name).await?;
        self.runtime.delete_image(name).await?;
        let mut resolved = self.resolved.lock().unwrap_or_else(|e| e.into_inner());
        resolved.remove(&target.digest);
        Ok(())
    }

    /// `name` resolved, from the cache when its target is known.
    async fn resolve(&self, name: &str) -> Result<ResolvedImage, RuntimeError> {
        let target = self.runtime.image_target(name).await?;
        let cached = {
            let resolved = self.resolved.lock().unwrap_or_else(|e| e.into_inner());
            resolved.get(&target.digest).cloned()
        };
        if let Some(image) = cached {
            return Ok(ResolvedImage {
                name: name.into(),
                ..image
            });
        }
        let image = self.runtime.resolve_image(name).await?;
        let mut resolved = self.resolved.lock().unwrap_or_else(|e| e.into_inner());
        resolved.insert(image.digest.clone(), image.clone());
        Ok(image)
    }

    /// Bumped after every image that arrives; watch it to retry waiting pods.
    pub fn arrivals(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    fn announce_arrival(&self) {
        self.changed.send_modify(|n| *n += 1);
    }

    /// The normalized name of `image`, or why it is not a reference.
    pub fn normalize(image: &str) -> Result<String, ImageError> {
        reference::normalize(image).map_err(ImageError::InvalidName)
    }

    /// Makes `image` available by `policy` and resolves it. Unlike the
    /// kubelet, `Always` falls back to the local copy when the registry
    /// cannot be reached at all, so an offline node with `:latest` images
    /// still starts its pods.
    pub async fn ensure(
        &self,
        image: &str,
        policy: PullPolicy,
        on_pull: OnPull,
    ) -> Result<Ensured, ImageError> {
        let name = Self::normalize(image)?;
        // The built-in image's names are never pulled: a registry answering
        // for them would replace every pod's sandbox.
        let policy = if pause::is_reserved(&name) {
            PullPolicy::Never
        } else {
            policy
        };
        let local = match self.resolve(&name).await {
            Ok(resolved) => Some(resolved),
            Err(e) if e.is_not_found() => None,
            Err(e) => {
                return Err(ImageError::Inspect(format!(
                    "Failed to inspect image {image:?}: {e}"
                )))
            }
        };
        match (policy, local) {
            (PullPolicy::Never, None) => Err(ImageError::NeverPull(image.into())),
            (PullPolicy::Never | PullPolicy::IfNotPresent, Some(image)) => Ok(Ensured {
                image,
                provenance: Provenance::AlreadyPresent,
            }),
            (PullPolicy::Always | PullPolicy::IfNotPresent, local) => {
                on_pull();
                let started = Instant::now();
                let pulled = self.pull(&name).await;
                let outcome = if pulled.is_ok() { "pulled" } else { "failed" };
                IMAGE_PULLS.record(outcome, started.elapsed());
                match pulled {
                    Ok(()) => {
                        let image = self.resolve(&name).await.map_err(|e| {
                            ImageError::Inspect(format!("Failed to inspect image {image:?}: {e}"))
                        })?;
                        Ok(Ensured {
                            image,
                            provenance: Provenance::Pulled {
                                duration: started.elapsed(),
                            },
                        })
                    }
                    Err(PullFailure::Unreachable(error)) => match local {
                        Some(image) => Ok(Ensured {
                            image,
                            provenance: Provenance::LocalFallback { error },
                        }),
                        None => Err(ImageError::Pull(error)),
                    },
                    Err(failure) => Err(ImageError::Pull(failure.to_string())),
                }
            }
        }
    }

    /// Pulls `name` (normalized), sharing a pull already in progress. A
    /// pull whose caller goes away stops; one waiting for it takes over.
    pub async fn pull(&self, name: &str) -> Result<(), PullFailure> {
        let pull = || async {
            let result = self.pull_now(name).await;
            if result.is_ok() {
                self.announce_arrival();
            }
            result
        };
        self.pulls.run(name, pull).await
    }

    async fn pull_now(&self, name: &str) -> Result<(), PullFailure> {
        tracing::info!(image = name, "pulling");
        let top = self.registry.fetch_manifest(name).await?;
        if let Ok(local) = self.runtime.image_target(name).await {
            if local.digest == top.digest && self.runtime.resolve_image(name).await.is_ok() {
                return Ok(());
            }
        }
        let ingest = self.runtime.begin_ingest("pull").await?;
        let result = self.pull_into(&ingest, name, top).await;
        ingest.finish().await;
        result
    }

    async fn pull_into(
        &self,
        ingest: &Ingest,
        name: &str,
        top: super::registry::FetchedManifest,
    ) -> Result<(), PullFailure> {
        let target = Descriptor {
            media_type: top.media_type.clone(),
            digest: top.digest.clone(),
            size: top.bytes.len() as i64,
            annotations: HashMap::new(),
        };
        let manifest_bytes = if top.is_index() {
            let child = RegistryClient::select_platform(&top.bytes)?;
            let manifest = self
                .registry
                .fetch_manifest_digest(name, &child.digest)
                .await?;
            let bytes = manifest.bytes.clone();
            ingest
                .put_bytes(Some(&manifest.digest), manifest.bytes)
                .await?;
            bytes
        } else {
            top.bytes.clone()
        };
        let manifest = ImageManifest::from_reader(&manifest_bytes[..])
            .map_err(|e| PullFailure::Other(format!("unreadable manifest of {name}: {e}")))?;
        let blobs: Vec<(String, u64)> = std::iter::once(manifest.config())
            .chain(manifest.layers())
            .map(|d| (d.digest().to_string(), d.size()))
            .collect();
        futures::stream::iter(blobs)
            .map(|(digest, size)| self.pull_blob(ingest, name, digest, size))
            .buffer_unordered(PARALLEL_BLOBS)
            .try_collect::<Vec<()>>()
            .await?;
        if top.is_index() {
            ingest.put_bytes(Some(&top.digest), top.bytes).await?;
        } else {
            ingest.put_bytes(Some(&top.digest), manifest_bytes).await?;
        }
        self.runtime.register_image(ingest, name, target).await?;
        tracing::info!(image = name, digest = %top.digest, "pulled");
        Ok(())
    }

    async fn pull_blob(
        &self,
        ingest: &Ingest,
        name: &str,
        digest: String,
        size: u64,
    ) -> Result<(), PullFailure> {
        if self.runtime.content_info(&digest).await?.is_some() {
            return Ok(());
        }
        let stream = self.registry.fetch_blob(name, &digest, size).await?;
        let stream =
            stream.map(|chunk: Result<Bytes, RegistryError>| chunk.map_err(|e| e.to_string()));
        ingest.put_stream(Some(&digest), size, stream).await?;
        Ok(())
    }

    /// Imports every named image of an archive file; returns their names.
    pub async fn import_archive(&self, path: &Path) -> Result<Vec<String>, ImportError> {
        let ingest = self
            .runtime
            .begin_ingest("import")
            .await
            .map_err(ImportError::Runtime)?;
        let result = self.import_into(&ingest, path).await;
        ingest.finish().await;
        let names = result?;
        if !names.is_empty() {
            self.announce_arrival();
        }
        Ok(names)
    }

    async fn import_into(&self, ingest: &Ingest, path: &Path) -> Result<Vec<String>, ImportError> {
        let file = std::fs::File::open(path).map_err(|e| ImportError::Archive(e.to_string()))?;
        let mut sink = ContainerdSink {
            ingest: ingest.clone(),
            handle: tokio::runtime::Handle::current(),
        };
        let images = tokio::task::spawn_blocking(move || {
            archive::read_archive(std::io::BufReader::new(file), &mut sink)
        })
        .await
        .map_err(|e| ImportError::Archive(e.to_string()))?
        .map_err(|e| ImportError::Archive(e.to_string()))?;
        let mut named = Vec::new();
        for ArchiveImage {
            names: archive_names,
            target,
        } in images
        {
            if archive_names.is_empty() {
                tracing::warn!(archive = %path.display(), digest = %target.digest, "image without a name in the archive; skipped");
            }
            for archive_name in archive_names {
                let name = reference::normalize(&archive_name).map_err(|e| {
                    ImportError::Archive(format!("image name {archive_name:?}: {e}"))
                })?;
                // Checked for every name before any is registered: an archive
                // that tries to replace the sandbox image is not imported at all.
                if pause::is_reserved(&name) {
                    return Err(ImportError::Archive(format!(
                        "image name {name} is reserved for podkeeper's built-in pause image; the archive is not imported"
                    )));
                }
                named.push((name, target.clone()));
            }
        }
        let mut names = Vec::new();
        for (name, target) in named {
            let descriptor = Descriptor {
                media_type: target.media_type,
                digest: target.digest,
                size: target.size as i64,
                annotations: HashMap::new(),
            };
            self.runtime
                .register_image(ingest, &name, descriptor)
                .await
                .map_err(ImportError::Runtime)?;
            names.push(name);
        }
        Ok(names)
    }

    pub fn runtime(&self) -> &Containerd {
        &self.runtime
    }
}

/// Why a pull failed; `Unreachable` alone lets `Always` use a local copy.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PullFailure {
    #[error("{0}")]
    Unreachable(String),
    #[error("{0}")]
    Other(String),
}

impl From<RegistryError> for PullFailure {
    fn from(e: RegistryError) -> Self {
        match e {
            RegistryError::Unreachable(_) => PullFailure::Unreachable(e.to_string()),
            other => PullFailure::Other(other.to_string()),
        }
    }
}

impl From<RuntimeError> for PullFailure {
    fn from(e: RuntimeError) -> Self {
        PullFailure::Other(e.to_string())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("{0}")]
    Archive(String),
    #[error(transparent)]
    Runtime(RuntimeError),
}

/// Streams archive blobs into containerd from the archive reader's thread.
struct ContainerdSink {
    ingest: Ingest,
    handle: tokio::runtime::Handle,
}

impl BlobSink for ContainerdSink {
    fn put(
        &mut self,
        expected: Option<&str>,
        size: u64,
        data: &mut dyn std::io::Read,
    ) -> Result<String, String> {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, String>>(4);
        let ingest = self.ingest.clone();
        let expected_owned = expected.map(String::from);
        let writer = self.handle.spawn(async move {
            let chunks = tokio_stream::wrappers::ReceiverStream::new(rx);
            ingest
                .put_stream(expected_owned.as_deref(), size, chunks)
                .await
        });
        let mut buffer = vec![0u8; 1 << 20];
        // The writer may stop listening early (the blob is already stored):
        // the rest is still read, because the archive reader expects the
        // whole entry consumed.
        let mut listening = true;
        loop {
            let n = match data.read(&mut buffer) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) => {
                    let _ = tx.blocking_send(Err(e.to_string()));
                    break;
                }
            };
            if listening {
                let chunk = Bytes::copy_from_slice(&buffer[..n]);
                listening = tx.blocking_send(Ok(chunk)).is_ok();
            }
        }
        drop(tx);
        self.handle
            .block_on(writer)
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())
    }
}
