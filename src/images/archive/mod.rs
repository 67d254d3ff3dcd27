//! Image archives an operator drops on a node (air-gapped sites): OCI image
//! layouts (`skopeo copy … oci-archive:`, `examples/build-busybox-image.sh`)
//! and `docker save` tars, both the legacy layout (`manifest.json`,
//! `<id>/layer.tar`) and the Docker 25+ one (an OCI layout that also carries a
//! `manifest.json`), each plain, gzip- or zstd-compressed.
//!
//! The archive is read exactly once, as a stream, because it may be gigabytes
//! and may come from a pipe: a tar is sequential and `index.json` or
//! `manifest.json` often comes after the blobs it describes, so every regular
//! file is handed to a [`BlobSink`] while it streams past (the importer writes
//! it to containerd's content store) and only small JSON files are also kept in
//! memory, to be parsed once the pass is over. Only then are the images worked
//! out and checked for completeness; a blob that no image uses has simply been
//! stored for nothing, which containerd's garbage collector takes care of.

use std::collections::HashMap;
use std::io::{self, Read};

mod bounds;
mod docker;
mod oci;
mod tar_reader;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_bounds;

use docker::docker_images;
use oci::oci_images;
use tar_reader::{normalize_path, read_contents, Compression};

/// An OCI content descriptor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobDescriptor {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
}

/// Where blobs go; the importer implements it over containerd's content store.
pub trait BlobSink {
    /// Stores one blob, reading exactly `size` bytes from `data`. `expected` is the digest when the
    /// archive names it (`blobs/sha256/<hex>`), `None` for legacy docker paths. Returns the
    /// `sha256:<hex>` digest of what was stored; the sink verifies `expected` and fails on mismatch.
    fn put(
        &mut self,
        expected: Option<&str>,
        size: u64,
        data: &mut dyn Read,
    ) -> Result<String, String>;
}

/// One image found in an archive. Every blob it references has been passed to the sink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveImage {
    /// Names as written in the archive (not normalized): OCI `io.containerd.image.name`, else
    /// `org.opencontainers.image.ref.name` if it is a full reference (contains '/' or ':' before any tag
    /// — a bare tag like "latest" or "1.0" is NOT a name); docker `RepoTags`. May be empty.
    pub names: Vec<String>,
    /// The manifest or index to register as the image's target.
    pub target: BlobDescriptor,
}

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// Reading failed, including truncation (then the kind is `UnexpectedEof`).
    #[error("reading the archive: {0}")]
    Io(#[from] io::Error),
    /// No `index.json` nor `manifest.json`, or not a tar at all.
    #[error("not an image archive: {0}")]
    NotAnArchive(String),
    /// Bad JSON, a missing referenced blob (named), a digest or size mismatch...
    #[error("{0}")]
    Invalid(String),
    /// The sink refused a blob. `digest` is the blob's digest when the archive names it, else its
    /// path in the archive (legacy docker layers and configs are only hashed by the sink).
    #[error("storing blob {digest}: {message}")]
    Sink { digest: String, message: String },
}

/// Reads the whole archive once, passing blobs to `sink`, and returns the images it holds.
pub fn read_archive(
    input: impl Read,
    sink: &mut dyn BlobSink,
) -> Result<Vec<ArchiveImage>, ArchiveError> {
    let contents = read_contents(input, sink)?;
    let has_docker_manifest = contents.files.contains_key(DOCKER_MANIFEST_JSON);
    if contents.files.contains_key(INDEX_JSON) {
        match oci_images(&contents)? {
            // Docker 25+ lists only tagged images in index.json: `docker save <id>` leaves it
            // empty, and the image is then only in manifest.json.
            images if images.is_empty() && has_docker_manifest => docker_images(&contents, sink),
            images if images.is_empty() => Err(ArchiveError::Invalid(format!(
                "{INDEX_JSON} lists no images"
            ))),
            images => Ok(images),
        }
    } else if has_docker_manifest {
        docker_images(&contents, sink)
    } else {
        Err(ArchiveError::NotAnArchive(format!(
            "no {INDEX_JSON} nor {DOCKER_MANIFEST_JSON} in the archive ({} entries)",
            contents.entries
        )))
    }
}

