//! `read_archive` over archives made by real tools (examples/build-busybox-image.sh,
//! skopeo, gzip, zstd): the formats as they are written in the wild rather than
//! as our unit tests imagine them. No root and no containerd needed, but
//! skopeo, zstd and busybox-static must be installed: a missing tool fails the
//! test (CI installs them) rather than skipping it.

mod common;

use common::archives::{busybox_docker, busybox_oci, gzip, zstd};
use oci_spec::image::{ImageConfiguration, ImageManifest};
use podkeeper::images::archive::{read_archive, ArchiveImage, BlobSink};
use sha2::{Digest as _, Sha256};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Write as _};
use std::path::Path;

const REFERENCE: &str = "podkeeper.local/archive-test/busybox:1.0";

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(bytes))
}

/// Keeps every blob it is given, checking `expected` like the containerd sink does.
#[derive(Default)]
struct RecordingSink {
    blobs: HashMap<String, Vec<u8>>,
    /// (expected, digest) per call, in order.
    puts: Vec<(Option<String>, String)>,
}

impl BlobSink for RecordingSink {
    fn put(
        &mut self,
        expected: Option<&str>,
        size: u64,
        data: &mut dyn Read,
    ) -> Result<String, String> {
        let mut bytes = Vec::new();
        data.take(size)
            .read_to_end(&mut bytes)
            .map_err(|e| e.to_string())?;
        if bytes.len() as u64 != size {
            return Err(format!("got {} of {size} bytes", bytes.len()));
        }
        let digest = sha256(&bytes);
        if let Some(expected) = expected {
            if expected != digest {
                return Err(format!("expected {expected}, stored {digest}"));
            }
        }
        self.puts
            .push((expected.map(str::to_string), digest.clone()));
        self.blobs.insert(digest.clone(), bytes);
        Ok(digest)
    }
}

fn read(path: &Path) -> (Vec<ArchiveImage>, RecordingSink) {
    let mut sink = RecordingSink::default();
    let file = File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let images =
        read_archive(file, &mut sink).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    (images, sink)
}

/// Checks the image's manifest against what the sink stored: every blob there
/// with the listed size, and the config's diff ID equal to the uncompressed layer's digest.
/// Returns the manifest.
fn check_image(image: &ArchiveImage, sink: &RecordingSink) -> ImageManifest {
    assert_eq!(image.names, [REFERENCE]);
    let manifest_bytes = sink
        .blobs
        .get(&image.target.digest)
        .expect("the target manifest was stored");
    assert_eq!(manifest_bytes.len() as u64, image.target.size);
    let manifest = ImageManifest::from_reader(manifest_bytes.as_slice()).expect("manifest parses");
    assert_eq!(manifest.schema_version(), 2);

    let config_digest = manifest.config().digest().to_string();
    let config_bytes = sink.blobs.get(&config_digest).expect("config was stored");
    assert_eq!(config_bytes.len() as u64, manifest.config().size());
    let config = ImageConfiguration::from_reader(config_bytes.as_slice()).expect("config parses");

    assert_eq!(manifest.layers().len(), 1, "busybox has one layer");
    let layer = &manifest.layers()[0];
    let layer_bytes = sink
        .blobs
        .get(&layer.digest().to_string())
        .expect("layer was stored");
    assert_eq!(layer_bytes.len() as u64, layer.size());
    // Both writers keep the busybox layer uncompressed, so its digest is its diff ID.
    assert!(
        layer.media_type().to_string().ends_with(".tar")
            || layer.media_type().to_string().ends_with("diff.tar"),
        "{}",
        layer.media_type()
    );
    assert_eq!(config.rootfs().diff_ids()[0], sha256(layer_bytes));
    manifest
}

#[test]
fn busybox_oci_archive_plain_gzip_zstd() {
    let dir = tempfile::tempdir().unwrap();
    let plain = busybox_oci(dir.path(), REFERENCE).unwrap();
    let archives = [plain.clone(), gzip(&plain).unwrap(), zstd(&plain).unwrap()];
    for path in &archives {
        let (images, sink) = read(path);
        assert_eq!(images.len(), 1, "{}: {images:?}", path.display());
        let image = &images[0];
        assert_eq!(
            image.target.media_type,
            "application/vnd.oci.image.manifest.v1+json"
        );
        check_image(image, &sink);
        // Manifest, config, layer; all named in the archive, so all passed with their digest.
        assert_eq!(sink.puts.len(), 3, "{:?}", sink.puts);
        assert!(sink.puts.iter().all(|(e, d)| e.as_ref() == Some(d)));
    }
}

#[test]
fn busybox_docker_archive_plain_and_gzip() {
    let dir = tempfile::tempdir().unwrap();
    let docker = busybox_docker(dir.path(), REFERENCE).unwrap();
    let oci = busybox_oci(dir.path(), REFERENCE).unwrap();
    let (oci_images, oci_sink) = read(&oci);
    let oci_manifest =
        ImageManifest::from_reader(oci_sink.blobs[&oci_images[0].target.digest].as_slice())
            .unwrap();

    for path in [docker.clone(), gzip(&docker).unwrap()] {
        let (images, sink) = read(&path);
        assert_eq!(images.len(), 1, "{}: {images:?}", path.display());
        let image = &images[0];
        assert_eq!(
            image.target.media_type,
            "application/vnd.docker.distribution.manifest.v2+json"
        );
        let manifest = check_image(image, &sink);
        assert_eq!(
            manifest.media_type().as_ref().map(ToString::to_string),
            Some("application/vnd.docker.distribution.manifest.v2+json".to_string())
        );
        assert_eq!(
            manifest.config().media_type().to_string(),
            "application/vnd.docker.container.image.v1+json"
        );
        assert_eq!(
            manifest.layers()[0].media_type().to_string(),
            "application/vnd.docker.image.rootfs.diff.tar"
        );
        // skopeo copies config and layer bytes unchanged: same digests as the OCI original.
        assert_eq!(manifest.config().digest(), oci_manifest.config().digest());
        assert_eq!(
            manifest.layers()[0].digest(),
            oci_manifest.layers()[0].digest()
        );
        // Layer and config come by path (no digest); the synthesized manifest with its digest.
        // The `<id>/layer.tar` symlink, `<id>/json`, VERSION and repositories are not blobs.
        let expected: Vec<Option<&str>> = sink.puts.iter().map(|(e, _)| e.as_deref()).collect();
        assert_eq!(
            expected,
            [None, None, Some(image.target.digest.as_str())],
            "{:?}",
            sink.puts
        );
    }
}

