//! The CRI log line format: `<timestamp> <stream> <tag> <content>\n`.
//!
//! Writing follows containerd's CRI plugin (`pkg/cri/io/logger.go`), which
//! the kubelet's reader expects: a line is split into `P` (partial) records
//! of at most [`MAX_LINE_SIZE`] content bytes and one final `F` record; the
//! timestamp always has nine fractional digits so records sort and align.
//!
//! Two deliberate differences:
//! - a `\r` before the newline stays in the content (containerd drops it),
//!   so a reader gets back exactly the bytes the container wrote;
//! - output that ends without a newline when the stream closes is an `F`
//!   record (containerd writes `P`): nothing will ever continue it, so it
//!   is a whole line, and readers print it with a newline like every other.

use std::fmt;

/// Longest content of one record, as containerd's default
/// `max_container_log_line_size`: longer lines become `P` records.
pub const MAX_LINE_SIZE: usize = 16 * 1024;

/// Which of the container's output streams a record came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

impl fmt::Display for Stream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A record's timestamp as the kubelet writes it (RFC 3339, UTC, always
/// nine fractional digits), e.g. `2016-10-06T00:17:09.669794202Z`.
pub fn format_timestamp(at: jiff::Timestamp) -> String {
    format!("{at:.9}")
}

/// Appends one record to `out`.
fn push_record(out: &mut Vec<u8>, timestamp: &str, stream: Stream, partial: bool, content: &[u8]) {
    out.reserve(timestamp.len() + content.len() + 12);
    out.extend_from_slice(timestamp.as_bytes());
    out.push(b' ');
    out.extend_from_slice(stream.as_str().as_bytes());
    out.extend_from_slice(if partial { b" P " } else { b" F " });
    out.extend_from_slice(content);
    out.push(b'\n');
}

/// Cuts one stream's bytes into records. Each stream needs its own: a line
/// of stdout is not finished by a newline on stderr.
#[derive(Debug)]
pub struct LineSplitter {
    stream: Stream,
    max_line: usize,
    /// The start of a line whose newline has not arrived yet; never longer
    /// than `max_line` (anything beyond went out as a `P` record).
    pending: Vec<u8>,
}

impl LineSplitter {
    pub fn new(stream: Stream) -> Self {
        Self::with_max_line(stream, MAX_LINE_SIZE)
    }

    /// `max_line` other than [`MAX_LINE_SIZE`] is for tests; 0 counts as 1.
    pub fn with_max_line(stream: Stream, max_line: usize) -> Self {
        LineSplitter {
            stream,
            max_line: max_line.max(1),
            pending: Vec::new(),
        }
    }

    /// Appends to `out` every record that `data` completes, stamped
    /// `timestamp` (the time the bytes were read: what completes a line is
    /// what dates it, as in containerd). The rest waits for more data.
    pub fn push(&mut self, data: &[u8], timestamp: &str, out: &mut Vec<u8>) {
        let mut rest = data;
        while let Some(newline) = rest.iter().position(|&b| b == b'\n') {
            let (segment, after) = (&rest[..newline], &rest[newline + 1..]);
            if self.pending.is_empty() {
                self.push_line(segment, timestamp, out);
            } else {
                // Reuse the allocation: take the buffer out, complete it,
                // put it back empty.
                let mut line = std::mem::take(&mut self.pending);
                line.extend_from_slice(segment);
                self.push_line(&line, timestamp, out);
                line.clear();
                self.pending = line;
            }
            rest = after;
        }
        self.pending.extend_from_slice(rest);
        // More than a record's worth and still no newline: the line is
        // certainly longer than a record, so the full chunks can go now.
        let mut start = 0;
        while self.pending.len() - start > self.max_line {
            let chunk = &self.pending[start..start + self.max_line];
            push_record(out, timestamp, self.stream, true, chunk);
            start += self.max_line;
        }
        self.pending.drain(..start);
    }

    /// The stream ended: whatever was left without a newline becomes the
    /// final `F` record.
    pub fn finish(&mut self, timestamp: &str, out: &mut Vec<u8>) {
        if !self.pending.is_empty() {
            let line = std::mem::take(&mut self.pending);
            self.push_line(&line, timestamp, out);
        }
    }

