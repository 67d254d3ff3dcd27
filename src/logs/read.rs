//! Reading a CRI log file back as the container wrote it: the content of
//! each record without the timestamp/stream/tag prefix, `P` records joined
//! to the line they continue (for `podkeeper logs` and the HTTP API's pod
//! logs).
//!
//! Lines that are not CRI records (files written by an older podkeeper
//! that stored raw output) are printed as they are.
//!
//! Memory: files are read in chunks and printed as they are read, a tail
//! found in two passes over the file, so a reader holds one chunk and one
//! line whatever the file's size (rotation can be off, and then a file
//! has none); a line too long to hold is raw output, printed in pieces.

use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::ops::ControlFlow;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::cri::{parse_line, MAX_LINE_SIZE};

/// Which records are printed and how, for the options of the Kubernetes
/// log API (`kubectl logs --timestamps --since`); the default prints every
/// record's content.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Format {
    /// Prefix each line of output with the timestamp of the record that
    /// starts it, as the kubelet does.
    pub timestamps: bool,
    /// Leave out records written before this.
    pub since: Option<jiff::Timestamp>,
}

/// Bytes read from a log file at a time.
const CHUNK: usize = 64 * 1024;

/// The longest line held whole while reading: four times a CRI record's
/// content, so every record the logger writes fits with its prefix. A
/// longer line can only be raw output (see the module doc) and is printed
/// in pieces as it is read: a reader holds at most this plus one chunk,
/// whatever the file holds.
const MAX_HELD_LINE: usize = 4 * MAX_LINE_SIZE;

/// A piece of a log file as read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Piece<'a> {
    /// A whole line: a CRI record or a line of raw output.
    Line(&'a [u8]),
    /// Part of a line longer than [`MAX_HELD_LINE`]: the `first` starts
    /// it, the last ends in its newline.
    Overlong { bytes: &'a [u8], first: bool },
}

/// Cuts a file read in chunks into [`Piece`]s with their file offsets.
#[derive(Debug, Default)]
struct Splitter {
    /// Bytes read and not handed out yet: the start of a line whose
    /// newline is not read yet (a record being written right now).
    pending: Vec<u8>,
    /// The file offset of `pending`'s first byte.
    offset: u64,
    /// Whether `pending` continues an overlong line.
    overlong: bool,
}

impl Splitter {
    fn at(offset: u64) -> Self {
        Splitter {
            offset,
            ..Splitter::default()
        }
    }

    /// Reads at most one chunk from `file` at its position, which is
    /// where the last read ended, and hands `each` the pieces it
    /// completes. Returns the number of bytes read: 0 at the end.
    fn read(
        &mut self,
        file: &mut File,
        mut each: impl FnMut(u64, Piece) -> io::Result<()>,
    ) -> io::Result<usize> {
        let held = self.pending.len();
        self.pending.resize(held + CHUNK, 0);
        let read = loop {
            match file.read(&mut self.pending[held..]) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                other => break other,
            }
        };
        self.pending.truncate(held + *read.as_ref().unwrap_or(&0));
        let read = read?;
        let mut done = 0;
        for line in self.pending[..whole_lines(&self.pending)].split_inclusive(|&b| b == b'\n') {
            let piece = if std::mem::take(&mut self.overlong) {
                Piece::Overlong {
                    bytes: line,
                    first: false,
                }
            } else {
                Piece::Line(line)
            };
            each(self.offset + done as u64, piece)?;
            done += line.len();
        }
        if self.pending.len() - done > MAX_HELD_LINE {
            let first = !std::mem::replace(&mut self.overlong, true);
            let bytes = &self.pending[done..];
            each(self.offset + done as u64, Piece::Overlong { bytes, first })?;
            done = self.pending.len();
        }
        self.pending.drain(..done);
        self.offset += done as u64;
        Ok(read)
    }

    /// Hands out the unfinished last line, if any: for when output ends.
    fn finish(&mut self, mut each: impl FnMut(u64, Piece) -> io::Result<()>) -> io::Result<()> {
        let rest = std::mem::take(&mut self.pending);
        if rest.is_empty() {
            return Ok(());
        }
        let piece = if std::mem::take(&mut self.overlong) {
            Piece::Overlong {
                bytes: &rest,
                first: false,
            }
        } else {
            Piece::Line(&rest)
        };
        each(self.offset, piece)?;
        self.offset += rest.len() as u64;
        Ok(())
    }
}