// ---- memory ----------------------------------------------------------------------------------

/// Counts the bytes allocated on the current thread while tracking is on, so
/// a test can see how much memory `read_archive` itself holds at its peak.
struct TrackingAllocator;

thread_local! {
    static TRACKING: Cell<bool> = const { Cell::new(false) };
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn note(delta: isize) {
    // try_with: allocations also happen while thread-locals are torn down.
    let _ = TRACKING.try_with(|tracking| {
        if tracking.get() {
            LIVE.with(|live| {
                live.set(live.get() + delta);
                PEAK.with(|peak| peak.set(peak.get().max(live.get())));
            });
        }
    });
}

// SAFETY: every call is forwarded unchanged to the system allocator; the
// bookkeeping only touches const-initialized thread-locals, which never allocate.
unsafe impl GlobalAlloc for TrackingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            note(layout.size() as isize);
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let ptr = unsafe { System.alloc_zeroed(layout) };
        if !ptr.is_null() {
            note(layout.size() as isize);
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        note(-(layout.size() as isize));
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        if !new.is_null() {
            note(new_size as isize - layout.size() as isize);
        }
        new
    }
}

#[global_allocator]
static ALLOCATOR: TrackingAllocator = TrackingAllocator;

/// Peak bytes allocated (and not yet freed) on this thread while `f` runs.
fn peak_allocated<T>(f: impl FnOnce() -> T) -> (T, isize) {
    LIVE.with(|l| l.set(0));
    PEAK.with(|p| p.set(0));
    TRACKING.with(|t| t.set(true));
    let out = f();
    TRACKING.with(|t| t.set(false));
    (out, PEAK.with(Cell::get))
}

/// Hashes blobs as they stream, keeping nothing.
struct HashingSink;

impl BlobSink for HashingSink {
    fn put(&mut self, _: Option<&str>, size: u64, data: &mut dyn Read) -> Result<String, String> {
        let mut hasher = Sha256::new();
        let n = io::copy(&mut data.take(size), &mut hasher).map_err(|e| e.to_string())?;
        if n != size {
            return Err(format!("got {n} of {size} bytes"));
        }
        Ok(format!("sha256:{:x}", hasher.finalize()))
    }
}

/// A 64 MiB layer goes through `read_archive` (plain, gzip, zstd) while
/// the reader's own allocations stay a few MiB: layers are streamed, never held.
#[test]
fn big_layer_is_not_held_in_memory() {
    const BIG: u64 = 64 << 20;
    /// Room for buffers and the small JSON files, a sixteenth of the layer. libzstd allocates
    /// its window with C malloc, which this count does not see; the decoders' Rust-side
    /// buffers (flate2's window, tar, io::copy) are counted.
    const LIMIT: isize = 4 << 20;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.tar");
    let mut hasher = Sha256::new();
    io::copy(&mut io::repeat(7).take(BIG), &mut hasher).unwrap();
    let layer_digest = format!("sha256:{:x}", hasher.finalize());
    let config = format!(
        r#"{{"architecture":"amd64","os":"linux","rootfs":{{"type":"layers","diff_ids":["{layer_digest}"]}}}}"#
    );
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":{}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{layer_digest}","size":{BIG}}}]}}"#,
        sha256(config.as_bytes()),
        config.len()
    );
    let index = format!(
        r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{}","size":{},"annotations":{{"io.containerd.image.name":"{REFERENCE}"}}}}]}}"#,
        sha256(manifest.as_bytes()),
        manifest.len()
    );
    {
        let blob = |digest: &str| format!("blobs/sha256/{}", &digest["sha256:".len()..]);
        let mut tar = tar::Builder::new(io::BufWriter::new(File::create(&path).unwrap()));
        let mut header = tar::Header::new_gnu();
        header.set_mode(0o644);
        header.set_size(BIG);
        tar.append_data(&mut header, blob(&layer_digest), io::repeat(7).take(BIG))
            .unwrap();
        for (name, bytes) in [
            (blob(&sha256(config.as_bytes())), &config),
            (blob(&sha256(manifest.as_bytes())), &manifest),
            ("index.json".to_string(), &index),
        ] {
            header.set_size(bytes.len() as u64);
            tar.append_data(&mut header, name, bytes.as_bytes())
                .unwrap();
        }
        tar.into_inner().unwrap().flush().unwrap();
    }
    for archive in [path.clone(), gzip(&path).unwrap(), zstd(&path).unwrap()] {
        let file = File::open(&archive).unwrap();
        let (images, peak) = peak_allocated(|| read_archive(file, &mut HashingSink));
        let images = images.unwrap();
        assert_eq!(images.len(), 1);
        assert_eq!(images[0].names, [REFERENCE]);
        eprintln!("{}: peak {peak} bytes allocated", archive.display());
        assert!(
            peak < LIMIT,
            "{}: read_archive held {peak} bytes at its peak for a {BIG}-byte layer",
            archive.display()
        );
    }
}
