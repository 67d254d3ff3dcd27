//! The built-in pause image: a one-layer OCI image holding only the static
//! pause program compiled into this binary, so a node needs no registry to
//! run pods.

use crate::images::digest::sha256_digest;
use crate::images::media_types::{
    MEDIA_TYPE_OCI_CONFIG, MEDIA_TYPE_OCI_LAYER, MEDIA_TYPE_OCI_MANIFEST,
};
use crate::images::platform;

/// The static pause executable, built from `pause/pause.c` by build.rs.
pub const PAUSE_BINARY: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/pause"));

/// Name of the built-in image; versioned so an upgraded agent brings its own.
pub fn image_name() -> String {
    format!("{REPOSITORY}:{}", crate::VERSION)
}

/// Repository of the built-in image. Every name in it is podkeeper's own:
/// an archive or registry that could put an image there would choose what
/// runs in every pod's sandbox.
const REPOSITORY: &str = "podkeeper.local/pause";

/// Whether a normalized image name is in the built-in image's repository,
/// whatever its tag or digest.
pub fn is_reserved(name: &str) -> bool {
    name.strip_prefix(REPOSITORY)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with([':', '@']))
}

/// One content-addressed blob of an image.
#[derive(Debug, Clone)]
pub struct Blob {
    pub media_type: &'static str,
    pub digest: String,
    pub data: Vec<u8>,
}

impl Blob {
    fn new(media_type: &'static str, data: Vec<u8>) -> Blob {
        Blob {
            media_type,
            digest: sha256_digest(&data),
            data,
        }
    }
}

/// A whole image, ready to be written to a content store: children first.
#[derive(Debug, Clone)]
pub struct ImageBlobs {
    pub layer: Blob,
    pub config: Blob,
    pub manifest: Blob,
}

/// Builds the pause image. Deterministic: the same agent version always
/// yields the same digests, so a restart finds the image it made before.
pub fn image_blobs() -> std::io::Result<ImageBlobs> {
    let layer = Blob::new(MEDIA_TYPE_OCI_LAYER, layer_tar(PAUSE_BINARY)?);
    let config = serde_json::json!({
        "architecture": platform::host().0,
        "os": "linux",
        "config": { "Entrypoint": ["/pause"] },
        "rootfs": { "type": "layers", "diff_ids": [layer.digest] },
    });
    let config = Blob::new(MEDIA_TYPE_OCI_CONFIG, serde_json::to_vec(&config)?);
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_TYPE_OCI_MANIFEST,
        "config": { "mediaType": config.media_type, "digest": config.digest, "size": config.data.len() },
        "layers": [{ "mediaType": layer.media_type, "digest": layer.digest, "size": layer.data.len() }],
    });
    let manifest = Blob::new(MEDIA_TYPE_OCI_MANIFEST, serde_json::to_vec(&manifest)?);
    Ok(ImageBlobs {
        layer,
        config,
        manifest,
    })
}

/// An uncompressed tar with `/pause`, so its digest is also its diff ID.
fn layer_tar(binary: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut builder = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(binary.len() as u64);
    header.set_mode(0o755);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header.set_entry_type(tar::EntryType::Regular);
    builder.append_data(&mut header, "pause", binary)?;
    builder.into_inner()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pause_image_is_deterministic_and_self_consistent() {
        let a = image_blobs().unwrap();
        let b = image_blobs().unwrap();
        assert_eq!(a.manifest.digest, b.manifest.digest);
        let manifest: serde_json::Value = serde_json::from_slice(&a.manifest.data).unwrap();
        assert_eq!(manifest["config"]["digest"], a.config.digest);
        assert_eq!(manifest["layers"][0]["digest"], a.layer.digest);
        let config: serde_json::Value = serde_json::from_slice(&a.config.data).unwrap();
        assert_eq!(config["rootfs"]["diff_ids"][0], a.layer.digest);
        assert_eq!(config["config"]["Entrypoint"][0], "/pause");
    }

    #[test]
    fn the_layer_holds_the_static_pause_binary() {
        let blobs = image_blobs().unwrap();
        let mut archive = tar::Archive::new(&blobs.layer.data[..]);
        let entries: Vec<_> = archive
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.path().unwrap().display().to_string(),
                    e.header().mode().unwrap(),
                    e.size(),
                )
            })
            .collect();
        assert_eq!(
            entries,
            [("pause".to_string(), 0o755, PAUSE_BINARY.len() as u64)]
        );
        assert_eq!(&PAUSE_BINARY[..4], b"\x7fELF");
    }

    #[test]
    fn the_whole_repository_is_reserved() {
        for name in [
            image_name(),
            "podkeeper.local/pause:0.0.1".into(),
            "podkeeper.local/pause@sha256:abc".into(),
            "podkeeper.local/pause".into(),
        ] {
            assert!(is_reserved(&name), "{name}");
        }
        for name in [
            "podkeeper.local/pauser:1",
            "docker.io/library/pause:3.9",
            "registry.k8s.io/pause:3.9",
        ] {
            assert!(!is_reserved(name), "{name}");
        }
    }

    #[test]
    fn the_image_name_carries_the_version() {
        assert_eq!(
            image_name(),
            format!("podkeeper.local/pause:{}", crate::VERSION)
        );
    }
}
