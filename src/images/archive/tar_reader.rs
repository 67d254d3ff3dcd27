//! The single streaming pass over the archive: decompression, tar headers and
//! links, and handing every regular file to the sink while keeping small JSON.

use crate::images::digest::{is_sha256_digest, sha256_digest};
use std::cell::Cell;
use std::io::{self, Cursor, Read};
use std::rc::Rc;

use super::bounds::{entry_path, link_target, Bounded, Limits};
use super::{
    ArchiveError, BlobSink, Contents, FileInfo, DOCKER_MANIFEST_JSON, INDEX_JSON, MAX_CACHED_ENTRY,
    MAX_CACHED_TOTAL, MAX_METADATA, PEEK,
};

/// Compression recognized by magic bytes, for the archive as a whole and for each legacy layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Compression {
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

pub(super) const TRUNCATED: &str = "archive ended early (truncated?)";

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
pub(super) fn read_contents(
    input: impl Read,
    sink: &mut dyn BlobSink,
) -> Result<Contents, ArchiveError> {
    read_contents_within(input, sink, Limits::DEFAULT)
}

/// [`read_contents`] within `limits`.
pub(super) fn read_contents_within(
    input: impl Read,
    sink: &mut dyn BlobSink,
    limits: Limits,
) -> Result<Contents, ArchiveError> {
    let tar_eof = Rc::new(Cell::new(false));
    let mut input = input;
    let mut magic = [0u8; 4];
    let n = read_full(&mut input, &mut magic).map_err(|e| read_error(e, &tar_eof))?;
    if n == 0 {
        return Err(ArchiveError::NotAnArchive("the input is empty".into()));
    }
    let compression = Compression::detect(&magic[..n]);
    let raw = Cursor::new(magic[..n].to_vec()).chain(input);
    let decompressed: Box<dyn Read + '_> = match compression {
        Compression::Plain => Box::new(raw),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(raw)),
        Compression::Zstd => {
            Box::new(zstd::Decoder::new(raw).map_err(|e| read_error(e, &tar_eof))?)
        }
    };
    let (mut decompressed, budget) = Bounded::new(decompressed, limits);

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
        let read = entry
            .map_err(|e| read_error(e, &tar_eof))
            .and_then(|entry| {
                contents.entries += 1;
                // What the entry takes up in the archive: the PAX size if any
                // (`size()`), except for sparse files, whose `size()` is the
                // expanded one.
                let stored = if entry.header().entry_type().is_gnu_sparse() {
                    entry.header().entry_size().map_err(ArchiveError::Io)?
                } else {
                    entry.size()
                };
                budget.entry(contents.entries, entry.raw_file_position(), stored)?;
                read_entry(entry, &mut contents, sink, &tar_eof)
            });
        read.map_err(|e| budget.explain(e, contents.entries))?;
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
pub(super) fn normalize_path(path: &str) -> String {
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
    let path = entry_path(&String::from_utf8_lossy(&entry.path_bytes()))?;
    let kind = entry.header().entry_type();
    if kind.is_symlink() || kind.is_hard_link() {
        if let Some(target) = entry.link_name_bytes() {
            let target = link_target(&path, &String::from_utf8_lossy(&target), kind.is_symlink())?;
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