/// A blob or JSON file larger than this is never kept in memory: manifests and
/// configs are a few KiB, and anything bigger is a layer.
const MAX_CACHED_ENTRY: u64 = 1 << 20;
/// Total memory for kept files, so that an archive of many small layers that
/// happen to start with `{` cannot make the agent grow without bound.
const MAX_CACHED_TOTAL: u64 = 64 << 20;
/// `index.json` and `manifest.json` list every image of the archive, so they
/// may be bigger than a single manifest; they count towards the total too.
const MAX_METADATA: u64 = 16 << 20;
/// How many symlinks/hardlinks a path may go through, like the kernel's ELOOP.
const MAX_LINK_HOPS: usize = 40;
/// How deep indexes may nest; real ones nest once (skopeo multi-arch), this only stops cycles.
const MAX_INDEX_DEPTH: usize = 8;
/// Bytes peeked at the start of every file: enough for compression magic and JSON sniffing.
const PEEK: usize = 16;

const INDEX_JSON: &str = "index.json";
const DOCKER_MANIFEST_JSON: &str = "manifest.json";

/// Annotation containerd writes (and `ctr import` reads) for the full image name.
const ANNOTATION_CONTAINERD_NAME: &str = "io.containerd.image.name";
/// OCI annotation that holds either a full reference or just a tag.
const ANNOTATION_OCI_REF_NAME: &str = "org.opencontainers.image.ref.name";

/// A regular file of the archive after the pass.
#[derive(Debug)]
struct FileInfo {
    size: u64,
    /// Set when the file went to the sink: the digest the sink stored it under.
    digest: Option<String>,
    compression: Compression,
    /// The bytes, for small JSON files.
    cached: Option<Vec<u8>>,
}

/// Everything the single pass learned about the archive.
#[derive(Debug, Default)]
struct Contents {
    /// Regular files by normalized path.
    files: HashMap<String, FileInfo>,
    /// Symlinks and hardlinks: normalized path → normalized target path.
    links: HashMap<String, String>,
    /// Stored blobs: digest → path. A blob named `blobs/<alg>/<hex>` is listed
    /// under that name and under the sha256 the sink returned.
    by_digest: HashMap<String, String>,
    /// Bytes kept in memory, for the limit and for the memory test.
    cached_bytes: u64,
    /// Set once a file was not kept because of [`MAX_CACHED_TOTAL`], to explain a later failure.
    cache_full: bool,
    /// Number of tar entries, for error messages.
    entries: usize,
}

impl Contents {
    /// The regular file at `path`, following links.
    fn resolve(&self, path: &str) -> Option<(&str, &FileInfo)> {
        let mut path = normalize_path(path);
        for _ in 0..=MAX_LINK_HOPS {
            if let Some((key, info)) = self.files.get_key_value(&path) {
                return Some((key, info));
            }
            path = self.links.get(&path)?.clone();
        }
        None
    }

    /// The stored blob with `digest`.
    fn blob(&self, digest: &str) -> Option<&FileInfo> {
        self.files.get(self.by_digest.get(digest)?)
    }

    /// The kept bytes of `info`, or why they were not kept.
    fn bytes<'a>(&self, info: &'a FileInfo, what: &str) -> Result<&'a [u8], String> {
        match &info.cached {
            Some(bytes) => Ok(bytes),
            None if info.size > MAX_CACHED_ENTRY => Err(format!(
                "{what} is {} bytes, larger than the {MAX_CACHED_ENTRY} bytes allowed for a manifest or config",
                info.size
            )),
            None if self.cache_full => Err(format!(
                "{what} was not kept in memory: the archive's small files exceed {MAX_CACHED_TOTAL} bytes"
            )),
            None => Err(format!("{what} is not JSON")),
        }
    }
}
