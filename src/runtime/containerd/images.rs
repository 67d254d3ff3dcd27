//! Images in containerd's stores: writing the built-in pause image, and
//! resolving an image name to its config and unpacked root filesystem.

use std::collections::HashMap;

use containerd_client::services::v1::content_client::ContentClient;
use containerd_client::services::v1::diff_client::DiffClient;
use containerd_client::services::v1::images_client::ImagesClient;
use containerd_client::services::v1::leases_client::LeasesClient;
use containerd_client::services::v1::snapshots::snapshots_client::SnapshotsClient;
use containerd_client::services::v1::snapshots::{
    CommitSnapshotRequest, PrepareSnapshotRequest, RemoveSnapshotRequest, StatSnapshotRequest,
};
use containerd_client::services::v1::{
    ApplyRequest, CreateImageRequest, CreateRequest, DeleteRequest, GetImageRequest, Image,
    ReadContentRequest, WriteAction, WriteContentRequest,
};
use containerd_client::types::Descriptor;
use futures::StreamExt;
use oci_spec::image::{ImageConfiguration, ImageIndex, ImageManifest};
use sha2::{Digest, Sha256};

use super::client::{rpc, Containerd, RuntimeError};
use crate::runtime::pause::{self, Blob, ImageBlobs};
use crate::runtime::ImageConfig;

/// The snapshotter podkeeper unpacks into and runs containers from.
pub const SNAPSHOTTER: &str = "overlayfs";

/// Chunk size for content writes.
const WRITE_CHUNK: usize = 1 << 20;

/// An image ready to run a container from.
#[derive(Debug, Clone)]
pub struct ResolvedImage {
    pub name: String,
    /// Digest of the image's target (manifest or index), reported as Image ID.
    pub digest: String,
    pub config: ImageConfig,
    /// Chain ID of the top layer: the parent snapshot of a container's rootfs.
    pub chain_id: String,
}

