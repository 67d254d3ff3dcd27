//! A blob transfer that checks its own length and digest as it streams.

use crate::images::digest::hex;
use bytes::Bytes;
use futures::stream::{BoxStream, Stream};
use sha2::{Digest as _, Sha256};
use std::pin::Pin;
use std::task::{Context, Poll};

use super::{chain, RegistryError};

/// A blob body that checks its own length and sha256, ending after the first error.
pub(super) struct VerifiedBlob {
    inner: BoxStream<'static, std::io::Result<Bytes>>,
    hasher: Sha256,
    digest: String,
    size: u64,
    received: u64,
    what: String,
    host: String,
    done: bool,
}

impl VerifiedBlob {
    pub(super) fn new(
        inner: BoxStream<'static, std::io::Result<Bytes>>,
        digest: &str,
        size: u64,
        what: String,
        host: String,
    ) -> VerifiedBlob {
        VerifiedBlob {
            inner,
            hasher: Sha256::new(),
            digest: digest.to_string(),
            size,
            received: 0,
            what,
            host,
            done: false,
        }
    }

    fn stream_error(&self, err: std::io::Error) -> RegistryError {
        RegistryError::Unreachable(format!(
            "{}: transfer from registry {} failed after {} bytes: {}",
            self.what,
            self.host,
            self.received,
            chain(&err)
        ))
    }

    fn finish(&mut self) -> Option<RegistryError> {
        if self.received != self.size {
            return Some(RegistryError::Invalid(format!(
                "{}: got {} bytes, expected {}",
                self.what, self.received, self.size
            )));
        }
        let actual = format!("sha256:{}", hex(&self.hasher.finalize_reset()));
        (actual != self.digest).then(|| {
            RegistryError::Invalid(format!(
                "{}: content has digest {actual}, not {}",
                self.what, self.digest
            ))
        })
    }
}

impl Stream for VerifiedBlob {
    type Item = Result<Bytes, RegistryError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        match this.inner.as_mut().poll_next(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Ok(chunk))) => {
                this.received += chunk.len() as u64;
                if this.received > this.size {
                    this.done = true;
                    return Poll::Ready(Some(Err(RegistryError::Invalid(format!(
                        "{}: more than the expected {} bytes",
                        this.what, this.size
                    )))));
                }
                this.hasher.update(&chunk);
                Poll::Ready(Some(Ok(chunk)))
            }
            Poll::Ready(Some(Err(err))) => {
                this.done = true;
                Poll::Ready(Some(Err(this.stream_error(err))))
            }
            Poll::Ready(None) => {
                this.done = true;
                Poll::Ready(this.finish().map(Err))
            }
        }
    }
}
