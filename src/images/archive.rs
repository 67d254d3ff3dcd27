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

use super::media_types::{
    self, MEDIA_TYPE_DOCKER_CONFIG, MEDIA_TYPE_DOCKER_LAYER, MEDIA_TYPE_DOCKER_LAYER_GZIP,
    MEDIA_TYPE_DOCKER_MANIFEST, MEDIA_TYPE_OCI_INDEX, MEDIA_TYPE_OCI_LAYER_ZSTD,
    MEDIA_TYPE_OCI_MANIFEST,
};
use super::platform;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use std::cell::Cell;
use std::collections::HashMap;
use std::io::{self, Cursor, Read};
use std::rc::Rc;

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

/// Compression recognized by magic bytes, for the archive as a whole and for each legacy layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Compression {
    Plain,
    Gzip,
    Zstd,
}

impl Compression {
    fn detect(head: &[u8]) -> Self {
        if head.starts_with(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else {
            Compression::Plain
        }
    }
}

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
    /// Symlinks and hardlinks: normalized path → normalized target path (or
    /// `None` when the target escapes the archive root).
    links: HashMap<String, Option<String>>,
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
            path = self.links.get(&path)?.clone()?;
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

/// Remembers whether a reader has reported end of input, so that an error seen
/// afterwards can be reported as truncation.
struct EofTracker<R> {
    inner: R,
    eof: Rc<Cell<bool>>,
}

impl<R: Read> Read for EofTracker<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 && !buf.is_empty() {
            self.eof.set(true);
        }
        Ok(n)
    }
}

const TRUNCATED: &str = "archive ended early (truncated?)";

/// The error for data missing at the end of the input. A type of its own, so
/// that [`read_error`] passes it on instead of wrapping it again.
#[derive(Debug)]
struct Truncated(String);

impl std::fmt::Display for Truncated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{TRUNCATED}: {}", self.0)
    }
}

impl std::error::Error for Truncated {}

fn truncated(detail: String) -> io::Error {
    io::Error::new(io::ErrorKind::UnexpectedEof, Truncated(detail))
}

/// Turns an error of the decompressor or the tar reader into the error
/// reported: once the decompressed stream has ended, or when the decompressor
/// itself hit the end of its input, whatever failed failed because data was missing.
fn read_error(e: io::Error, tar_eof: &Cell<bool>) -> ArchiveError {
    let ours = e.get_ref().is_some_and(|inner| inner.is::<Truncated>());
    if !ours && (tar_eof.get() || e.kind() == io::ErrorKind::UnexpectedEof) {
        ArchiveError::Io(truncated(e.to_string()))
    } else {
        ArchiveError::Io(e)
    }
}

/// Reads until `buf` is full or the input ends; returns how much was read.
fn read_full(r: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// The single pass: detects compression, checks that the data is a tar, and
/// hands every regular file to the sink.
fn read_contents(input: impl Read, sink: &mut dyn BlobSink) -> Result<Contents, ArchiveError> {
    let tar_eof = Rc::new(Cell::new(false));
    let mut input = input;
    let mut magic = [0u8; 4];
    let n = read_full(&mut input, &mut magic).map_err(|e| read_error(e, &tar_eof))?;
    if n == 0 {
        return Err(ArchiveError::NotAnArchive("the input is empty".into()));
    }
    let compression = Compression::detect(&magic[..n]);
    let raw = Cursor::new(magic[..n].to_vec()).chain(input);
    let mut decompressed: Box<dyn Read + '_> = match compression {
        Compression::Plain => Box::new(raw),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(raw)),
        Compression::Zstd => {
            Box::new(zstd::Decoder::new(raw).map_err(|e| read_error(e, &tar_eof))?)
        }
    };

    // Checking the first header ourselves tells "not a tar" apart from a tar
    // that is damaged further on, which the tar crate reports alike.
    let mut block = [0u8; 512];
    let n = read_full(&mut decompressed, &mut block).map_err(|e| read_error(e, &tar_eof))?;
    let what = match compression {
        Compression::Plain => "the input",
        Compression::Gzip => "the gzip-compressed data",
        Compression::Zstd => "the zstd-compressed data",
    };
    if n == 0 {
        return Err(ArchiveError::NotAnArchive(format!("{what} is empty")));
    }
    if n < block.len() {
        return Err(ArchiveError::NotAnArchive(format!(
            "{what} is not a tar archive (only {n} bytes)"
        )));
    }
    if block.iter().all(|&b| b == 0) {
        return Err(ArchiveError::NotAnArchive(format!(
            "{what} is an empty tar archive"
        )));
    }
    if !tar_checksum_ok(&block) {
        return Err(ArchiveError::NotAnArchive(format!(
            "{what} is not a tar archive (no valid tar header at the start)"
        )));
    }

    let tar_input = EofTracker {
        inner: Cursor::new(block.to_vec()).chain(decompressed),
        eof: Rc::clone(&tar_eof),
    };
    let mut archive = tar::Archive::new(tar_input);
    let mut contents = Contents::default();
    let entries = archive.entries().map_err(|e| read_error(e, &tar_eof))?;
    for entry in entries {
        let entry = entry.map_err(|e| read_error(e, &tar_eof))?;
        contents.entries += 1;
        read_entry(entry, &mut contents, sink, &tar_eof)?;
    }
    // The tar reader also stops, without error, when the input ends exactly
    // between two entries; only the end-of-archive block proves nothing is missing.
    if tar_eof.get() {
        return Err(ArchiveError::Io(truncated(format!(
            "no end-of-archive marker after {} entries",
            contents.entries
        ))));
    }
    Ok(contents)
}

/// Whether a 512-byte block is a tar header: its checksum field matches the
/// sum of its bytes with that field counted as spaces (unsigned, or signed as
/// some old tars computed it).
fn tar_checksum_ok(block: &[u8; 512]) -> bool {
    let field = &block[148..156];
    let digits: String = field
        .iter()
        .map(|&b| b as char)
        .take_while(|c| *c != '\0')
        .filter(|c| !c.is_ascii_whitespace())
        .collect();
    let Ok(recorded) = u64::from_str_radix(&digits, 8) else {
        return false;
    };
    let (mut unsigned, mut signed) = (0u64, 0i64);
    for (i, &b) in block.iter().enumerate() {
        let b = if (148..156).contains(&i) { b' ' } else { b };
        unsigned += u64::from(b);
        signed += i64::from(b as i8);
    }
    recorded == unsigned || i64::try_from(recorded).is_ok_and(|r| r == signed)
}

/// Paths are compared after dropping `.` components, empty components and a
/// leading `/`, so `./blobs/sha256/x` and `blobs/sha256/x` are the same file.
/// `..` is resolved; a path that climbs above the root keeps its `..` and so matches nothing.
fn normalize_path(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." if parts.last().is_some_and(|p| *p != "..") => {
                parts.pop();
            }
            _ => parts.push(part),
        }
    }
    parts.join("/")
}

/// Where a link entry points, as a normalized archive path. Symlink targets are
/// relative to the link's directory unless absolute; hardlink targets are
/// relative to the archive root. `None` when the target leaves the archive.
fn link_target(link_path: &str, target: &str, symlink: bool) -> Option<String> {
    let joined = if symlink && !target.starts_with('/') {
        match link_path.rsplit_once('/') {
            Some((dir, _)) => format!("{dir}/{target}"),
            None => target.to_string(),
        }
    } else {
        target.to_string()
    };
    let normalized = normalize_path(&joined);
    (!normalized.split('/').any(|p| p == "..")).then_some(normalized)
}

/// What a regular file of the archive is, by its path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// Possibly referenced by an image: goes to the sink (and is kept if small JSON).
    Blob,
    /// `index.json` or `manifest.json`: kept in memory, never a blob.
    Listing,
    /// Layout metadata nothing refers to: read past.
    Ignored,
}

fn role(path: &str) -> Role {
    match path {
        INDEX_JSON | DOCKER_MANIFEST_JSON => Role::Listing,
        "oci-layout" | "repositories" => Role::Ignored,
        _ => match path.split_once('/') {
            // Legacy docker layer directories: `<id>/json` (v1 image JSON) and `<id>/VERSION`.
            Some((dir, "json" | "VERSION")) if !dir.contains('/') => Role::Ignored,
            _ => Role::Blob,
        },
    }
}

/// The digest an OCI layout path names, if it is `blobs/<alg>/<hex>` with a
/// well-formed hex for a known algorithm.
fn digest_from_path(path: &str) -> Option<String> {
    let rest = path.strip_prefix("blobs/")?;
    let (alg, hex) = rest.split_once('/')?;
    let len = match alg {
        "sha256" => 64,
        "sha384" => 96,
        "sha512" => 128,
        _ => return None,
    };
    let valid = hex.len() == len && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    valid.then(|| format!("{alg}:{hex}"))
}