impl Containerd {
    /// Makes sure the built-in pause image is present and unpacked, writing
    /// it into containerd if it is not. Returns the resolved image.
    pub async fn ensure_pause_image(&self) -> Result<ResolvedImage, RuntimeError> {
        let name = pause::image_name();
        match self.resolve_image(&name).await {
            Ok(image) => return Ok(image),
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e),
        }
        let blobs = pause::image_blobs().map_err(|source| RuntimeError::Io {
            image: name.clone(),
            source,
        })?;
        let lease = self.create_lease("podkeeper-pause").await?;
        let result = self.import_single_layer(&name, &blobs, &lease).await;
        self.delete_lease(&lease).await;
        result?;
        tracing::info!(image = %name, digest = %blobs.manifest.digest, "built-in pause image created");
        self.resolve_image(&name).await
    }

    async fn import_single_layer(
        &self,
        name: &str,
        blobs: &ImageBlobs,
        lease: &str,
    ) -> Result<(), RuntimeError> {
        let chain_id = blobs.layer.digest.clone();
        let layer_labels = HashMap::from([(
            "containerd.io/uncompressed".to_string(),
            blobs.layer.digest.clone(),
        )]);
        let config_labels = HashMap::from([(
            format!("containerd.io/gc.ref.snapshot.{SNAPSHOTTER}"),
            chain_id.clone(),
        )]);
        let manifest_labels = HashMap::from([
            (
                "containerd.io/gc.ref.content.config".to_string(),
                blobs.config.digest.clone(),
            ),
            (
                "containerd.io/gc.ref.content.l.0".to_string(),
                blobs.layer.digest.clone(),
            ),
        ]);
        self.write_blob(&blobs.layer, layer_labels, lease).await?;
        self.write_blob(&blobs.config, config_labels, lease).await?;
        self.write_blob(&blobs.manifest, manifest_labels, lease)
            .await?;
        self.unpack_layers(&[descriptor(&blobs.layer)], &[chain_id], lease)
            .await?;
        let image = Image {
            name: name.to_string(),
            target: Some(descriptor(&blobs.manifest)),
            ..Default::default()
        };
        let mut images = ImagesClient::new(self.channel.clone());
        let request = CreateImageRequest {
            image: Some(image),
            source_date_epoch: None,
        };
        match images.create(self.request(request, Some(lease))).await {
            Ok(_) => Ok(()),
            Err(status) if status.code() == tonic::Code::AlreadyExists => Ok(()),
            Err(status) => Err(rpc("create image", name)(status)),
        }
    }

    /// Writes one blob to the content store; present content is success.
    async fn write_blob(
        &self,
        blob: &Blob,
        labels: HashMap<String, String>,
        lease: &str,
    ) -> Result<(), RuntimeError> {
        let reference = format!("podkeeper-{}", blob.digest);
        let total = blob.data.len() as i64;
        let mut messages = vec![WriteContentRequest {
            action: WriteAction::Stat as i32,
            r#ref: reference.clone(),
            ..Default::default()
        }];
        let mut offset = 0;
        for chunk in blob.data.chunks(WRITE_CHUNK) {
            messages.push(WriteContentRequest {
                action: WriteAction::Write as i32,
                r#ref: reference.clone(),
                total,
                expected: blob.digest.clone(),
                offset,
                data: chunk.to_vec(),
                ..Default::default()
            });
            offset += chunk.len() as i64;
        }
        messages.push(WriteContentRequest {
            action: WriteAction::Commit as i32,
            r#ref: reference,
            total,
            expected: blob.digest.clone(),
            offset,
            labels,
            ..Default::default()
        });
        let mut content = ContentClient::new(self.channel.clone());
        let request = self.request(futures::stream::iter(messages), Some(lease));
        let result = async {
            let mut replies = content.write(request).await?.into_inner();
            while let Some(reply) = replies.next().await {
                reply?;
            }
            Ok::<_, tonic::Status>(())
        }
        .await;
        match result {
            Ok(()) => Ok(()),
            Err(status) if status.code() == tonic::Code::AlreadyExists => Ok(()),
            Err(status) => Err(rpc("write content", &blob.digest)(status)),
        }
    }

    /// Applies layers in order into snapshots named by their chain IDs,
    /// skipping those already unpacked.
    async fn unpack_layers(
        &self,
        layers: &[Descriptor],
        diff_ids: &[String],
        lease: &str,
    ) -> Result<(), RuntimeError> {
        let chain = chain_ids(diff_ids);
        let mut snapshots = SnapshotsClient::new(self.channel.clone());
        let mut diff = DiffClient::new(self.channel.clone());
        for (i, layer) in layers.iter().enumerate() {
            if self.snapshot_exists(&chain[i]).await? {
                continue;
            }
            let parent = if i == 0 {
                String::new()
            } else {
                chain[i - 1].clone()
            };
            let key = format!(
                "extract-{} {}",
                jiff::Timestamp::now().as_nanosecond(),
                chain[i]
            );
            let prepare = PrepareSnapshotRequest {
                snapshotter: SNAPSHOTTER.into(),
                key: key.clone(),
                parent,
                labels: HashMap::new(),
            };
            let mounts = snapshots
                .prepare(self.request(prepare, Some(lease)))
                .await
                .map_err(rpc("prepare snapshot", &key))?
                .into_inner()
                .mounts;
            let apply = ApplyRequest {
                diff: Some(layer.clone()),
                mounts,
                payloads: HashMap::new(),
                sync_fs: false,
            };
            let applied = diff
                .apply(self.request(apply, Some(lease)))
                .await
                .map_err(rpc("apply layer", &layer.digest))?
                .into_inner()
                .applied;
            let applied_digest = applied.map(|d| d.digest).unwrap_or_default();
            if applied_digest != diff_ids[i] {
                let remove = RemoveSnapshotRequest {
                    snapshotter: SNAPSHOTTER.into(),
                    key,
                };
                let _ = snapshots.remove(self.request(remove, Some(lease))).await;
                return Err(RuntimeError::Image {
                    image: layer.digest.clone(),
                    reason: format!(
                        "layer unpacked to {applied_digest}, expected diff ID {}",
                        diff_ids[i]
                    ),
                });
            }
            let commit = CommitSnapshotRequest {
                snapshotter: SNAPSHOTTER.into(),
                name: chain[i].clone(),
                key,
                labels: HashMap::new(),
            };
            match snapshots.commit(self.request(commit, Some(lease))).await {
                Ok(_) => {}
                Err(status) if status.code() == tonic::Code::AlreadyExists => {}
                Err(status) => return Err(rpc("commit snapshot", &chain[i])(status)),
            }
        }
        Ok(())
    }

    async fn snapshot_exists(&self, key: &str) -> Result<bool, RuntimeError> {
        let mut snapshots = SnapshotsClient::new(self.channel.clone());
        let stat = StatSnapshotRequest {
            snapshotter: SNAPSHOTTER.into(),
            key: key.into(),
        };
        match snapshots.stat(self.request(stat, None)).await {
            Ok(_) => Ok(true),
            Err(status) if status.code() == tonic::Code::NotFound => Ok(false),
            Err(status) => Err(rpc("stat snapshot", key)(status)),
        }
    }

    /// Looks `name` up in containerd and reads its config. The image must be
    /// present; its layers are unpacked if they are not yet.
    pub async fn resolve_image(&self, name: &str) -> Result<ResolvedImage, RuntimeError> {
        let mut images = ImagesClient::new(self.channel.clone());
        let image = images
            .get(self.request(GetImageRequest { name: name.into() }, None))
            .await
            .map_err(rpc("get image", name))?
            .into_inner()
            .image
            .and_then(|i| i.target)
            .ok_or_else(|| RuntimeError::Image {
                image: name.into(),
                reason: "image record has no target".into(),
            })?;
        let manifest = self.platform_manifest(name, &image).await?;
        let config_bytes = self.read_blob(manifest.config().digest().as_ref()).await?;
        let config = ImageConfiguration::from_reader(&config_bytes[..]).map_err(|e| {
            RuntimeError::Image {
                image: name.into(),
                reason: format!("unreadable image config: {e}"),
            }
        })?;
        let diff_ids = config.rootfs().diff_ids().clone();
        if diff_ids.len() != manifest.layers().len() {
            return Err(RuntimeError::Image {
                image: name.into(),
                reason: "layer count differs from the config's diff IDs".into(),
            });
        }
        let chain = chain_ids(&diff_ids);
        let chain_id = chain.last().cloned().ok_or_else(|| RuntimeError::Image {
            image: name.into(),
            reason: "image has no layers".into(),
        })?;
        if !self.snapshot_exists(&chain_id).await? {
            let layers: Vec<Descriptor> = manifest
                .layers()
                .iter()
                .map(|l| Descriptor {
                    media_type: l.media_type().to_string(),
                    digest: l.digest().to_string(),
                    size: l.size() as i64,
                    annotations: HashMap::new(),
                })
                .collect();
            let lease = self.create_lease("podkeeper-unpack").await?;
            let result = self.unpack_layers(&layers, &diff_ids, &lease).await;
            self.delete_lease(&lease).await;
            result?;
        }
        let process = config.config().clone().unwrap_or_default();
        Ok(ResolvedImage {
            name: name.into(),
            digest: image.digest,
            config: ImageConfig {
                entrypoint: process.entrypoint().clone().unwrap_or_default(),
                cmd: process.cmd().clone().unwrap_or_default(),
                env: process.env().clone().unwrap_or_default(),
                working_dir: process.working_dir().clone().unwrap_or_default(),
                user: process.user().clone().unwrap_or_default(),
            },
            chain_id,
        })
    }

    /// The manifest for this host's platform, following an index if needed.
    async fn platform_manifest(
        &self,
        name: &str,
        target: &Descriptor,
    ) -> Result<ImageManifest, RuntimeError> {
        let bad = |reason: String| RuntimeError::Image {
            image: name.into(),
            reason,
        };
        let bytes = self.read_blob(&target.digest).await?;
        if target.media_type.contains("index") || target.media_type.contains("manifest.list") {
            let index = ImageIndex::from_reader(&bytes[..])
                .map_err(|e| bad(format!("unreadable index: {e}")))?;
            let arch = pause::go_arch();
            let chosen = index
                .manifests()
                .iter()
                .find(|m| {
                    m.platform().as_ref().is_none_or(|p| {
                        p.os().to_string() == "linux" && p.architecture().to_string() == arch
                    })
                })
                .ok_or_else(|| bad(format!("no manifest for linux/{arch}")))?;
            let bytes = self.read_blob(chosen.digest().as_ref()).await?;
            return ImageManifest::from_reader(&bytes[..])
                .map_err(|e| bad(format!("unreadable manifest: {e}")));
        }
        ImageManifest::from_reader(&bytes[..]).map_err(|e| bad(format!("unreadable manifest: {e}")))
    }

    async fn read_blob(&self, digest: &str) -> Result<Vec<u8>, RuntimeError> {
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

    /// A lease that expires by itself in an hour should the agent die before
    /// deleting it.
    async fn create_lease(&self, purpose: &str) -> Result<String, RuntimeError> {
        let expires = jiff::Timestamp::now() + jiff::SignedDuration::from_hours(1);
        let id = format!("{purpose}-{}", jiff::Timestamp::now().as_nanosecond());
        let mut leases = LeasesClient::new(self.channel.clone());
        let request = CreateRequest {
            id: id.clone(),
            labels: HashMap::from([("containerd.io/gc.expire".into(), expires.to_string())]),
        };
        leases
            .create(self.request(request, None))
            .await
            .map_err(rpc("create lease", &id))?;
        Ok(id)
    }

    /// Releases a lease; a failure only delays garbage collection until the
    /// lease expires, so it is logged, not returned.
    async fn delete_lease(&self, id: &str) {
        let mut leases = LeasesClient::new(self.channel.clone());
        let request = DeleteRequest {
            id: id.into(),
            sync: false,
        };
        if let Err(status) = leases.delete(self.request(request, None)).await {
            tracing::warn!(lease = id, error = %status.message(), "could not delete lease; it expires by itself");
        }
    }
}

