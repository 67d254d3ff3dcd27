//! A connection's IO that gives up on a client that stops reading: a
//! write that makes no progress for [`WRITE_TIMEOUT`] fails with
//! `TimedOut`, and hyper then drops the connection, its task and whatever
//! feeds its response (a watch, a followed log, a large list).
//!
//! Only writes are timed: hyper bounds the time to read a request head,
//! and a response that is streaming, however slowly, keeps writing.
//! Generic over the IO, so a TLS stream is wrapped the same way.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

/// How long a write may wait for the client to read.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// `inner` with its writes timed (see the module doc).
#[derive(Debug)]
pub struct WriteTimeout<T> {
    inner: T,
    timeout: Duration,
    /// Set while a write waits: when it fires, the write fails. Cleared
    /// by any progress.
    stalled: Option<Pin<Box<Sleep>>>,
}

impl<T> WriteTimeout<T> {
    pub fn new(inner: T, timeout: Duration) -> Self {
        WriteTimeout {
            inner,
            timeout,
            stalled: None,
        }
    }

    /// Passes on the outcome of a write-side poll: progress clears the
    /// timer, waiting starts it (or fails once it has fired).
    fn timed<R>(&mut self, cx: &mut Context<'_>, poll: Poll<io::Result<R>>) -> Poll<io::Result<R>> {
        if poll.is_ready() {
            self.stalled = None;
            return poll;
        }
        let timeout = self.timeout;
        let stalled = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match stalled.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client read nothing for the write timeout",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for WriteTimeout<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for WriteTimeout<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.timed(cx, poll)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.timed(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_flush(cx);
        self.timed(cx, poll)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.timed(cx, poll)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Longer than any write timeout here: a test that reaches it failed.
    const NEVER: Duration = Duration::from_secs(24 * 3600);

    #[tokio::test(start_paused = true)]
    async fn a_client_that_never_reads_fails_the_write() {
        let (server, _client) = tokio::io::duplex(16);
        let mut server = WriteTimeout::new(server, WRITE_TIMEOUT);
        let written = tokio::time::timeout(NEVER, server.write_all(&[b'x'; 64]))
            .await
            .expect("the write timed out on its own");
        assert_eq!(
            written.expect_err("nobody reads").kind(),
            io::ErrorKind::TimedOut
        );
    }

    #[tokio::test(start_paused = true)]
    async fn hyper_drops_a_connection_whose_client_stops_reading() {
        use http_body_util::Full;
        use hyper::body::Bytes;
        use hyper_util::rt::{TokioIo, TokioTimer};

        let (server, mut client) = tokio::io::duplex(4096);
        let service = hyper::service::service_fn(|_| async {
            Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(Bytes::from(
                vec![b'z'; 1 << 20],
            ))))
        });
        let connection = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .serve_connection(
                TokioIo::new(WriteTimeout::new(server, WRITE_TIMEOUT)),
                service,
            );
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .expect("request");
        // The client never reads the megabyte answered.
        let ended = tokio::time::timeout(NEVER, connection)
            .await
            .expect("the connection ended on its own");
        assert!(ended.is_err(), "the whole answer was written");
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_reader_keeps_the_connection() {
        let (server, mut client) = tokio::io::duplex(16);
        let mut server = WriteTimeout::new(server, WRITE_TIMEOUT);
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            let mut byte = [0u8; 1];
            // One byte per 20 s: each read is progress for the writer.
            while client.read(&mut byte).await.expect("read") == 1 {
                got.push(byte[0]);
                tokio::time::sleep(WRITE_TIMEOUT * 2 / 3).await;
            }
            got
        });
        server
            .write_all(&[b'y'; 64])
            .await
            .expect("slow but steady");
        server.shutdown().await.expect("shutdown");
        drop(server);
        assert_eq!(reader.await.expect("reader"), vec![b'y'; 64]);
    }

    #[tokio::test(start_paused = true)]
    async fn reads_are_not_timed() {
        let (server, mut client) = tokio::io::duplex(16);
        let mut server = WriteTimeout::new(server, WRITE_TIMEOUT);
        let read = tokio::spawn(async move {
            let mut byte = [0u8; 1];
            server.read_exact(&mut byte).await.map(|_| byte[0])
        });
        tokio::time::sleep(WRITE_TIMEOUT * 3).await;
        client.write_all(b"z").await.expect("write");
        assert_eq!(read.await.expect("task").expect("read"), b'z');
    }
}