/// Writes the content of one piece to `out`. `line_start` says whether
/// the output so far ends a line (a `P` record leaves it false); it
/// carries over between pieces of one file.
fn write_piece(
    piece: Piece,
    format: &Format,
    line_start: &mut bool,
    out: &mut impl Write,
) -> io::Result<()> {
    let line = match piece {
        Piece::Line(line) => line,
        Piece::Overlong { bytes, .. } => {
            out.write_all(bytes)?;
            *line_start = bytes.ends_with(b"\n");
            return Ok(());
        }
    };
    match parse_line(line) {
        Some(record) => {
            let wanted = format.since.is_none_or(|since| {
                record
                    .timestamp
                    .parse::<jiff::Timestamp>()
                    .is_ok_and(|at| at >= since)
            });
            if wanted {
                if format.timestamps && *line_start {
                    out.write_all(record.timestamp.as_bytes())?;
                    out.write_all(b" ")?;
                }
                out.write_all(record.content)?;
                if !record.partial {
                    out.write_all(b"\n")?;
                }
            }
            *line_start = !record.partial;
        }
        None => {
            out.write_all(line)?;
            *line_start = true;
        }
    }
    Ok(())
}

/// Calls `each` with the offset of every line of output that starts in
/// the whole lines of `file`, from its beginning, until it says to stop;
/// returns the offset where the whole lines end. A line is what the
/// container wrote between newlines: `P` records count with the record
/// that ends them.
fn line_starts(file: &mut File, mut each: impl FnMut(u64) -> ControlFlow<()>) -> io::Result<u64> {
    file.seek(SeekFrom::Start(0))?;
    let mut splitter = Splitter::at(0);
    let mut at_line_start = true;
    let mut stopped = false;
    loop {
        let read = splitter.read(file, |offset, piece| {
            if at_line_start && !stopped {
                stopped = each(offset).is_break();
            }
            at_line_start = match piece {
                Piece::Line(line) => parse_line(line).is_none_or(|r| !r.partial),
                Piece::Overlong { bytes, .. } => bytes.ends_with(b"\n"),
            };
            Ok(())
        })?;
        if read == 0 || stopped {
            return Ok(splitter.offset);
        }
    }
}

/// Where in `file` the last `lines` lines of output start: one pass
/// counts the lines, a second finds where the wanted ones start, so only
/// a chunk is held whatever the file's size.
fn tail_start(file: &mut File, lines: usize) -> io::Result<u64> {
    let mut total = 0u64;
    let end = line_starts(file, |_| {
        total += 1;
        ControlFlow::Continue(())
    })?;
    let Some(skip) = total.checked_sub(lines as u64) else {
        return Ok(0);
    };
    if lines == 0 {
        return Ok(end);
    }
    let (mut seen, mut start) = (0u64, end);
    line_starts(file, |offset| {
        if seen == skip {
            start = offset;
            return ControlFlow::Break(());
        }
        seen += 1;
        ControlFlow::Continue(())
    })?;
    Ok(start)
}

/// A log file being printed and, optionally, followed. It reads in
/// chunks and writes as it reads, holding at most a chunk and a line.
#[derive(Debug)]
pub struct LogReader {
    path: PathBuf,
    file: File,
    /// (device, inode) of `file`: another one at `path` means it rotated.
    identity: (u64, u64),
    splitter: Splitter,
    format: Format,
    /// Whether the output so far ends a line (see [`write_piece`]).
    line_start: bool,
}

impl LogReader {
    /// Opens `path` and writes its content to `out`: everything, or the
    /// last `tail` lines.
    pub fn open(path: &Path, tail: Option<usize>, out: &mut impl Write) -> io::Result<Self> {
        Self::open_formatted(path, tail, Format::default(), out)
    }

    /// Like [`LogReader::open`], printing records as `format` says, now
    /// and on every [`LogReader::poll`].
    pub fn open_formatted(
        path: &Path,
        tail: Option<usize>,
        format: Format,
        out: &mut impl Write,
    ) -> io::Result<Self> {
        let mut reader = Self::start(path, tail, format)?;
        reader.read_available(out)?;
        Ok(reader)
    }

    /// Opens `path` at the start of its last `tail` lines (or at its
    /// beginning) without printing anything yet: for callers that must
    /// know the file opened before they answer.
    pub fn start(path: &Path, tail: Option<usize>, format: Format) -> io::Result<Self> {
        let mut file = File::open(path)?;
        let metadata = file.metadata()?;
        let start = match tail {
            Some(lines) => tail_start(&mut file, lines)?,
            None => 0,
        };
        file.seek(SeekFrom::Start(start))?;
        Ok(LogReader {
            path: path.into(),
            file,
            identity: (metadata.dev(), metadata.ino()),
            splitter: Splitter::at(start),
            format,
            line_start: true,
        })
    }

