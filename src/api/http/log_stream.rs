//! Sending a container log as a response body: the file is read in
//! chunks on the blocking pool and written into a bounded channel, whole
//! or followed, so a request holds a few chunks whatever the file's size
//! and a client that reads slowly only makes its own reader wait.

use std::io::{self, Write};
use std::time::Duration;

use hyper::body::Bytes;
use tokio::sync::mpsc;

use crate::logs::read::LogReader;

/// The most one chunk of the body holds.
const CHUNK: usize = 64 * 1024;

/// Chunks waiting for a slow client.
pub const BACKLOG: usize = 4;

/// How often a followed log is read for new output.
const FOLLOW_INTERVAL: Duration = Duration::from_millis(200);

/// Writes into a response body's channel in chunks of at most [`CHUNK`]
/// bytes, waiting while the client is behind. Past `limit` bytes (the
/// request's `limitBytes`) or once the client went away, writes fail,
/// which ends the reading.
pub struct ChannelWriter {
    tx: mpsc::Sender<Bytes>,
    buffer: Vec<u8>,
    /// Bytes still allowed.
    left: u64,
}

impl ChannelWriter {
    pub fn new(tx: mpsc::Sender<Bytes>, limit: u64) -> Self {
        ChannelWriter {
            tx,
            buffer: Vec::new(),
            left: limit,
        }
    }

    fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.left == 0 {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "limitBytes reached",
            ));
        }
        let room = usize::try_from(self.left).unwrap_or(usize::MAX);
        let n = data.len().min(CHUNK - self.buffer.len()).min(room);
        self.buffer.extend_from_slice(&data[..n]);
        self.left -= n as u64;
        if self.buffer.len() >= CHUNK || self.left == 0 {
            self.flush()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::take(&mut self.buffer));
        self.tx
            .blocking_send(chunk)
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the client went away"))
    }
}

/// Sends what `reader` reads into `out`: the file to its end, and with
/// `follow` what is appended (through rotations) for as long as it says
/// the file is current. Ends early when `out` refuses more. Runs on the
/// blocking pool.
pub fn send(
    mut reader: LogReader,
    follow: Option<&dyn Fn() -> bool>,
    out: &mut ChannelWriter,
) -> io::Result<()> {
    reader.read_available(out)?;
    if let Some(current) = follow {
        loop {
            out.flush()?;
            std::thread::sleep(FOLLOW_INTERVAL);
            if out.is_closed() {
                return Ok(());
            }
            // Asked before the last read: output written before a
            // restart is read before following ends.
            let still = current();
            reader.poll(out)?;
            if !still {
                break;
            }
        }
    }
    reader.finish(out)?;
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logs::read::Format;

    /// The chunks a whole (not followed) log of `data` is sent in.
    fn chunks(data: &[u8], limit: u64) -> Vec<Bytes> {
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = tmp.path().join("0.log");
        std::fs::write(&path, data).expect("write");
        let reader = LogReader::start(&path, None, Format::default()).expect("open");
        let (tx, mut rx) = mpsc::channel(1);
        let sender = std::thread::spawn(move || {
            let _ = send(reader, None, &mut ChannelWriter::new(tx, limit));
        });
        let mut got = Vec::new();
        while let Some(chunk) = rx.blocking_recv() {
            got.push(chunk);
        }
        sender.join().expect("sender");
        got
    }

    fn raw_lines(n: usize) -> Vec<u8> {
        (0..n)
            .flat_map(|i| format!("line {i}\n").into_bytes())
            .collect()
    }

    #[test]
    fn a_large_log_goes_out_in_bounded_chunks() {
        let data = raw_lines(200_000);
        let got = chunks(&data, u64::MAX);
        assert!(got.len() > 1);
        assert!(got.iter().all(|c| c.len() <= CHUNK));
        assert_eq!(got.concat(), data);
    }

    #[test]
    fn limit_bytes_cuts_the_output_exactly() {
        let data = raw_lines(50_000);
        for limit in [
            0,
            1,
            7,
            CHUNK as u64,
            CHUNK as u64 + 3,
            data.len() as u64 + 10,
        ] {
            let got = chunks(&data, limit).concat();
            let want = &data[..data.len().min(usize::try_from(limit).expect("limit"))];
            assert_eq!(got, want, "limit {limit}");
        }
    }

    #[test]
    fn a_client_gone_ends_the_reading() {
        let (tx, rx) = mpsc::channel(1);
        drop(rx);
        let mut out = ChannelWriter::new(tx, u64::MAX);
        out.write_all(b"x").expect("buffered");
        assert_eq!(
            out.flush().expect_err("gone").kind(),
            io::ErrorKind::BrokenPipe
        );
    }
}