fn is_sha256_digest(digest: &str) -> bool {
    digest.strip_prefix("sha256:").is_some_and(|hex| {
        hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    })
}

fn sha256_digest(bytes: &[u8]) -> String {
    let hash = Sha256::digest(bytes);
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256:");
    for b in hash {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// The data of one tar entry as the sink sees it: never more than the size in
/// the header, an error instead of a short read when the archive ends early,
/// and a copy of the bytes when the file is to be kept.
struct EntryData<'a> {
    inner: &'a mut dyn Read,
    path: &'a str,
    size: u64,
    delivered: u64,
    cache: Option<Vec<u8>>,
    /// The first error returned to the reader: the sink may turn it into a
    /// string, and the pass must still report it as a read error.
    failure: Option<io::Error>,
}

impl Read for EntryData<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.size - self.delivered;
        if left == 0 || buf.is_empty() {
            return Ok(0);
        }
        let max = usize::try_from(left).map_or(buf.len(), |left| left.min(buf.len()));
        let result = match self.inner.read(&mut buf[..max]) {
            Ok(0) => Err(truncated(format!(
                "{} holds {} of its {} bytes",
                self.path, self.delivered, self.size
            ))),
            other => other,
        };
        match result {
            Ok(n) => {
                self.delivered += n as u64;
                if let Some(cache) = &mut self.cache {
                    cache.extend_from_slice(&buf[..n]);
                }
                Ok(n)
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Err(e),
            Err(e) => {
                let copy = io::Error::new(e.kind(), e.to_string());
                self.failure.get_or_insert(e);
                Err(copy)
            }
        }
    }
}

/// Handles one tar entry: links are recorded, metadata is kept or skipped,
/// every other regular file is streamed to the sink.
fn read_entry<R: Read>(
    mut entry: tar::Entry<'_, R>,
    contents: &mut Contents,
    sink: &mut dyn BlobSink,
    tar_eof: &Cell<bool>,
) -> Result<(), ArchiveError> {
    let path = normalize_path(&String::from_utf8_lossy(&entry.path_bytes()));
    let kind = entry.header().entry_type();
    if kind.is_symlink() || kind.is_hard_link() {
        if let Some(target) = entry.link_name_bytes() {
            let target = link_target(&path, &String::from_utf8_lossy(&target), kind.is_symlink());
            contents.links.insert(path, target);
        }
        return Ok(());
    }
    if !matches!(
        kind,
        tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse
    ) || path.is_empty()
    {
        // Directories, devices, PAX/GNU extension records the tar crate did not fold in:
        // nothing an image refers to. Their data is skipped by the tar reader.
        return Ok(());
    }
    let size = entry.size();
    let role = role(&path);

    let mut head = [0u8; PEEK];
    let want = usize::try_from(size).map_or(PEEK, |s| s.min(PEEK));
    let got = read_full(&mut entry, &mut head[..want]).map_err(|e| read_error(e, tar_eof))?;
    if got < want {
        return Err(ArchiveError::Io(truncated(format!(
            "{path} holds {got} of its {size} bytes"
        ))));
    }
    let head = &head[..got];

    let keep = match role {
        Role::Listing if size > MAX_METADATA => {
            return Err(ArchiveError::Invalid(format!(
                "{path} is {size} bytes, larger than the {MAX_METADATA} bytes allowed"
            )));
        }
        Role::Listing => true,
        Role::Ignored => false,
        Role::Blob => size <= MAX_CACHED_ENTRY && looks_like_json(head),
    };
    let keep = keep && {
        let fits = contents.cached_bytes + size <= MAX_CACHED_TOTAL;
        contents.cache_full |= !fits;
        fits
    };
    // `size` is at most MAX_METADATA here, so it fits in memory and in usize.
    let cache = keep.then(|| Vec::with_capacity(usize::try_from(size).unwrap_or(0)));

    let expected = digest_from_path(&path);
    let (digest, cache) = if role != Role::Blob {
        // Not a blob: keep it or read past it. The peeked bytes are no longer in `entry`.
        let mut data = EntryData {
            inner: &mut entry,
            path: &path,
            size,
            delivered: head.len() as u64,
            cache: cache.map(|mut v| {
                v.extend_from_slice(head);
                v
            }),
            failure: None,
        };
        let drained = io::copy(&mut data, &mut io::sink());
        if let Some(failure) = data.failure.take() {
            return Err(read_error(failure, tar_eof));
        }
        drained.map_err(|e| read_error(e, tar_eof))?;
        (None, data.cache)
    } else {
        let mut rest = Cursor::new(head).chain(&mut entry);
        let mut data = EntryData {
            inner: &mut rest,
            path: &path,
            size,
            delivered: 0,
            cache,
            failure: None,
        };
        let stored = sink.put(expected.as_deref(), size, &mut data);
        if let Some(failure) = data.failure.take() {
            return Err(read_error(failure, tar_eof));
        }
        let name = expected.clone().unwrap_or_else(|| path.clone());
        let digest = stored.map_err(|message| ArchiveError::Sink {
            digest: name.clone(),
            message,
        })?;
        if data.delivered != size {
            return Err(ArchiveError::Sink {
                digest: name,
                message: format!(
                    "the sink read {} of the {size} bytes it was given",
                    data.delivered
                ),
            });
        }
        if !is_sha256_digest(&digest) {
            return Err(ArchiveError::Sink {
                digest: name,
                message: format!("the sink returned {digest:?}, which is not a sha256 digest"),
            });
        }
        if let Some(expected) = expected.as_deref().filter(|e| e.starts_with("sha256:")) {
            if expected != digest {
                return Err(ArchiveError::Invalid(format!(
                    "digest mismatch: {path} holds content with digest {digest}"
                )));
            }
        }
        if let Some(bytes) = &data.cache {
            // The kept copy is what the manifests will be parsed from: it must be what was stored.
            let ours = sha256_digest(bytes);
            if ours != digest {
                return Err(ArchiveError::Sink {
                    digest: name,
                    message: format!(
                        "the sink returned {digest} for content whose digest is {ours}"
                    ),
                });
            }
        }
        (Some(digest), data.cache)
    };

    if let Some(bytes) = &cache {
        contents.cached_bytes += bytes.len() as u64;
    }
    if let Some(digest) = &digest {
        contents.by_digest.insert(digest.clone(), path.clone());
        if let Some(named) = expected {
            contents.by_digest.insert(named, path.clone());
        }
    }
    contents.links.remove(&path);
    contents.files.insert(
        path,
        FileInfo {
            size,
            digest,
            compression: Compression::detect(head),
            cached: cache,
        },
    );
    Ok(())
}

/// Manifests, indexes and configs are JSON objects; layers start with a tar
/// header or compression magic. Only JSON is worth keeping in memory.
fn looks_like_json(head: &[u8]) -> bool {
    match head.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b) => matches!(b, b'{' | b'['),
        None => false,
    }
}

// ---- OCI layout --------------------------------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Descriptor {
    #[serde(default)]
    media_type: Option<String>,
    digest: String,
    size: u64,
    #[serde(default)]
    annotations: HashMap<String, String>,
    #[serde(default)]
    urls: Vec<String>,
    #[serde(default)]
    platform: Option<Platform>,
}

/// Read leniently (fields may be missing): only named in messages, never matched.
#[derive(Debug, Deserialize)]
struct Platform {
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    os: String,
    #[serde(default)]
    variant: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Index {
    manifests: Vec<Descriptor>,
}

#[derive(Debug, Deserialize)]
struct Manifest {
    config: Descriptor,
    #[serde(default)]
    layers: Vec<Descriptor>,
}

/// Just enough of a manifest or index to tell which it is when the descriptor has no media type.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Probe {
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    config: Option<serde::de::IgnoredAny>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Manifest,
    Index,
}

fn kind_of(media_type: &str) -> Option<Kind> {
    if media_types::is_manifest(media_type) {
        Some(Kind::Manifest)
    } else if media_types::is_index(media_type) {
        Some(Kind::Index)
    } else {
        None
    }
}

fn parse<'a, T: Deserialize<'a>>(bytes: &'a [u8], what: &str) -> Result<T, String> {
    serde_json::from_slice(bytes).map_err(|e| format!("{what} is not valid: {e}"))
}