    /// Writes what was appended since the last call, following the file
    /// through a rotation: the rest of the old file, then the new one.
    /// Returns whether anything new was read.
    pub fn poll(&mut self, out: &mut impl Write) -> io::Result<bool> {
        // Look for a rotation first, then drain: the logger never writes
        // to a file after renaming it, so the old file is complete once a
        // new one is at the path.
        let rotated = fs::metadata(&self.path)
            .ok()
            .filter(|m| (m.dev(), m.ino()) != self.identity);
        let mut progressed = self.read_available(out)?;
        if let Some(metadata) = rotated {
            if let Ok(file) = File::open(&self.path) {
                // A torn last record of the old file is printed as it is.
                self.finish(out)?;
                self.file = file;
                self.identity = (metadata.dev(), metadata.ino());
                self.splitter = Splitter::at(0);
                progressed |= self.read_available(out)?;
            }
        }
        Ok(progressed)
    }

    /// Writes an unfinished last record, if any: for when output ends.
    pub fn finish(&mut self, out: &mut impl Write) -> io::Result<()> {
        let (format, line_start) = (&self.format, &mut self.line_start);
        self.splitter
            .finish(|_, piece| write_piece(piece, format, line_start, out))
    }

    /// Writes the file's content from where the last read ended to its
    /// end, chunk by chunk. Returns whether anything was read.
    pub fn read_available(&mut self, out: &mut impl Write) -> io::Result<bool> {
        let mut progressed = false;
        loop {
            let (format, line_start) = (&self.format, &mut self.line_start);
            let read = self.splitter.read(&mut self.file, |_, piece| {
                write_piece(piece, format, line_start, out)
            })?;
            if read > 0 {
                progressed = true;
                continue;
            }
            // Truncated under us (not something the logger does): start over.
            if self.file.metadata()?.len() < self.file.stream_position()? {
                self.file.seek(SeekFrom::Start(0))?;
                self.splitter = Splitter::at(0);
                continue;
            }
            return Ok(progressed);
        }
    }
}

