//! Reading a CRI log file back as the container wrote it: the content of
//! each record without the timestamp/stream/tag prefix, `P` records joined
//! to the line they continue (for `podkeeper logs`).
//!
//! Lines that are not CRI records (files written by an older podkeeper
//! that stored raw output) are printed as they are.

use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::cri::parse_line;

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

/// Writes the content of the records in `data` (whole lines) to `out`.
/// `line_start` says whether the output so far ends a line (a `P` record
/// leaves it false); it carries over between calls on one file.
pub fn write_content(
    data: &[u8],
    format: &Format,
    line_start: &mut bool,
    out: &mut impl Write,
) -> io::Result<()> {
    for line in data.split_inclusive(|&b| b == b'\n') {
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
    }
    Ok(())
}

/// Where in `data` (whole lines) the last `lines` lines of output start. A
/// line is what the container wrote between newlines: `P` records count
/// with the record that ends them.
pub fn tail_start(data: &[u8], lines: usize) -> usize {
    let mut starts = std::collections::VecDeque::with_capacity(lines.min(4096) + 1);
    let mut offset = 0;
    let mut at_line_start = true;
    for record in data.split_inclusive(|&b| b == b'\n') {
        if at_line_start {
            starts.push_back(offset);
            if starts.len() > lines {
                starts.pop_front();
            }
        }
        at_line_start = parse_line(record).is_none_or(|r| !r.partial);
        offset += record.len();
    }
    starts.front().copied().unwrap_or(data.len())
}

/// A log file being printed and, optionally, followed.
#[derive(Debug)]
pub struct LogReader {
    path: PathBuf,
    file: File,
    /// (device, inode) of `file`: another one at `path` means it rotated.
    identity: (u64, u64),
    /// The end of what was read that has no newline yet: a record being
    /// written right now.
    pending: Vec<u8>,
    format: Format,
    /// Whether the output so far ends a line (see [`write_content`]).
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
        let mut file = File::open(path)?;
        let metadata = file.metadata()?;
        let mut data = Vec::with_capacity(usize::try_from(metadata.len()).unwrap_or(0));
        file.read_to_end(&mut data)?;
        let complete = whole_lines(&data);
        let start = tail.map_or(0, |n| tail_start(&data[..complete], n));
        let mut line_start = true;
        write_content(&data[start..complete], &format, &mut line_start, out)?;
        Ok(LogReader {
            path: path.into(),
            file,
            identity: (metadata.dev(), metadata.ino()),
            pending: data[complete..].to_vec(),
            format,
            line_start,
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
        let mut progressed = self.read_appended(out)?;
        if let Some(metadata) = rotated {
            if let Ok(file) = File::open(&self.path) {
                // A torn last record of the old file is printed as it is.
                self.finish(out)?;
                self.file = file;
                self.identity = (metadata.dev(), metadata.ino());
                progressed |= self.read_appended(out)?;
            }
        }
        Ok(progressed)
    }

    /// Writes an unfinished last record, if any: for when output ends.
    pub fn finish(&mut self, out: &mut impl Write) -> io::Result<()> {
        let rest = std::mem::take(&mut self.pending);
        write_content(&rest, &self.format, &mut self.line_start, out)
    }

    fn read_appended(&mut self, out: &mut impl Write) -> io::Result<bool> {
        let before = self.pending.len();
        // Truncated under us (not something the logger does): start over.
        let position = self.file.stream_position()?;
        if self.file.metadata()?.len() < position {
            self.file.seek(SeekFrom::Start(0))?;
        }
        self.file.read_to_end(&mut self.pending)?;
        if self.pending.len() == before {
            return Ok(false);
        }
        let complete = whole_lines(&self.pending);
        write_content(
            &self.pending[..complete],
            &self.format,
            &mut self.line_start,
            out,
        )?;
        self.pending.drain(..complete);
        Ok(true)
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

    fn content(data: &[u8]) -> String {
        let mut out = Vec::new();
        write_content(data, &Format::default(), &mut true, &mut out).expect("write");
        String::from_utf8(out).expect("utf-8")
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
        let mut out = Vec::new();
        write_content(&data, &format, &mut true, &mut out).expect("write");
        assert_eq!(String::from_utf8_lossy(&out), "2024-01-05T13:45:03Z new\n");
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
        let tail = |n| content(&data[tail_start(&data, n)..]);
        assert_eq!(tail(0), "");
        assert_eq!(tail(1), "d1d2d3\n");
        assert_eq!(tail(2), "c\nd1d2d3\n");
        assert_eq!(tail(3), "b1b2\nc\nd1d2d3\n");
        assert_eq!(tail(4), "a\nb1b2\nc\nd1d2d3\n");
        assert_eq!(tail(100), tail(4));
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