/// A stored blob for `d`, or a message naming what is missing or wrong.
fn present<'a>(
    contents: &'a Contents,
    d: &Descriptor,
    what: &str,
    parent: &str,
) -> Result<&'a FileInfo, String> {
    let info = contents.blob(&d.digest).ok_or_else(|| {
        format!(
            "{parent} references {what} {} which is not in the archive",
            d.digest
        )
    })?;
    if info.size != d.size {
        return Err(format!(
            "{parent} lists {what} {} with size {} but the archive holds {} bytes",
            d.digest, d.size, info.size
        ));
    }
    Ok(info)
}

/// Works out whether `d` is a manifest or an index, and its media type for the target.
fn classify(
    contents: &Contents,
    d: &Descriptor,
    info: &FileInfo,
    what: &str,
) -> Result<(Kind, String), String> {
    if let Some(media_type) = &d.media_type {
        return kind_of(media_type)
            .map(|kind| (kind, media_type.clone()))
            .ok_or_else(|| {
                format!(
                    "{what} {} has unsupported media type {media_type}",
                    d.digest
                )
            });
    }
    let bytes = contents.bytes(info, &format!("{what} {}", d.digest))?;
    let probe: Probe = parse(bytes, &format!("{what} {}", d.digest))?;
    if let Some(media_type) = probe.media_type {
        return kind_of(&media_type)
            .map(|kind| (kind, media_type.clone()))
            .ok_or_else(|| {
                format!(
                    "{what} {} has unsupported media type {media_type}",
                    d.digest
                )
            });
    }
    match (probe.manifests.is_some(), probe.config.is_some()) {
        (true, false) => Ok((Kind::Index, MEDIA_TYPE_OCI_INDEX.into())),
        (false, true) => Ok((Kind::Manifest, MEDIA_TYPE_OCI_MANIFEST.into())),
        _ => Err(format!(
            "{what} {} is neither a manifest nor an index",
            d.digest
        )),
    }
}

/// Checks that the config and every layer of a manifest are in the archive.
fn check_manifest(contents: &Contents, d: &Descriptor, info: &FileInfo) -> Result<(), String> {
    let what = format!("manifest {}", d.digest);
    let manifest: Manifest = parse(contents.bytes(info, &what)?, &what)?;
    present(contents, &manifest.config, "config", &what)?;
    for layer in &manifest.layers {
        let foreign = !layer.urls.is_empty()
            && layer
                .media_type
                .as_deref()
                .is_some_and(|m| m.contains("nondistributable") || m.contains("foreign"));
        match present(contents, layer, "layer", &what) {
            // Non-distributable layers are fetched from their URLs, never shipped in archives.
            Err(_) if foreign && contents.blob(&layer.digest).is_none() => {}
            other => {
                other?;
            }
        }
    }
    Ok(())
}

/// Checks a nested index: children for other platforms may be missing, or
/// present without their layers (Docker keeps every platform's manifest and
/// config but only one platform's layers), but at least one must be complete.
fn check_index(
    contents: &Contents,
    d: &Descriptor,
    info: &FileInfo,
    depth: usize,
) -> Result<(), String> {
    let what = format!("index {}", d.digest);
    if depth > MAX_INDEX_DEPTH {
        return Err(format!(
            "{what} nests indexes more than {MAX_INDEX_DEPTH} deep"
        ));
    }
    let index: Index = parse(contents.bytes(info, &what)?, &what)?;
    let mut problems = Vec::new();
    let mut complete = 0;
    for child in &index.manifests {
        let checked = present(contents, child, "manifest", &what).and_then(|child_info| {
            match classify(contents, child, child_info, "manifest")?.0 {
                Kind::Manifest => check_manifest(contents, child, child_info),
                Kind::Index => check_index(contents, child, child_info, depth + 1),
            }
        });
        match checked {
            Ok(()) => complete += 1,
            Err(problem) => problems.push(match &child.platform {
                Some(p) => format!(
                    "{} ({problem})",
                    platform::name(&p.os, &p.architecture, p.variant.as_deref())
                ),
                None => problem,
            }),
        }
    }
    if complete > 0 {
        return Ok(());
    }
    if problems.is_empty() {
        return Err(format!("{what} lists no manifests"));
    }
    const SHOWN: usize = 4;
    let more = problems.len().saturating_sub(SHOWN);
    problems.truncate(SHOWN);
    let mut message = format!(
        "{what} has no manifest whose blobs are all in the archive: {}",
        problems.join("; ")
    );
    if more > 0 {
        message.push_str(&format!("; and {more} more"));
    }
    Err(message)
}

/// containerd's rule (`ctr import`): a ref name is a full reference when it
/// contains any of `/`, `:`, `@`; otherwise it is only a tag such as `latest`.
fn is_full_reference(name: &str) -> bool {
    name.contains(['/', ':', '@'])
}

fn oci_images(contents: &Contents) -> Result<Vec<ArchiveImage>, ArchiveError> {
    let info = contents
        .files
        .get(INDEX_JSON)
        .ok_or_else(|| ArchiveError::NotAnArchive(format!("no {INDEX_JSON} in the archive")))?;
    let bytes = contents
        .bytes(info, INDEX_JSON)
        .map_err(ArchiveError::Invalid)?;
    let index: Index = parse(bytes, INDEX_JSON).map_err(ArchiveError::Invalid)?;
    let mut images = Vec::new();
    for d in &index.manifests {
        let target = oci_target(contents, d).map_err(ArchiveError::Invalid)?;
        let names = match d.annotations.get(ANNOTATION_CONTAINERD_NAME) {
            Some(name) => vec![name.clone()],
            None => d
                .annotations
                .get(ANNOTATION_OCI_REF_NAME)
                .filter(|name| is_full_reference(name))
                .map(|name| vec![name.clone()])
                .unwrap_or_default(),
        };
        add_image(&mut images, names, target);
    }
    Ok(images)
}

/// Checks one `index.json` entry and returns the descriptor to register.
fn oci_target(contents: &Contents, d: &Descriptor) -> Result<BlobDescriptor, String> {
    let info = present(contents, d, "manifest", INDEX_JSON)?;
    let (kind, media_type) = classify(contents, d, info, "manifest")?;
    match kind {
        Kind::Manifest => check_manifest(contents, d, info)?,
        Kind::Index => check_index(contents, d, info, 0)?,
    }
    Ok(BlobDescriptor {
        media_type,
        digest: d.digest.clone(),
        size: d.size,
    })
}

/// Adds an image, merging it with an earlier one of the same target (Docker
/// writes one index entry per tag of the same manifest).
fn add_image(images: &mut Vec<ArchiveImage>, names: Vec<String>, target: BlobDescriptor) {
    match images.iter_mut().find(|image| image.target == target) {
        Some(image) => {
            for name in names {
                if !image.names.contains(&name) {
                    image.names.push(name);
                }
            }
        }
        None => images.push(ArchiveImage { names, target }),
    }
}

// ---- docker save (legacy) ----------------------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    #[serde(default)]
    layers: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct DockerConfig {
    rootfs: Option<RootFs>,
}

#[derive(Debug, Deserialize)]
struct RootFs {
    #[serde(default)]
    diff_ids: Vec<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SchemaDescriptor<'a> {
    media_type: &'a str,
    size: u64,
    digest: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Schema2Manifest<'a> {
    schema_version: u32,
    media_type: &'a str,
    config: SchemaDescriptor<'a>,
    layers: Vec<SchemaDescriptor<'a>>,
}

fn docker_images(
    contents: &Contents,
    sink: &mut dyn BlobSink,
) -> Result<Vec<ArchiveImage>, ArchiveError> {
    let info = contents.files.get(DOCKER_MANIFEST_JSON).ok_or_else(|| {
        ArchiveError::NotAnArchive(format!("no {DOCKER_MANIFEST_JSON} in the archive"))
    })?;
    let bytes = contents
        .bytes(info, DOCKER_MANIFEST_JSON)
        .map_err(ArchiveError::Invalid)?;
    let entries: Vec<DockerEntry> =
        parse(bytes, DOCKER_MANIFEST_JSON).map_err(ArchiveError::Invalid)?;
    if entries.is_empty() {
        return Err(ArchiveError::Invalid(format!(
            "{DOCKER_MANIFEST_JSON} lists no images"
        )));
    }
    let mut images = Vec::new();
    for (i, entry) in entries.iter().enumerate() {
        let names = entry.repo_tags.clone().unwrap_or_default();
        let what = match names.first() {
            Some(name) => format!("{DOCKER_MANIFEST_JSON} image {name}"),
            None => format!("{DOCKER_MANIFEST_JSON} entry {i}"),
        };
        let manifest = docker_manifest(contents, entry, &what).map_err(ArchiveError::Invalid)?;
        let digest = sha256_digest(&manifest);
        let size = manifest.len() as u64;
        let stored = sink
            .put(Some(&digest), size, &mut manifest.as_slice())
            .map_err(|message| ArchiveError::Sink {
                digest: digest.clone(),
                message,
            })?;
        if stored != digest {
            return Err(ArchiveError::Sink {
                digest,
                message: format!("the sink returned {stored} for the synthesized manifest"),
            });
        }
        let target = BlobDescriptor {
            media_type: MEDIA_TYPE_DOCKER_MANIFEST.into(),
            digest,
            size,
        };
        add_image(&mut images, names, target);
    }
    Ok(images)
}