fn descriptor(blob: &Blob) -> Descriptor {
    Descriptor {
        media_type: blob.media_type.into(),
        digest: blob.digest.clone(),
        size: blob.data.len() as i64,
        annotations: HashMap::new(),
    }
}

/// OCI chain IDs: the first is the first diff ID, each next one
/// `sha256(previous + " " + diff_id)`.
pub fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut chain: Vec<String> = Vec::with_capacity(diff_ids.len());
    for diff_id in diff_ids {
        let next = match chain.last() {
            None => diff_id.clone(),
            Some(previous) => {
                let hash = Sha256::digest(format!("{previous} {diff_id}"));
                let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
                format!("sha256:{hex}")
            }
        };
        chain.push(next);
    }
    chain
}

#[cfg(test)]
mod tests {
    use super::chain_ids;

    #[test]
    fn chain_ids_follow_the_oci_definition() {
        let a = format!("sha256:{}", "a".repeat(64));
        let b = format!("sha256:{}", "b".repeat(64));
        let chain = chain_ids(&[a.clone(), b]);
        assert_eq!(chain[0], a);
        // sha256("sha256:aaa… sha256:bbb…"), computed independently with sha256sum.
        assert_eq!(
            chain[1],
            "sha256:ccd722928bd92476ba1745586fed6e45a102504185ad88cd89e01ff116fd146c"
        );
    }
}
