//! OCI archives of made-up images: one layer holding a file of
//! pseudo-random (incompressible) bytes. For tests that need an image with
//! content of its own, and for benchmarks that need a large one.

use std::io::{Read, Write};
use std::path::Path;

use anyhow::Result;
use sha2::{Digest, Sha256};

/// Writes an OCI image-layout archive named `reference` whose single
/// uncompressed layer holds `/data.bin` with `size` bytes from `seed`.
pub fn data_image_archive(out: &Path, reference: &str, size: u64, seed: u64) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let layer_path = dir.path().join("layer.tar");
    {
        let file = std::fs::File::create(&layer_path)?;
        let mut layer = tar::Builder::new(std::io::BufWriter::new(file));
        let mut header = tar::Header::new_gnu();
        header.set_size(size);
        header.set_mode(0o644);
        header.set_mtime(0);
        header.set_entry_type(tar::EntryType::Regular);
        layer.append_data(
            &mut header,
            "data.bin",
            Noise { state: seed | 1 }.take(size),
        )?;
        layer.into_inner()?.flush()?;
    }
    let (layer_digest, layer_size) = file_digest(&layer_path)?;
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": podkeeper::images::platform::host().0,
        "os": "linux",
        "config": {"Cmd": ["/data.bin"]},
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
    }))?;
    let config_digest = digest(&config);
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_digest, "size": layer_size}],
    }))?;
    let manifest_digest = digest(&manifest);
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest,
            "size": manifest.len(),
            "annotations": {"io.containerd.image.name": reference, "org.opencontainers.image.ref.name": reference},
        }],
    }))?;
    let mut archive = tar::Builder::new(std::io::BufWriter::new(std::fs::File::create(out)?));
    let mut add = |name: &str, data: &[u8]| -> Result<()> {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_entry_type(tar::EntryType::Regular);
        archive.append_data(&mut header, name, data)?;
        Ok(())
    };
    add("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    add(&blob_path(&config_digest), &config)?;
    add(&blob_path(&manifest_digest), &manifest)?;
    add("index.json", &index)?;
    let mut header = tar::Header::new_gnu();
    header.set_size(layer_size);
    header.set_mode(0o644);
    header.set_entry_type(tar::EntryType::Regular);
    archive.append_data(
        &mut header,
        blob_path(&layer_digest),
        std::fs::File::open(&layer_path)?,
    )?;
    archive.into_inner()?.flush()?;
    Ok(())
}

fn blob_path(digest: &str) -> String {
    format!("blobs/sha256/{}", digest.trim_start_matches("sha256:"))
}

fn digest(data: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(data))
}

fn file_digest(path: &Path) -> Result<(String, u64)> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let size = std::io::copy(&mut file, &mut hasher)?;
    Ok((format!("sha256:{:x}", hasher.finalize()), size))
}

/// xorshift64: cheap bytes no compressor can shrink.
struct Noise {
    state: u64,
}

impl Read for Noise {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        for chunk in buf.chunks_mut(8) {
            self.state ^= self.state << 13;
            self.state ^= self.state >> 7;
            self.state ^= self.state << 17;
            let bytes = self.state.to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
        Ok(buf.len())
    }
}