    /// One whole line (without its newline): `P` chunks, then the `F` rest.
    fn push_line(&self, mut line: &[u8], timestamp: &str, out: &mut Vec<u8>) {
        while line.len() > self.max_line {
            push_record(out, timestamp, self.stream, true, &line[..self.max_line]);
            line = &line[self.max_line..];
        }
        push_record(out, timestamp, self.stream, false, line);
    }
}

/// One record of a CRI log file, borrowed from the line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CriLine<'a> {
    pub timestamp: &'a str,
    /// `stdout` or `stderr`.
    pub stream: &'a str,
    /// A `P` record: the line goes on in the next record of this stream.
    pub partial: bool,
    /// The output bytes, without the newline the record ends with.
    pub content: &'a [u8],
}

/// Parses one record (a trailing `\n` is allowed and dropped). None for
/// anything that is not a CRI record, e.g. the raw output of an older
/// podkeeper that wrote plain files: readers print such lines as they are.
///
/// Tags may carry more than `P`/`F` after a `:` (the format reserves it);
/// only the first one counts.
pub fn parse_line(line: &[u8]) -> Option<CriLine<'_>> {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let mut fields = line.splitn(4, |&b| b == b' ');
    let timestamp = std::str::from_utf8(fields.next()?).ok()?;
    let stream = match fields.next()? {
        b"stdout" => "stdout",
        b"stderr" => "stderr",
        _ => return None,
    };
    let tags = fields.next()?;
    let partial = match tags.split(|&b| b == b':').next()? {
        b"P" => true,
        b"F" => false,
        _ => return None,
    };
    let content = fields.next().unwrap_or_default();
    timestamp.parse::<jiff::Timestamp>().ok()?;
    Some(CriLine {
        timestamp,
        stream,
        partial,
        content,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TS: &str = "2016-10-06T00:17:09.669794202Z";

    /// Feeds `chunks` to a splitter with max line `max`, then EOF; returns
    /// the records as (tag, content) pairs, checking every line parses.
    fn split(chunks: &[&[u8]], max: usize) -> Vec<(char, Vec<u8>)> {
        let mut splitter = LineSplitter::with_max_line(Stream::Stdout, max);
        let mut out = Vec::new();
        for chunk in chunks {
            splitter.push(chunk, TS, &mut out);
        }
        splitter.finish(TS, &mut out);
        out.split_inclusive(|&b| b == b'\n')
            .map(|line| {
                let record = parse_line(line).expect("a CRI record");
                assert_eq!(record.timestamp, TS);
                assert_eq!(record.stream, "stdout");
                let tag = if record.partial { 'P' } else { 'F' };
                (tag, record.content.to_vec())
            })
            .collect()
    }

    fn records(list: &[(char, &str)]) -> Vec<(char, Vec<u8>)> {
        list.iter()
            .map(|(t, c)| (*t, c.as_bytes().to_vec()))
            .collect()
    }

    #[test]
    fn newlines_end_records() {
        assert_eq!(
            split(&[b"one\ntwo\n"], 16),
            records(&[('F', "one"), ('F', "two")])
        );
    }

    #[test]
    fn lines_may_arrive_in_pieces() {
        assert_eq!(
            split(&[b"o", b"ne\ntw", b"o\n", b"three"], 16),
            records(&[('F', "one"), ('F', "two"), ('F', "three")])
        );
    }

    #[test]
    fn empty_lines_are_records_too() {
        assert_eq!(
            split(&[b"\n\na\n\n"], 16),
            records(&[('F', ""), ('F', ""), ('F', "a"), ('F', "")])
        );
        let mut out = Vec::new();
        LineSplitter::new(Stream::Stderr).push(b"\n", TS, &mut out);
        assert_eq!(out, format!("{TS} stderr F \n").into_bytes());
    }

    #[test]
    fn carriage_returns_are_content() {
        assert_eq!(
            split(&[b"dos\r\nline\r\n"], 16),
            records(&[('F', "dos\r"), ('F', "line\r")])
        );
    }

    #[test]
    fn a_last_line_without_newline_is_full_at_eof() {
        assert_eq!(split(&[b"no newline"], 16), records(&[('F', "no newline")]));
        assert_eq!(split(&[], 16), records(&[]));
    }

    #[test]
    fn long_lines_become_partial_records() {
        // Exactly the maximum: one full record.
        assert_eq!(split(&[b"abcd\n"], 4), records(&[('F', "abcd")]));
        // One byte more.
        assert_eq!(
            split(&[b"abcde\n"], 4),
            records(&[('P', "abcd"), ('F', "e")])
        );
        // Several chunks, arriving byte by byte.
        let bytes = b"abcdefghij\n";
        let pieces: Vec<&[u8]> = bytes.chunks(1).collect();
        assert_eq!(
            split(&pieces, 4),
            records(&[('P', "abcd"), ('P', "efgh"), ('F', "ij")])
        );
        // A multiple of the maximum ends in a full F chunk, not in an
        // empty one.
        assert_eq!(
            split(&[b"abcdefgh\n"], 4),
            records(&[('P', "abcd"), ('F', "efgh")])
        );
        // Long and unterminated at EOF.
        assert_eq!(
            split(&[b"abcdefghij"], 4),
            records(&[('P', "abcd"), ('P', "efgh"), ('F', "ij")])
        );
    }

    #[test]
    fn the_real_maximum_is_16_kib() {
        let mut line = vec![b'x'; MAX_LINE_SIZE * 2 + 10];
        line.push(b'\n');
        let mut splitter = LineSplitter::new(Stream::Stdout);
        let mut out = Vec::new();
        splitter.push(&line, TS, &mut out);
        let got: Vec<(bool, usize)> = out
            .split_inclusive(|&b| b == b'\n')
            .map(|l| {
                let r = parse_line(l).expect("record");
                (r.partial, r.content.len())
            })
            .collect();
        assert_eq!(
            got,
            [(true, MAX_LINE_SIZE), (true, MAX_LINE_SIZE), (false, 10)]
        );
    }

    #[test]
    fn partial_records_go_out_before_the_newline_arrives() {
        // A reader following the file sees a long line as it is produced,
        // and the splitter's memory stays bounded.
        let mut splitter = LineSplitter::with_max_line(Stream::Stdout, 4);
        let mut out = Vec::new();
        splitter.push(b"abcdefghij", TS, &mut out);
        assert_eq!(out.split_inclusive(|&b| b == b'\n').count(), 2);
        assert!(splitter.pending.len() <= 4);
    }

    #[test]
    fn parse_line_round_trips() {
        let at = jiff::Timestamp::from_nanosecond(1_475_713_029_669_794_202).expect("in range");
        let ts = format_timestamp(at);
        assert_eq!(ts, TS);
        // Whole seconds still get nine digits.
        assert_eq!(
            format_timestamp(jiff::Timestamp::from_second(0).expect("epoch")),
            "1970-01-01T00:00:00.000000000Z"
        );
        for (stream, content) in [
            (Stream::Stdout, &b"hello world"[..]),
            (Stream::Stderr, b""),
            (Stream::Stdout, b"  spaced  out  "),
            (Stream::Stderr, b"crlf\r"),
            (Stream::Stdout, b"\xff\x00binary"),
        ] {
            let mut out = Vec::new();
            let mut splitter = LineSplitter::new(stream);
            splitter.push(content, &ts, &mut out);
            splitter.push(b"\n", &ts, &mut out);
            let parsed = parse_line(&out).expect("parses");
            assert_eq!(
                parsed,
                CriLine {
                    timestamp: TS,
                    stream: stream.as_str(),
                    partial: false,
                    content,
                }
            );
        }
    }

    #[test]
    fn parse_line_accepts_the_kubelet_variants() {
        let line = format!("{TS} stdout P:x chunk");
        let p = parse_line(line.as_bytes()).expect("extra tags");
        assert!(p.partial);
        assert_eq!(p.content, b"chunk");
        // Trimmed fraction, as Go's RFC3339Nano prints it.
        assert!(parse_line(b"2016-10-06T00:17:09.5Z stderr F x\n").is_some());
        // No space after the tag: empty content.
        let line = format!("{TS} stdout F");
        let empty = parse_line(line.as_bytes()).expect("empty");
        assert_eq!(empty.content, b"");
    }

    #[test]
    fn parse_line_refuses_other_text() {
        for line in [
            &b""[..],
            b"plain output from a program\n",
            b"2016-10-06T00:17:09Z stdin F x",
            b"2016-10-06T00:17:09Z stdout X x",
            b"yesterday stdout F x",
        ] {
            assert!(parse_line(line).is_none(), "{line:?}");
        }
    }
}