/// The length of the part of `data` that ends in a newline.
fn whole_lines(data: &[u8]) -> usize {
    data.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TS: &str = "2024-01-05T13:45:01.000000007Z";

    fn cri(records: &[(&str, &str)]) -> Vec<u8> {
        records
            .iter()
            .map(|(tag, content)| format!("{TS} stdout {tag} {content}\n"))
            .collect::<String>()
            .into_bytes()
    }

    /// What a reader of a file holding `data` prints at once.
    fn print(data: &[u8], tail: Option<usize>, format: Format) -> String {
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = tmp.path().join("0.log");
        fs::write(&path, data).expect("write");
        let mut out = Vec::new();
        LogReader::open_formatted(&path, tail, format, &mut out).expect("open");
        String::from_utf8(out).expect("utf-8")
    }

    fn content(data: &[u8]) -> String {
        print(data, None, Format::default())
    }

    #[test]
    fn prints_content_and_joins_partial_records() {
        let data = cri(&[
            ("F", "one"),
            ("P", "tw"),
            ("P", "o "),
            ("F", "parts"),
            ("F", ""),
        ]);
        assert_eq!(content(&data), "one\ntwo parts\n\n");
        // A trailing P (a line still being written) has no newline yet.
        assert_eq!(content(&cri(&[("P", "half")])), "half");
    }

    #[test]
    fn timestamps_start_lines_and_since_leaves_out_older_records() {
        let data = b"2024-01-05T13:45:01Z stdout F old\n\
2024-01-05T13:45:03Z stdout P ne\n\
2024-01-05T13:45:04Z stdout F w\n"
            .to_vec();
        let format = Format {
            timestamps: true,
            since: Some("2024-01-05T13:45:02Z".parse().expect("timestamp")),
        };
        assert_eq!(print(&data, None, format), "2024-01-05T13:45:03Z new\n");
    }

    #[test]
    fn prints_raw_lines_as_they_are() {
        let mut data = b"raw output\n".to_vec();
        data.extend(cri(&[("F", "cri")]));
        assert_eq!(content(&data), "raw output\ncri\n");
    }

    #[test]
    fn tail_counts_lines_of_output_not_records() {
        let data = cri(&[
            ("F", "a"),
            ("P", "b1"),
            ("F", "b2"),
            ("F", "c"),
            ("P", "d1"),
            ("P", "d2"),
            ("F", "d3"),
        ]);
        let tail = |n| print(&data, Some(n), Format::default());
        assert_eq!(tail(0), "");
        assert_eq!(tail(1), "d1d2d3\n");
        assert_eq!(tail(2), "c\nd1d2d3\n");
        assert_eq!(tail(3), "b1b2\nc\nd1d2d3\n");
        assert_eq!(tail(4), "a\nb1b2\nc\nd1d2d3\n");
        assert_eq!(tail(100), tail(4));
    }

    #[test]
    fn files_larger_than_a_chunk_print_and_tail_the_same() {
        // Records of varied lengths, some partial, across many chunks.
        let mut records = Vec::new();
        let mut expected = Vec::new();
        let mut rng = fastrand::Rng::with_seed(7);
        for i in 0..20_000 {
            let content = format!("{i}:{}", "x".repeat(rng.usize(0..200)));
            let partial = rng.u8(..) < 64;
            records.push((if partial { "P" } else { "F" }, content.clone()));
            expected.push(content);
            if !partial {
                expected.push("\n".into());
            }
        }
        records.push(("F", "end".into()));
        expected.push("end\n".into());
        let borrowed: Vec<(&str, &str)> = records.iter().map(|(t, c)| (*t, c.as_str())).collect();
        let data = cri(&borrowed);
        assert!(data.len() > 20 * CHUNK);
        let all: String = expected.concat();
        assert_eq!(content(&data), all);
        let lines: Vec<&str> = all.split_inclusive('\n').collect();
        for n in [1, 2, 1000, lines.len() - 1, lines.len(), lines.len() + 5] {
            let want = lines[lines.len().saturating_sub(n)..].concat();
            assert_eq!(print(&data, Some(n), Format::default()), want, "tail {n}");
        }
    }

    /// Records the largest single write, which is at least what the
    /// reader held at once.
    #[derive(Default)]
    struct Largest {
        out: Vec<u8>,
        largest: usize,
    }

    impl Write for Largest {
        fn write(&mut self, data: &[u8]) -> io::Result<usize> {
            self.largest = self.largest.max(data.len());
            self.out.extend_from_slice(data);
            Ok(data.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_huge_line_is_printed_in_bounded_pieces() {
        // Raw output (no CRI prefix) of 3 MiB in one line, then records.
        let mut data = vec![b'r'; 3 << 20];
        data.push(b'\n');
        data.extend(cri(&[("F", "after")]));
        let mut unterminated = cri(&[("F", "before")]);
        unterminated.extend(vec![b'u'; 3 << 20]);
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = tmp.path().join("0.log");
        for (file, tail) in [(&data, None), (&data, Some(2)), (&unterminated, None)] {
            fs::write(&path, file).expect("write");
            let mut out = Largest::default();
            let mut reader = LogReader::open(&path, tail, &mut out).expect("open");
            reader.finish(&mut out).expect("finish");
            // At most a held line (64 KiB) and a chunk (64 KiB) at once.
            assert!(out.largest <= 128 * 1024, "a write of {}", out.largest);
            let printed = String::from_utf8(out.out).expect("utf-8");
            if file == &data {
                assert_eq!(printed, format!("{}\nafter\n", "r".repeat(3 << 20)));
            } else {
                assert_eq!(printed, format!("before\n{}", "u".repeat(3 << 20)));
            }
        }
        // The tail counts the huge line as one line.
        fs::write(&path, &data).expect("write");
        assert_eq!(print(&data, Some(1), Format::default()), "after\n");
    }

    #[test]
    fn follows_appends_and_rotation() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = tmp.path().join("0.log");
        fs::write(&path, cri(&[("F", "a"), ("F", "b")])).expect("write");
        let mut out = Vec::new();
        let mut reader = LogReader::open(&path, Some(1), &mut out).expect("open");
        assert_eq!(String::from_utf8_lossy(&out), "b\n");

        // Appends, the last record still being written.
        let mut file = fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .expect("open");
        let half = cri(&[("F", "d")]);
        file.write_all(&cri(&[("F", "c")])).expect("write");
        file.write_all(&half[..10]).expect("write");
        out.clear();
        assert!(reader.poll(&mut out).expect("poll"));
        assert_eq!(String::from_utf8_lossy(&out), "c\n");
        file.write_all(&half[10..]).expect("write");
        // Rotation: the rest of the old file, then the new one.
        fs::rename(&path, tmp.path().join("0.log.1")).expect("rename");
        fs::write(&path, cri(&[("F", "e")])).expect("write");
        out.clear();
        assert!(reader.poll(&mut out).expect("poll"));
        assert_eq!(String::from_utf8_lossy(&out), "d\ne\n");
        out.clear();
        assert!(!reader.poll(&mut out).expect("poll"));
        assert!(out.is_empty());
    }
}