/// The stored blob at `path` (after links), or a message naming what is missing.
fn docker_blob<'a>(
    contents: &'a Contents,
    path: &str,
    what: &str,
    parent: &str,
) -> Result<(&'a FileInfo, &'a str), String> {
    let missing = || format!("{parent} references {what} {path} which is not in the archive");
    let (_, info) = contents.resolve(path).ok_or_else(missing)?;
    let digest = info.digest.as_deref().ok_or_else(missing)?;
    Ok((info, digest))
}

/// Builds the schema2 manifest of one `manifest.json` entry, checking that
/// the config and layers are there and agree with each other.
fn docker_manifest(
    contents: &Contents,
    entry: &DockerEntry,
    what: &str,
) -> Result<Vec<u8>, String> {
    let (config_info, config_digest) = docker_blob(contents, &entry.config, "config", what)?;
    // Legacy archives carry no digests of their own except in names: the
    // config is `<sha256 of config>.json`, and the config lists the layers' diff IDs.
    let config_name = entry.config.rsplit('/').next().unwrap_or_default();
    if let Some(hex) = config_name.strip_suffix(".json") {
        let named = format!("sha256:{hex}");
        if is_sha256_digest(&named) && named != config_digest {
            return Err(format!(
                "digest mismatch: {what}: config {} holds content with digest {config_digest}",
                entry.config
            ));
        }
    }
    let diff_ids = match &config_info.cached {
        Some(bytes) => {
            let config: DockerConfig = parse(bytes, &format!("{what}: config {}", entry.config))?;
            Some(config.rootfs.map(|r| r.diff_ids).unwrap_or_default())
        }
        None => None,
    };
    if let Some(diff_ids) = &diff_ids {
        if diff_ids.len() != entry.layers.len() {
            return Err(format!(
                "{what} lists {} layers but its config {} lists {} diff IDs",
                entry.layers.len(),
                entry.config,
                diff_ids.len()
            ));
        }
    }
    let mut layers = Vec::with_capacity(entry.layers.len());
    for (i, path) in entry.layers.iter().enumerate() {
        let (info, digest) = docker_blob(contents, path, "layer", what)?;
        let media_type = match info.compression {
            Compression::Plain => MEDIA_TYPE_DOCKER_LAYER,
            Compression::Gzip => MEDIA_TYPE_DOCKER_LAYER_GZIP,
            Compression::Zstd => MEDIA_TYPE_OCI_LAYER_ZSTD,
        };
        if let (Some(diff_ids), Compression::Plain) = (&diff_ids, info.compression) {
            // An uncompressed layer's digest is its diff ID; compressed ones are checked on unpack.
            if diff_ids[i] != digest {
                return Err(format!(
                    "digest mismatch: {what}: layer {path} has digest {digest} but the config lists diff ID {}",
                    diff_ids[i]
                ));
            }
        }
        layers.push(SchemaDescriptor {
            media_type,
            size: info.size,
            digest,
        });
    }
    let manifest = Schema2Manifest {
        schema_version: 2,
        media_type: MEDIA_TYPE_DOCKER_MANIFEST,
        config: SchemaDescriptor {
            media_type: MEDIA_TYPE_DOCKER_CONFIG,
            size: config_info.size,
            digest: config_digest,
        },
        layers,
    };
    serde_json::to_vec(&manifest).map_err(|e| format!("{what}: encoding the manifest: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::images::media_types::{MEDIA_TYPE_OCI_CONFIG, MEDIA_TYPE_OCI_LAYER};
    use std::io::Write as _;

    /// A sink that keeps every blob by digest and refuses one whose content does not match
    /// `expected`, as containerd's content store does. It reads whatever it is given: that
    /// this is exactly `size` bytes is the reader's promise, which `read_contents` checks.
    #[derive(Default)]
    struct TestSink {
        blobs: HashMap<String, Vec<u8>>,
        /// (expected, returned digest) in call order.
        puts: Vec<(Option<String>, String)>,
    }

    impl BlobSink for TestSink {
        fn put(
            &mut self,
            expected: Option<&str>,
            _: u64,
            data: &mut dyn Read,
        ) -> Result<String, String> {
            let mut bytes = Vec::new();
            data.read_to_end(&mut bytes).map_err(|e| e.to_string())?;
            let digest = sha256_digest(&bytes);
            match expected {
                Some(expected) if expected != digest => {
                    Err(format!("expected {expected}, got {digest}"))
                }
                _ => {
                    self.puts
                        .push((expected.map(str::to_string), digest.clone()));
                    self.blobs.insert(digest.clone(), bytes);
                    Ok(digest)
                }
            }
        }
    }

    enum E<'a> {
        File(&'a str, &'a [u8]),
        Symlink(&'a str, &'a str),
        Hardlink(&'a str, &'a str),
        Dir(&'a str),
    }

    fn tar_of(entries: &[E]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for e in entries {
            let mut h = tar::Header::new_gnu();
            h.set_mode(0o644);
            match e {
                E::File(path, data) => {
                    h.set_size(data.len() as u64);
                    h.set_entry_type(tar::EntryType::Regular);
                    b.append_data(&mut h, path, *data).unwrap();
                }
                E::Symlink(path, target) | E::Hardlink(path, target) => {
                    h.set_size(0);
                    h.set_entry_type(if matches!(e, E::Symlink(..)) {
                        tar::EntryType::Symlink
                    } else {
                        tar::EntryType::Link
                    });
                    b.append_link(&mut h, path, target).unwrap();
                }
                E::Dir(path) => {
                    h.set_size(0);
                    h.set_mode(0o755);
                    h.set_entry_type(tar::EntryType::Directory);
                    b.append_data(&mut h, path, io::empty()).unwrap();
                }
            }
        }
        b.into_inner().unwrap()
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(data).unwrap();
        enc.finish().unwrap()
    }

    fn zstd(data: &[u8]) -> Vec<u8> {
        zstd::encode_all(data, 3).unwrap()
    }

    fn hex(digest: &str) -> &str {
        digest.strip_prefix("sha256:").unwrap()
    }

    fn blob_path(digest: &str) -> String {
        format!("blobs/sha256/{}", hex(digest))
    }

    /// A small layer: a real tar holding one file.
    fn layer(content: &str) -> Vec<u8> {
        tar_of(&[E::File("hello.txt", content.as_bytes())])
    }

    fn config_for(layers: &[&[u8]]) -> Vec<u8> {
        let diff_ids: Vec<String> = layers.iter().map(|l| sha256_digest(l)).collect();
        serde_json::to_vec(&serde_json::json!({
            "architecture": "amd64", "os": "linux",
            "config": {"Cmd": ["sh"]},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        }))
        .unwrap()
    }

    fn descriptor(media_type: &str, bytes: &[u8]) -> serde_json::Value {
        serde_json::json!({"mediaType": media_type, "digest": sha256_digest(bytes), "size": bytes.len()})
    }

    /// An OCI manifest and its config for `layers`: (manifest, config).
    fn oci_manifest(layers: &[&[u8]]) -> (Vec<u8>, Vec<u8>) {
        let config = config_for(layers);
        let layers: Vec<_> = layers
            .iter()
            .map(|l| descriptor(MEDIA_TYPE_OCI_LAYER, l))
            .collect();
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": MEDIA_TYPE_OCI_MANIFEST,
            "config": descriptor(MEDIA_TYPE_OCI_CONFIG, &config),
            "layers": layers,
        }))
        .unwrap();
        (manifest, config)
    }

    fn index_of(entries: Vec<serde_json::Value>) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2, "mediaType": MEDIA_TYPE_OCI_INDEX, "manifests": entries,
        }))
        .unwrap()
    }

    fn annotated(mut d: serde_json::Value, annotations: &[(&str, &str)]) -> serde_json::Value {
        let map: serde_json::Map<String, serde_json::Value> = annotations
            .iter()
            .map(|(k, v)| (k.to_string(), serde_json::Value::from(*v)))
            .collect();
        d["annotations"] = map.into();
        d
    }

    struct Oci {
        tar: Vec<u8>,
        manifest: Vec<u8>,
        config: Vec<u8>,
        layer: Vec<u8>,
    }

    /// A one-image OCI layout; `prefix` is put before every path (e.g. "./"),
    /// and `index_first` puts index.json before the blobs.
    fn oci_archive(annotations: &[(&str, &str)], prefix: &str, index_first: bool) -> Oci {
        let layer = layer("hello");
        let (manifest, config) = oci_manifest(&[&layer]);
        let index = index_of(vec![annotated(
            descriptor(MEDIA_TYPE_OCI_MANIFEST, &manifest),
            annotations,
        )]);
        let p = |s: &str| format!("{prefix}{s}");
        let (lp, cp, mp) = (
            p(&blob_path(&sha256_digest(&layer))),
            p(&blob_path(&sha256_digest(&config))),
            p(&blob_path(&sha256_digest(&manifest))),
        );
        let (layout, index_path, blobs_dir, sha_dir) = (
            p("oci-layout"),
            p("index.json"),
            p("blobs/"),
            p("blobs/sha256/"),
        );
        let mut entries = vec![E::File(&layout, br#"{"imageLayoutVersion":"1.0.0"}"#)];
        if index_first {
            entries.push(E::File(&index_path, &index));
        }
        entries.extend([
            E::Dir(&blobs_dir),
            E::Dir(&sha_dir),
            E::File(&lp, &layer),
            E::File(&cp, &config),
            E::File(&mp, &manifest),
        ]);
        if !index_first {
            entries.push(E::File(&index_path, &index));
        }
        let tar = tar_of(&entries);
        Oci {
            tar,
            manifest,
            config,
            layer,
        }
    }

    const NAME: &str = "example.com/app:1.0";

    fn check_oci_result(oci: &Oci, images: &[ArchiveImage], sink: &TestSink) {
        assert_eq!(
            images,
            [ArchiveImage {
                names: vec![NAME.into()],
                target: BlobDescriptor {
                    media_type: MEDIA_TYPE_OCI_MANIFEST.into(),
                    digest: sha256_digest(&oci.manifest),
                    size: oci.manifest.len() as u64,
                },
            }]
        );
        for blob in [&oci.manifest, &oci.config, &oci.layer] {
            let digest = sha256_digest(blob);
            assert_eq!(sink.blobs.get(&digest), Some(blob));
            // Named blobs are passed with their expected digest.
            assert!(sink
                .puts
                .iter()
                .any(|(e, d)| e.as_ref() == Some(&digest) && *d == digest));
        }
        assert_eq!(
            sink.puts.len(),
            3,
            "only blobs go to the sink: {:?}",
            sink.puts
        );
    }

    #[test]
    fn oci_layout_plain_gzip_and_zstd() {
        let oci = oci_archive(&[(ANNOTATION_CONTAINERD_NAME, NAME)], "", false);
        for input in [oci.tar.clone(), gzip(&oci.tar), zstd(&oci.tar)] {
            let mut sink = TestSink::default();
            let images = read_archive(input.as_slice(), &mut sink).unwrap();
            check_oci_result(&oci, &images, &sink);
        }
    }

    #[test]
    fn oci_layout_with_dot_slash_paths_and_index_first() {
        let oci = oci_archive(&[(ANNOTATION_CONTAINERD_NAME, NAME)], "./", true);
        let mut sink = TestSink::default();
        let images = read_archive(oci.tar.as_slice(), &mut sink).unwrap();
        check_oci_result(&oci, &images, &sink);
    }

    #[test]
    fn names_from_annotations() {
        type Annotations<'a> = &'a [(&'a str, &'a str)];
        let cases: &[(Annotations, &[&str])] = &[
            (&[(ANNOTATION_OCI_REF_NAME, NAME)], &[NAME]),
            (&[(ANNOTATION_OCI_REF_NAME, "latest")], &[]),
            (&[(ANNOTATION_OCI_REF_NAME, "1.0")], &[]),
            (
                &[(ANNOTATION_OCI_REF_NAME, "busybox:1.36")],
                &["busybox:1.36"],
            ),
            (
                &[
                    (ANNOTATION_OCI_REF_NAME, "latest"),
                    (ANNOTATION_CONTAINERD_NAME, NAME),
                ],
                &[NAME],
            ),
            (&[("com.example.unknown", "x")], &[]),
            (&[], &[]),
        ];
        for (annotations, names) in cases {
            let oci = oci_archive(annotations, "", false);
            let images = read_archive(oci.tar.as_slice(), &mut TestSink::default()).unwrap();
            assert_eq!(images.len(), 1);
            assert_eq!(images[0].names, *names, "annotations {annotations:?}");
        }
    }

    #[test]
    fn same_manifest_under_two_tags_is_one_image_with_two_names() {
        let layer = layer("x");
        let (manifest, config) = oci_manifest(&[&layer]);
        let d = descriptor(MEDIA_TYPE_OCI_MANIFEST, &manifest);
        let index = index_of(vec![
            annotated(d.clone(), &[(ANNOTATION_CONTAINERD_NAME, "a.io/x:1")]),
            annotated(d, &[(ANNOTATION_CONTAINERD_NAME, "a.io/x:2")]),
        ]);
        let tar = tar_of(&[
            E::File(&blob_path(&sha256_digest(&layer)), &layer),
            E::File(&blob_path(&sha256_digest(&config)), &config),
            E::File(&blob_path(&sha256_digest(&manifest)), &manifest),
            E::File("index.json", &index),
        ]);
        let images = read_archive(tar.as_slice(), &mut TestSink::default()).unwrap();
        assert_eq!(images.len(), 1);
        assert_eq!(images[0].names, ["a.io/x:1", "a.io/x:2"]);
    }

    /// A multi-arch image as skopeo copies it with one platform's content:
    /// the nested index and the amd64 manifest are there, arm64's is not.
    #[test]
    fn nested_index_needs_one_complete_child() {
        let layer = layer("amd64");
        let (manifest, config) = oci_manifest(&[&layer]);
        let (other_manifest, other_config) = oci_manifest(&[b"arm64 layer, not shipped"]);
        let mut amd64 = descriptor(MEDIA_TYPE_OCI_MANIFEST, &manifest);
        amd64["platform"] = serde_json::json!({"architecture": "amd64", "os": "linux"});
        let mut arm64 = descriptor(MEDIA_TYPE_OCI_MANIFEST, &other_manifest);
        arm64["platform"] =
            serde_json::json!({"architecture": "arm64", "os": "linux", "variant": "v8"});
        let nested = index_of(vec![arm64, amd64]);
        let index = index_of(vec![annotated(
            descriptor(MEDIA_TYPE_OCI_INDEX, &nested),
            &[(ANNOTATION_OCI_REF_NAME, NAME)],
        )]);
        let entry = |b: &Vec<u8>| (blob_path(&sha256_digest(b)), b.clone());
        let build = |blobs: &[&Vec<u8>]| {
            let files: Vec<(String, Vec<u8>)> = blobs.iter().map(|b| entry(b)).collect();
            let mut entries: Vec<E> = files.iter().map(|(p, b)| E::File(p, b)).collect();
            entries.push(E::File("index.json", &index));
            tar_of(&entries)
        };

        // Only amd64 is complete.
        let tar = build(&[&nested, &manifest, &config, &layer]);
        let images = read_archive(tar.as_slice(), &mut TestSink::default()).unwrap();
        assert_eq!(
            images,
            [ArchiveImage {
                names: vec![NAME.into()],
                target: BlobDescriptor {
                    media_type: MEDIA_TYPE_OCI_INDEX.into(),
                    digest: sha256_digest(&nested),
                    size: nested.len() as u64,
                },
            }]
        );

        // arm64's manifest and config are there but not its layer (as Docker keeps them): still fine.
        let tar = build(&[
            &nested,
            &manifest,
            &config,
            &layer,
            &other_manifest,
            &other_config,
        ]);
        assert!(read_archive(tar.as_slice(), &mut TestSink::default()).is_ok());

        // amd64's layer is missing too: no child is complete.
        let tar = build(&[&nested, &manifest, &config, &other_manifest, &other_config]);
        let err = read_archive(tar.as_slice(), &mut TestSink::default()).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, ArchiveError::Invalid(_)), "{err:?}");
        assert!(msg.contains(&sha256_digest(&nested)), "{msg}");
        assert!(
            msg.contains(&format!("layer {}", sha256_digest(&layer))),
            "{msg}"
        );
        assert!(msg.contains("linux/arm64/v8"), "{msg}");

        // The nested index itself is missing.
        let tar = build(&[&manifest, &config, &layer]);
        let msg = read_archive(tar.as_slice(), &mut TestSink::default())
            .unwrap_err()
            .to_string();
        assert_eq!(
            msg,
            format!(
                "index.json references manifest {} which is not in the archive",
                sha256_digest(&nested)
            )
        );
    }

    #[test]
    fn missing_layer_is_named() {
        let oci = oci_archive(&[(ANNOTATION_CONTAINERD_NAME, NAME)], "", false);
        let layer_path = blob_path(&sha256_digest(&oci.layer));
        // Rebuild the archive without the layer.
        let mut archive = tar::Archive::new(oci.tar.as_slice());
        let mut kept: Vec<(String, Vec<u8>)> = Vec::new();
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let path = entry.path().unwrap().to_string_lossy().into_owned();
            if path != layer_path && entry.header().entry_type().is_file() {
                let mut data = Vec::new();
                entry.read_to_end(&mut data).unwrap();
                kept.push((path, data));
            }
        }
        let entries: Vec<E> = kept.iter().map(|(p, d)| E::File(p, d)).collect();
        let tar = tar_of(&entries);
        let err = read_archive(tar.as_slice(), &mut TestSink::default()).unwrap_err();
        assert!(matches!(err, ArchiveError::Invalid(_)), "{err:?}");
        assert_eq!(
            err.to_string(),
            format!(
                "manifest {} references layer {} which is not in the archive",
                sha256_digest(&oci.manifest),
                sha256_digest(&oci.layer)
            )
        );
    }

    #[test]
    fn size_mismatch_in_index_is_invalid() {
        let layer = layer("x");
        let (manifest, config) = oci_manifest(&[&layer]);
        let mut d = descriptor(MEDIA_TYPE_OCI_MANIFEST, &manifest);
        d["size"] = (manifest.len() + 1).into();
        let index = index_of(vec![d]);
        let tar = tar_of(&[
            E::File(&blob_path(&sha256_digest(&layer)), &layer),
            E::File(&blob_path(&sha256_digest(&config)), &config),
            E::File(&blob_path(&sha256_digest(&manifest)), &manifest),
            E::File("index.json", &index),
        ]);
        let err = read_archive(tar.as_slice(), &mut TestSink::default()).unwrap_err();
        assert!(matches!(err, ArchiveError::Invalid(_)), "{err:?}");
        assert!(err.to_string().contains("with size"), "{err}");
    }

    #[test]
    fn blob_whose_content_does_not_match_its_name_is_refused() {
        let wrong = format!("blobs/sha256/{}", "ab".repeat(32));
        let tar = tar_of(&[
            E::File(&wrong, b"not what the name says"),
            E::File("index.json", b"{}"),
        ]);
        let err = read_archive(tar.as_slice(), &mut TestSink::default()).unwrap_err();
        match err {
            ArchiveError::Sink { digest, .. } => {
                assert_eq!(digest, format!("sha256:{}", "ab".repeat(32)))
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bad_index_json_is_invalid() {
        let tar = tar_of(&[E::File("index.json", b"{\"manifests\": 3}")]);
        let err = read_archive(tar.as_slice(), &mut TestSink::default()).unwrap_err();
        assert!(matches!(err, ArchiveError::Invalid(_)), "{err:?}");
        assert!(
            err.to_string().starts_with("index.json is not valid"),
            "{err}"
        );
    }

    // ---- docker save --------------------------------------------------------------------------

    fn docker_manifest_json(entries: serde_json::Value) -> Vec<u8> {
        serde_json::to_vec(&entries).unwrap()
    }

    /// Parses a synthesized manifest from the sink.
    fn synthesized(sink: &TestSink, image: &ArchiveImage) -> serde_json::Value {
        assert_eq!(image.target.media_type, MEDIA_TYPE_DOCKER_MANIFEST);
        let bytes = &sink.blobs[&image.target.digest];
        assert_eq!(bytes.len() as u64, image.target.size);
        assert!(sink
            .puts
            .iter()
            .any(|(e, d)| e.as_deref() == Some(d) && *d == image.target.digest));
        serde_json::from_slice(bytes).unwrap()
    }

    /// Two images sharing their base layer; the second's copy of it is a link,
    /// placed before or after the real file (docker writes `<id>/layer.tar` in
    /// directory order, so a link can sort first).
    fn docker_legacy(link: fn(&'static str, &'static str) -> E<'static>, link_first: bool) {
        let base: &'static [u8] = Box::leak(layer("base").into_boxed_slice());
        let top: &'static [u8] = Box::leak(layer("top").into_boxed_slice());
        let config_a: &'static [u8] = Box::leak(config_for(&[base]).into_boxed_slice());
        let config_b: &'static [u8] = Box::leak(config_for(&[base, top]).into_boxed_slice());
        let config_a_path: &'static str =
            Box::leak(format!("{}.json", hex(&sha256_digest(config_a))).into_boxed_str());
        let config_b_path: &'static str =
            Box::leak(format!("{}.json", hex(&sha256_digest(config_b))).into_boxed_str());
        let manifest = docker_manifest_json(serde_json::json!([
            {"Config": config_a_path, "RepoTags": ["a.io/base:1"], "Layers": ["bbbb/layer.tar"]},
            {"Config": config_b_path, "RepoTags": ["a.io/app:1", "a.io/app:latest"],
             "Layers": ["aaaa/layer.tar", "cccc/layer.tar"]},
        ]));
        // aaaa/layer.tar is the duplicate of bbbb/layer.tar.
        let mut link_entry = Some(link("aaaa/layer.tar", "../bbbb/layer.tar"));
        let mut entries = vec![
            E::Dir("aaaa/"),
            E::File("aaaa/VERSION", b"1.0"),
            E::File("aaaa/json", b"{\"id\":\"aaaa\"}"),
        ];
        if link_first {
            entries.extend(link_entry.take());
        }
        entries.extend([
            E::Dir("bbbb/"),
            E::File("bbbb/VERSION", b"1.0"),
            E::File("bbbb/json", b"{\"id\":\"bbbb\"}"),
            E::File("bbbb/layer.tar", base),
            E::Dir("cccc/"),
            E::File("cccc/layer.tar", top),
            E::File(config_a_path, config_a),
            E::File(config_b_path, config_b),
            E::File("manifest.json", &manifest),
            E::File("repositories", b"{}"),
        ]);
        entries.extend(link_entry.take());
        let tar = tar_of(&entries);

        let mut sink = TestSink::default();
        let images = read_archive(tar.as_slice(), &mut sink).unwrap();
        assert_eq!(images.len(), 2);
        assert_eq!(images[0].names, ["a.io/base:1"]);
        assert_eq!(images[1].names, ["a.io/app:1", "a.io/app:latest"]);
        let m = synthesized(&sink, &images[1]);
        assert_eq!(m["schemaVersion"], 2);
        assert_eq!(m["mediaType"], MEDIA_TYPE_DOCKER_MANIFEST);
        assert_eq!(m["config"]["mediaType"], MEDIA_TYPE_DOCKER_CONFIG);
        assert_eq!(m["config"]["digest"], sha256_digest(config_b));
        assert_eq!(m["config"]["size"], config_b.len());
        let layers = m["layers"].as_array().unwrap();
        assert_eq!(layers.len(), 2);
        for (l, bytes) in layers.iter().zip([base, top]) {
            assert_eq!(l["mediaType"], MEDIA_TYPE_DOCKER_LAYER);
            assert_eq!(l["digest"], sha256_digest(bytes));
            assert_eq!(l["size"], bytes.len());
        }
        let m = synthesized(&sink, &images[0]);
        assert_eq!(m["layers"][0]["digest"], sha256_digest(base));
        // Legacy paths carry no digest: blobs are put with expected = None; the `<id>/json`,
        // VERSION and repositories files are not blobs.
        let legacy: Vec<_> = sink.puts.iter().filter(|(e, _)| e.is_none()).collect();
        assert_eq!(legacy.len(), 4, "{:?}", sink.puts);
    }

    #[test]
    fn docker_legacy_symlinked_layer_after_target() {
        docker_legacy(E::Symlink, false);
    }

    #[test]
    fn docker_legacy_symlinked_layer_before_target() {
        docker_legacy(E::Symlink, true);
    }

    #[test]
    fn docker_legacy_hardlinked_layer() {
        // Hardlink targets are relative to the archive root; the "../" variant
        // is only meaningful for symlinks, so use the plain path both times.
        fn hardlink(path: &'static str, target: &'static str) -> E<'static> {
            E::Hardlink(path, target.trim_start_matches("../"))
        }
        docker_legacy(hardlink, false);
        docker_legacy(hardlink, true);
    }

    /// skopeo's docker-archive: layers at `<diffid>.tar` at the root, the
    /// `<id>/layer.tar` symlinks only for old readers, manifest.json naming the root files.
    #[test]
    fn docker_compressed_layers_get_compressed_media_types() {
        let plain = layer("plain");
        let gz = gzip(&layer("gzip"));
        let zst = zstd(&layer("zstd"));
        let diff_ids = [
            sha256_digest(&plain),
            sha256_digest(&layer("gzip")),
            sha256_digest(&layer("zstd")),
        ];
        let config = serde_json::to_vec(&serde_json::json!({
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        }))
        .unwrap();
        let config_path = format!("{}.json", hex(&sha256_digest(&config)));
        let manifest = docker_manifest_json(serde_json::json!([
            {"Config": config_path, "RepoTags": null, "Layers": ["1.tar", "2.tar", "3.tar"]},
        ]));
        let tar = tar_of(&[
            E::File("1.tar", &plain),
            E::File("2.tar", &gz),
            E::File("3.tar", &zst),
            E::Symlink("x/layer.tar", "../1.tar"),
            E::File(&config_path, &config),
            E::File("manifest.json", &manifest),
        ]);
        let mut sink = TestSink::default();
        let images = read_archive(gzip(&tar).as_slice(), &mut sink).unwrap();
        assert_eq!(images.len(), 1);
        assert!(images[0].names.is_empty());
        let m = synthesized(&sink, &images[0]);
        let types: Vec<&str> = m["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["mediaType"].as_str().unwrap())
            .collect();
        assert_eq!(
            types,
            [
                MEDIA_TYPE_DOCKER_LAYER,
                MEDIA_TYPE_DOCKER_LAYER_GZIP,
                MEDIA_TYPE_OCI_LAYER_ZSTD
            ]
        );
        assert_eq!(m["layers"][1]["digest"], sha256_digest(&gz));
    }

    #[test]
    fn docker_layer_not_matching_diff_id_is_invalid() {
        let real = layer("real");
        let config = config_for(&[&layer("something else")]);
        let config_path = format!("{}.json", hex(&sha256_digest(&config)));
        let manifest = docker_manifest_json(serde_json::json!([
            {"Config": config_path, "RepoTags": ["x:1"], "Layers": ["l/layer.tar"]},
        ]));
        let tar = tar_of(&[
            E::File("l/layer.tar", &real),
            E::File(&config_path, &config),
            E::File("manifest.json", &manifest),
        ]);
        let err = read_archive(tar.as_slice(), &mut TestSink::default()).unwrap_err();
        assert!(matches!(err, ArchiveError::Invalid(_)), "{err:?}");
        assert!(err.to_string().contains("l/layer.tar"), "{err}");
        assert!(err.to_string().contains("diff ID"), "{err}");
    }

    #[test]
    fn docker_missing_layer_and_dangling_link_are_named() {
        let base = layer("base");
        let config = config_for(&[&base, &base]);
        let config_path = format!("{}.json", hex(&sha256_digest(&config)));
        let manifest = docker_manifest_json(serde_json::json!([
            {"Config": config_path, "RepoTags": ["x:1"], "Layers": ["a/layer.tar", "b/layer.tar"]},
        ]));
        for link in ["../c/layer.tar", "../../escape.tar", "b/layer.tar"] {
            let tar = tar_of(&[
                E::File("a/layer.tar", &base),
                E::Symlink("b/layer.tar", link),
                E::File(&config_path, &config),
                E::File("manifest.json", &manifest),
            ]);
            let err = read_archive(tar.as_slice(), &mut TestSink::default()).unwrap_err();
            assert_eq!(
                err.to_string(),
                "manifest.json image x:1 references layer b/layer.tar which is not in the archive",
                "link to {link}"
            );
        }
    }

    /// Docker 25+: an OCI layout with a manifest.json pointing into blobs/; index.json wins.
    #[test]
    fn docker_25_archive_uses_index_json() {
        let layer = layer("d25");
        let (manifest, config) = oci_manifest(&[&layer]);
        let index = index_of(vec![annotated(
            descriptor(MEDIA_TYPE_OCI_MANIFEST, &manifest),
            &[
                (ANNOTATION_CONTAINERD_NAME, "docker.io/library/app:latest"),
                (ANNOTATION_OCI_REF_NAME, "latest"),
            ],
        )]);
        let docker = docker_manifest_json(serde_json::json!([{
            "Config": blob_path(&sha256_digest(&config)),
            "RepoTags": ["app:latest"],
            "Layers": [blob_path(&sha256_digest(&layer))],
        }]));
        let tar = tar_of(&[
            E::Dir("blobs/"),
            E::Dir("blobs/sha256/"),
            E::File(&blob_path(&sha256_digest(&layer)), &layer),
            E::File(&blob_path(&sha256_digest(&config)), &config),
            E::File(&blob_path(&sha256_digest(&manifest)), &manifest),
            E::File("index.json", &index),
            E::File("manifest.json", &docker),
            E::File("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#),
            E::File("repositories", br#"{"app":{"latest":"x"}}"#),
        ]);
        let mut sink = TestSink::default();
        let images = read_archive(tar.as_slice(), &mut sink).unwrap();
        assert_eq!(
            images,
            [ArchiveImage {
                names: vec!["docker.io/library/app:latest".into()],
                target: BlobDescriptor {
                    media_type: MEDIA_TYPE_OCI_MANIFEST.into(),
                    digest: sha256_digest(&manifest),
                    size: manifest.len() as u64,
                },
            }]
        );
        // Nothing was synthesized.
        assert_eq!(sink.puts.len(), 3);
    }

    /// Docker 25+ `docker save <image id>`: no tag, so index.json lists nothing and
    /// the image is only in manifest.json, whose paths point into blobs/.
    #[test]
    fn docker_25_untagged_image_falls_back_to_manifest_json() {
        let layer = layer("untagged");
        let config = config_for(&[&layer]);
        let docker = docker_manifest_json(serde_json::json!([{
            "Config": blob_path(&sha256_digest(&config)),
            "RepoTags": null,
            "Layers": [blob_path(&sha256_digest(&layer))],
        }]));
        let tar = tar_of(&[
            E::File(&blob_path(&sha256_digest(&layer)), &layer),
            E::File(&blob_path(&sha256_digest(&config)), &config),
            E::File("index.json", &index_of(vec![])),
            E::File("manifest.json", &docker),
        ]);
        let mut sink = TestSink::default();
        let images = read_archive(tar.as_slice(), &mut sink).unwrap();
        assert_eq!(images.len(), 1);
        assert!(images[0].names.is_empty());
        let m = synthesized(&sink, &images[0]);
        assert_eq!(m["config"]["digest"], sha256_digest(&config));
        assert_eq!(m["layers"][0]["digest"], sha256_digest(&layer));

        // Without manifest.json, an empty index.json is an error.
        let tar = tar_of(&[E::File("index.json", &index_of(vec![]))]);
        let err = read_archive(tar.as_slice(), &mut TestSink::default()).unwrap_err();
        assert_eq!(err.to_string(), "index.json lists no images");
    }

    // ---- damaged and foreign input ------------------------------------------------------------

    #[test]
    fn truncated_archives_are_io_errors() {
        let oci = oci_archive(&[(ANNOTATION_CONTAINERD_NAME, NAME)], "", false);
        // The tar ends with two zero blocks: cutting into the second loses nothing.
        let complete = oci.tar.len() - 512;
        for cut in (512..complete)
            .step_by(97)
            .chain([1024, 1536, complete - 512])
        {
            let err = read_archive(&oci.tar[..cut], &mut TestSink::default()).unwrap_err();
            match &err {
                ArchiveError::Io(e) => {
                    assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof, "cut {cut}: {e}");
                    assert!(e.to_string().starts_with(TRUNCATED), "cut {cut}: {e}");
                }
                other => panic!("cut at {cut}: {other:?}"),
            }
        }
        for (name, compressed) in [("gzip", gzip(&oci.tar)), ("zstd", zstd(&oci.tar))] {
            // Past the magic, every cut fails, except cuts into the compressed zero padding
            // after the tar's end-of-archive block: nothing of the tar is lost there.
            let mut last_failure = 0;
            for cut in 4..compressed.len() {
                match read_archive(&compressed[..cut], &mut TestSink::default()) {
                    Err(ArchiveError::Io(e)) => {
                        assert_eq!(
                            e.kind(),
                            io::ErrorKind::UnexpectedEof,
                            "{name} cut {cut}: {e}"
                        );
                        last_failure = cut;
                    }
                    Ok(images) => assert_eq!(images[0].target.digest, sha256_digest(&oci.manifest)),
                    other => panic!("{name} cut at {cut}: {other:?}"),
                }
            }
            eprintln!(
                "{name}: {} bytes, last failing cut {last_failure}",
                compressed.len()
            );
            assert!(
                last_failure + 32 > compressed.len(),
                "{name}: {last_failure}"
            );
        }
        // Short plain input that is no whole tar header.
        assert!(matches!(
            read_archive(&oci.tar[..100], &mut TestSink::default()),
            Err(ArchiveError::NotAnArchive(_))
        ));
    }

    #[test]
    fn foreign_input_is_not_an_archive() {
        let mut random = Vec::new();
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..10_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            random.push(x as u8);
        }
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("empty", Vec::new()),
            ("text", b"this is not an image archive\n".to_vec()),
            ("random", random.clone()),
            ("gzip of random", gzip(&random)),
            ("zstd of text", zstd(b"hello")),
            ("gzip of nothing", gzip(b"")),
            ("empty tar", tar_of(&[])),
            ("tar without index", tar_of(&[E::File("hello.txt", b"hi")])),
        ];
        for (name, input) in cases {
            match read_archive(input.as_slice(), &mut TestSink::default()) {
                Err(ArchiveError::NotAnArchive(_)) => {}
                other => panic!("{name}: {other:?}"),
            }
        }
    }

    #[test]
    fn sink_error_is_reported_with_digest() {
        struct Refusing;
        impl BlobSink for Refusing {
            fn put(&mut self, _: Option<&str>, _: u64, _: &mut dyn Read) -> Result<String, String> {
                Err("disk full".into())
            }
        }
        let oci = oci_archive(&[], "", false);
        let err = read_archive(oci.tar.as_slice(), &mut Refusing).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("storing blob {}: disk full", sha256_digest(&oci.layer))
        );
    }

    #[test]
    fn link_loops_do_not_hang() {
        let manifest = docker_manifest_json(serde_json::json!([
            {"Config": "c.json", "RepoTags": [], "Layers": []},
        ]));
        let tar = tar_of(&[
            E::Symlink("c.json", "d.json"),
            E::Symlink("d.json", "c.json"),
            E::File("manifest.json", &manifest),
        ]);
        let err = read_archive(tar.as_slice(), &mut TestSink::default()).unwrap_err();
        assert!(
            err.to_string()
                .contains("config c.json which is not in the archive"),
            "{err}"
        );
    }

    // ---- memory -------------------------------------------------------------------------------

    /// Counts what has been read from the archive file.
    struct Counting<R> {
        inner: R,
        consumed: Rc<Cell<u64>>,
    }

    impl<R: Read> Read for Counting<R> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.inner.read(buf)?;
            self.consumed.set(self.consumed.get() + n as u64);
            Ok(n)
        }
    }

    /// Hashes what it is given in 64 KiB reads, noting how much of the archive
    /// had been read when the big blob's first bytes arrived.
    struct StreamingSink {
        consumed: Rc<Cell<u64>>,
        consumed_at_first_read: Vec<(u64, u64)>,
    }

    impl BlobSink for StreamingSink {
        fn put(
            &mut self,
            _: Option<&str>,
            size: u64,
            data: &mut dyn Read,
        ) -> Result<String, String> {
            let mut buf = vec![0u8; 64 << 10];
            let mut hasher = Sha256::new();
            let mut total = 0u64;
            loop {
                let n = data.read(&mut buf).map_err(|e| e.to_string())?;
                if n == 0 {
                    break;
                }
                if total == 0 {
                    self.consumed_at_first_read
                        .push((size, self.consumed.get()));
                }
                hasher.update(&buf[..n]);
                total += n as u64;
            }
            assert_eq!(total, size);
            let hash = hasher.finalize();
            Ok(format!(
                "sha256:{}",
                hash.iter().map(|b| format!("{b:02x}")).collect::<String>()
            ))
        }
    }

    /// A 50 MiB layer reaches the sink while most of it is still unread, and
    /// nothing but the small JSON files is kept in memory.
    #[test]
    fn big_layer_is_streamed_not_buffered() {
        const BIG: u64 = 50 << 20;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.tar");
        let (config, manifest, layer_digest) = {
            let mut hasher = Sha256::new();
            io::copy(&mut io::repeat(0).take(BIG), &mut hasher).unwrap();
            let layer_digest = format!("sha256:{:x}", hasher.finalize());
            let config = serde_json::to_vec(&serde_json::json!({
                "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
            }))
            .unwrap();
            let manifest = serde_json::to_vec(&serde_json::json!({
                "schemaVersion": 2, "mediaType": MEDIA_TYPE_OCI_MANIFEST,
                "config": descriptor(MEDIA_TYPE_OCI_CONFIG, &config),
                "layers": [{"mediaType": MEDIA_TYPE_OCI_LAYER,
                            "digest": layer_digest, "size": BIG}],
            }))
            .unwrap();
            (config, manifest, layer_digest)
        };
        let index = index_of(vec![descriptor(MEDIA_TYPE_OCI_MANIFEST, &manifest)]);
        {
            let file = std::fs::File::create(&path).unwrap();
            let mut b = tar::Builder::new(io::BufWriter::new(file));
            let mut h = tar::Header::new_gnu();
            h.set_mode(0o644);
            h.set_size(BIG);
            b.append_data(&mut h, blob_path(&layer_digest), io::repeat(0).take(BIG))
                .unwrap();
            for (p, bytes) in [
                (blob_path(&sha256_digest(&config)), &config),
                (blob_path(&sha256_digest(&manifest)), &manifest),
                ("index.json".to_string(), &index),
            ] {
                h.set_size(bytes.len() as u64);
                b.append_data(&mut h, p, bytes.as_slice()).unwrap();
            }
            b.into_inner().unwrap().flush().unwrap();
        }
        let gz_path = dir.path().join("big.tar.gz");
        {
            let mut enc = flate2::write::GzEncoder::new(
                std::fs::File::create(&gz_path).unwrap(),
                flate2::Compression::fast(),
            );
            io::copy(&mut std::fs::File::open(&path).unwrap(), &mut enc).unwrap();
            enc.finish().unwrap();
        }

        for p in [&path, &gz_path] {
            let consumed = Rc::new(Cell::new(0));
            let input = Counting {
                inner: std::fs::File::open(p).unwrap(),
                consumed: Rc::clone(&consumed),
            };
            let mut sink = StreamingSink {
                consumed: Rc::clone(&consumed),
                consumed_at_first_read: Vec::new(),
            };
            let contents = read_contents(input, &mut sink).unwrap();
            let (size, consumed_then) = sink.consumed_at_first_read[0];
            assert_eq!(size, BIG);
            assert!(
                consumed_then < 1 << 20,
                "{p:?}: {consumed_then} bytes of the archive read before the layer reached the sink"
            );
            assert!(
                contents.cached_bytes < 4096,
                "{p:?}: {} bytes kept in memory",
                contents.cached_bytes
            );
            assert!(contents.files[blob_path(&layer_digest).as_str()]
                .cached
                .is_none());
            let images = oci_images(&contents).unwrap();
            assert_eq!(images[0].target.digest, sha256_digest(&manifest));
        }
    }

    #[test]
    fn cache_stops_at_its_total_limit() {
        // 70 JSON-looking 1 MiB blobs: the first 64 are kept, the rest only streamed.
        let blob = {
            let mut v = vec![b' '; 1 << 20];
            v[0] = b'{';
            v
        };
        let mut b = tar::Builder::new(Vec::new());
        for i in 0..70u8 {
            let mut blob = blob.clone();
            blob[1] = i;
            let mut h = tar::Header::new_gnu();
            h.set_size(blob.len() as u64);
            h.set_mode(0o644);
            b.append_data(&mut h, format!("f{i}.json"), blob.as_slice())
                .unwrap();
        }
        let tar = b.into_inner().unwrap();
        let contents = read_contents(tar.as_slice(), &mut TestSink::default()).unwrap();
        assert_eq!(contents.cached_bytes, MAX_CACHED_TOTAL);
        assert!(contents.cache_full);
    }

    #[test]
    fn paths_are_normalized() {
        assert_eq!(normalize_path("./blobs//sha256/./x"), "blobs/sha256/x");
        assert_eq!(normalize_path("/a/b/../c"), "a/c");
        assert_eq!(
            link_target("a/layer.tar", "../b/layer.tar", true).as_deref(),
            Some("b/layer.tar")
        );
        assert_eq!(
            link_target("a/layer.tar", "b/layer.tar", false).as_deref(),
            Some("b/layer.tar")
        );
        assert_eq!(
            link_target("a/layer.tar", "/b/layer.tar", true).as_deref(),
            Some("b/layer.tar")
        );
        assert_eq!(link_target("a/layer.tar", "../../etc/passwd", true), None);
    }
}
