//! What one archive may make the agent do. An archive is as hostile as its
//! author: a gzip bomb decompresses to terabytes, a tar may hold millions of
//! empty entries, the tar reader keeps PAX and GNU long-name records in
//! memory whatever their size, and entry and link names may be absolute or
//! climb out with `..`. Archives are never unpacked onto a filesystem, but
//! names become keys the images are resolved through and appear in messages,
//! so a name that would escape anywhere is refused rather than reinterpreted.

use std::cell::Cell;
use std::io::{self, Read};
use std::rc::Rc;

use super::tar_reader::normalize_path;
use super::ArchiveError;

/// Bounds of one archive import.
#[derive(Debug, Clone, Copy)]
pub(super) struct Limits {
    /// Bytes of tar stream after decompression: far above any real image
    /// archive, low enough that a compression bomb ends in minutes.
    pub unpacked: u64,
    /// Tar entries (files, links, directories); real image archives hold a few hundred.
    pub entries: usize,
    /// Bytes of headers between the end of one entry's data and the start of
    /// the next one's: PAX records and GNU long names, which the tar reader
    /// buffers in memory whole.
    pub header_bytes: u64,
}

impl Limits {
    pub const DEFAULT: Limits = Limits {
        unpacked: 64 << 30,
        entries: 20_000,
        header_bytes: 1 << 20,
    };
}

/// Marker for an error raised because a limit was reached, so that it is
/// reported as such however the tar reader wraps it.
#[derive(Debug)]
struct Exceeded;

impl std::fmt::Display for Exceeded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("archive limit exceeded")
    }
}

impl std::error::Error for Exceeded {}

/// What the bounded reader and the pass share.
#[derive(Debug, Default)]
struct Progress {
    /// Bytes of tar stream read so far.
    read: Cell<u64>,
    /// Offset in the tar stream where the current entry's data (with padding) ends.
    data_end: Cell<u64>,
    /// Which limit stopped reading, once one was reached.
    exceeded: Cell<Option<Reached>>,
}

#[derive(Debug, Clone, Copy)]
enum Reached {
    Unpacked,
    Headers,
}

/// The decompressed tar stream, counted: fails once more than
/// [`Limits::unpacked`] bytes were read in all, or more than
/// [`Limits::header_bytes`] past the end of the last entry's data.
pub(super) struct Bounded<R> {
    inner: R,
    limits: Limits,
    progress: Rc<Progress>,
}

/// The pass's side of a [`Bounded`] reader.
#[derive(Clone)]
pub(super) struct Budget {
    limits: Limits,
    progress: Rc<Progress>,
}

impl<R: Read> Bounded<R> {
    pub fn new(inner: R, limits: Limits) -> (Bounded<R>, Budget) {
        let progress = Rc::new(Progress::default());
        let budget = Budget {
            limits,
            progress: Rc::clone(&progress),
        };
        (
            Bounded {
                inner,
                limits,
                progress,
            },
            budget,
        )
    }

    fn exceed(&self, why: Reached) -> io::Error {
        self.progress.exceeded.set(Some(why));
        io::Error::other(Exceeded)
    }
}

impl<R: Read> Read for Bounded<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let read = self.progress.read.get() + n as u64;
        self.progress.read.set(read);
        if read > self.limits.unpacked {
            return Err(self.exceed(Reached::Unpacked));
        }
        if read > self.progress.data_end.get() + self.limits.header_bytes {
            return Err(self.exceed(Reached::Headers));
        }
        Ok(n)
    }
}

impl Budget {
    /// Notes an entry handed out by the tar reader (the `count`th) whose data
    /// starts at `data_start` and is `size` bytes in the archive.
    pub fn entry(&self, count: usize, data_start: u64, size: u64) -> Result<(), ArchiveError> {
        if count > self.limits.entries {
            return Err(ArchiveError::Invalid(format!(
                "the archive holds more than {} entries",
                self.limits.entries
            )));
        }
        let padded = size.saturating_add(511) & !511;
        self.progress
            .data_end
            .set(data_start.saturating_add(padded));
        Ok(())
    }

    /// The error to report for a failed pass: the limit reached if one was,
    /// else `error` itself.
    pub fn explain(&self, error: ArchiveError, entries: usize) -> ArchiveError {
        let limits = &self.limits;
        match self.progress.exceeded.get() {
            Some(Reached::Unpacked) => ArchiveError::Invalid(format!(
                "the archive unpacks to more than {} bytes",
                limits.unpacked
            )),
            Some(Reached::Headers) => ArchiveError::Invalid(format!(
                "more than {} bytes of tar headers (PAX records or GNU long names) after entry {entries}",
                limits.header_bytes
            )),
            None => error,
        }
    }
}

/// Longest part of a hostile name quoted in a message.
const SHOWN: usize = 200;

/// `name` for an error message: quoted, escaped, and cut short.
fn shown(name: &str) -> String {
    match name.char_indices().nth(SHOWN) {
        Some((end, _)) => format!("{:?}…", &name[..end]),
        None => format!("{name:?}"),
    }
}

/// The normalized path of an entry named `name`, refusing names that are
/// absolute or climb above the archive root.
pub(super) fn entry_path(name: &str) -> Result<String, ArchiveError> {
    if name.starts_with('/') {
        return Err(ArchiveError::Invalid(format!(
            "entry {} has an absolute path",
            shown(name)
        )));
    }
    let path = normalize_path(name);
    if path.split('/').any(|part| part == "..") {
        return Err(ArchiveError::Invalid(format!(
            "entry {} climbs out of the archive with \"..\"",
            shown(name)
        )));
    }
    Ok(path)
}

/// Where the link entry at `link_path` (normalized) points, as a normalized
/// archive path. Symlink targets are relative to the link's directory,
/// hardlink targets to the archive root; absolute targets and targets that
/// leave the archive are refused, naming the entry.
pub(super) fn link_target(
    link_path: &str,
    target: &str,
    symlink: bool,
) -> Result<String, ArchiveError> {
    let kind = if symlink { "symlink" } else { "hard link" };
    if target.starts_with('/') {
        return Err(ArchiveError::Invalid(format!(
            "{kind} {} points to the absolute path {}",
            shown(link_path),
            shown(target)
        )));
    }
    let joined = match link_path.rsplit_once('/') {
        Some((dir, _)) if symlink => format!("{dir}/{target}"),
        _ => target.to_string(),
    };
    let normalized = normalize_path(&joined);
    if normalized.split('/').any(|part| part == "..") {
        return Err(ArchiveError::Invalid(format!(
            "{kind} {} points to {}, outside the archive",
            shown(link_path),
            shown(target)
        )));
    }
    Ok(normalized)
}
