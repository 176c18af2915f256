//! Streaming a blob's bytes out, fast when they are in the page cache and without blocking the
//! HTTP worker when they are not.
//!
//! Each chunk is first read with `preadv2(RWF_NOWAIT)`, which copies what the page cache holds
//! and refuses (`EAGAIN`) instead of waiting for the disk. Cached bytes are thus read inline on
//! the worker, with no thread hand-off per chunk (a hand-off per chunk cost a third of a pull's
//! time); bytes that must come from the disk are read on the blocking pool.

use std::fs::File;
use std::future::Future;
use std::io;
use std::os::unix::fs::FileExt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use rustix::io::{Errno, ReadWriteFlags};
use tokio::task::JoinHandle;

/// Size of each read, and of each chunk handed to the response.
pub const READ_CHUNK: usize = 1 << 20;

/// The bytes `[offset, offset + left)` of a blob file.
pub struct BlobStream {
    file: Arc<File>,
    offset: u64,
    left: u64,
    pending: Option<JoinHandle<io::Result<Vec<u8>>>>,
}

impl BlobStream {
    /// Stream `len` bytes of `file` from `offset`.
    pub fn new(file: File, offset: u64, len: u64) -> BlobStream {
        BlobStream {
            file: Arc::new(file),
            offset,
            left: len,
            pending: None,
        }
    }

    /// Account for a chunk read from the file. An error ends the stream.
    fn chunk(&mut self, read: io::Result<Vec<u8>>) -> io::Result<Bytes> {
        let buf = match read {
            Ok(buf) if !buf.is_empty() => buf,
            Ok(_) => {
                self.left = 0;
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "blob shorter than its index entry",
                ));
            }
            Err(e) => {
                self.left = 0;
                return Err(e);
            }
        };
        self.offset += buf.len() as u64;
        self.left -= buf.len() as u64;
        Ok(Bytes::from(buf))
    }
}

impl futures::Stream for BlobStream {
    type Item = io::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if let Some(handle) = &mut this.pending {
                let read = match Pin::new(handle).poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(r) => r.map_err(io::Error::other).and_then(|r| r),
                };
                this.pending = None;
                return Poll::Ready(Some(this.chunk(read)));
            }
            if this.left == 0 {
                return Poll::Ready(None);
            }
            let want = this.left.min(READ_CHUNK as u64) as usize;
            let mut buf = vec![0u8; want];
            let mut slices = [io::IoSliceMut::new(&mut buf)];
            match rustix::io::preadv2(&*this.file, &mut slices, this.offset, ReadWriteFlags::NOWAIT) {
                Ok(n) => {
                    buf.truncate(n);
                    return Poll::Ready(Some(this.chunk(Ok(buf))));
                }
                // Not in the page cache (or no RWF_NOWAIT on this kernel or filesystem): read on
                // the blocking pool, then poll that read.
                Err(Errno::AGAIN) | Err(Errno::OPNOTSUPP) | Err(Errno::NOSYS) | Err(Errno::INVAL) => {
                    let (file, offset) = (this.file.clone(), this.offset);
                    this.pending = Some(tokio::task::spawn_blocking(move || {
                        let n = file.read_at(&mut buf, offset)?;
                        buf.truncate(n);
                        Ok(buf)
                    }));
                }
                Err(e) => return Poll::Ready(Some(this.chunk(Err(e.into())))),
            }
        }
    }
}
