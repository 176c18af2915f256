//! Writing a request body to an upload file while hashing it, on the blocking pool.
//!
//! The HTTP handler forwards the body's chunks through a bounded channel, so at most a few
//! chunks are in memory whatever the blob's size. A failed or short write leaves the file
//! exactly as long as it was before, so the session's acknowledged state and its bytes agree.
//! Upload files may be sparse: a node holds the chunks it received, at their offsets.

use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use ipcr_proto::{Algorithm, Digest};
use tokio::sync::mpsc;

use super::UploadError;
use super::direct::DirectWriter;
use super::hasher::ResumableHasher;
use super::leaves::LeafHasher;

/// One item of a forwarded request body; `Err` when the client's stream broke.
pub type BodyChunk = Result<Bytes, String>;

/// Chunks buffered between the HTTP handler and the writer.
pub const BODY_CHANNEL: usize = 32;

/// A request body being forwarded by the HTTP handler.
pub type Body = mpsc::Receiver<BodyChunk>;

/// Writeback is started every time this many bytes were written.
const FLUSH_EVERY: u64 = 32 << 20;

/// Starts writeback of an upload file while it is still being written, on a second thread, so
/// that the disk works during the transfer instead of only at the final `fdatasync` (the
/// difference between overlapping the disk with the network and adding them up). Whole blocks
/// written directly ([`DirectWriter`]) are on the disk already; this matters for the
/// page-cache part, which is everything where the filesystem refuses `O_DIRECT`.
struct Flusher<'scope> {
    tx: Option<std::sync::mpsc::SyncSender<()>>,
    handle: Option<std::thread::ScopedJoinHandle<'scope, ()>>,
    signalled: std::cell::Cell<u64>,
}

impl<'scope> Flusher<'scope> {
    fn start<'env>(scope: &'scope std::thread::Scope<'scope, 'env>, file: &File) -> io::Result<Self> {
        let file = file.try_clone()?;
        // One pending request at most: a flush that is still running covers the next one.
        let (tx, rx) = std::sync::mpsc::sync_channel::<()>(1);
        let handle = scope.spawn(move || {
            while rx.recv().is_ok() {
                // Errors surface at the writer's own final fdatasync.
                let _ = file.sync_data();
            }
        });
        Ok(Flusher {
            tx: Some(tx),
            handle: Some(handle),
            signalled: std::cell::Cell::new(0),
        })
    }

    fn wrote(&self, total: u64) {
        if total >= self.signalled.get() + FLUSH_EVERY {
            self.signalled.set(total);
            if let Some(tx) = &self.tx {
                let _ = tx.try_send(());
            }
        }
    }

    fn finish(mut self) {
        self.tx.take();
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Frames sent to a replica gather at least this many bytes.
const TEE_FRAME: usize = 1 << 20;

/// A replica's copy of a body, gathered into frames of [`TEE_FRAME`] bytes: a request body
/// arrives in pieces of a few KiB, and a few large frames cost the replica's connection, and
/// the replica, far less than tens of thousands of small ones.
struct Tee {
    tx: Option<mpsc::Sender<Bytes>>,
    pending: bytes::BytesMut,
}

impl Tee {
    fn new(tx: Option<mpsc::Sender<Bytes>>) -> Tee {
        Tee {
            tx,
            pending: bytes::BytesMut::new(),
        }
    }

    fn push(&mut self, chunk: &Bytes) {
        if self.tx.is_none() {
            return;
        }
        if self.pending.is_empty() && chunk.len() >= TEE_FRAME {
            self.send(chunk.clone());
            return;
        }
        if self.pending.capacity() == 0 {
            self.pending.reserve(TEE_FRAME + chunk.len());
        }
        self.pending.extend_from_slice(chunk);
        if self.pending.len() >= TEE_FRAME {
            let frame = self.pending.split().freeze();
            self.send(frame);
        }
    }

    /// A replica that stopped reading is dropped here and replaced afterwards, from the file.
    fn send(&mut self, frame: Bytes) {
        if self.tx.as_ref().is_some_and(|t| t.blocking_send(frame).is_err()) {
            self.tx = None;
        }
    }

    /// Send what is left and end the replica's stream.
    fn finish(&mut self) {
        if !self.pending.is_empty() {
            let frame = self.pending.split().freeze();
            self.send(frame);
        }
        self.tx = None;
    }
}

/// How a write treats what the file holds past the write's start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The write extends the acknowledged bytes: anything past `start` is the leftover of a
    /// write that was never acknowledged, and is cut first (and again if this write fails).
    Append,
    /// The write fills a hole of a sparse upload file (a chunk copied from its holder): the
    /// file's other bytes stay.
    Fill,
}

/// The running hashes of an upload.
#[derive(Clone)]
pub struct Hashes {
    /// The content hash.
    pub content: ResumableHasher,
    /// The CID's leaves, when an IPFS backend is configured.
    pub leaves: Option<LeafHasher>,
    /// CRC-32 of the bytes of the last [`write`]: what a replica's copy of a chunk is checked
    /// against.
    pub crc: u32,
    /// Whether `content` is fed (a replica's copy of a chunk only needs the CRC).
    hash_content: bool,
}

impl From<ResumableHasher> for Hashes {
    /// The content hash alone (repairs, caching, fills: no CID to compute).
    fn from(content: ResumableHasher) -> Self {
        Hashes {
            content,
            leaves: None,
            crc: 0,
            hash_content: true,
        }
    }
}

impl Hashes {
    /// The content hash and, with `leaves`, the CID's leaves.
    pub fn new(content: ResumableHasher, leaves: Option<LeafHasher>) -> Hashes {
        Hashes {
            leaves,
            ..Hashes::from(content)
        }
    }

    /// The CID's leaves (with `leaves`) and the CRC-32, not the content hash: for a body
    /// already verified against its digest on its way here (the pull-through cache's fetch).
    pub fn verified(leaves: Option<LeafHasher>) -> Hashes {
        Hashes {
            leaves,
            ..Hashes::crc_only()
        }
    }

    /// The CRC-32 alone: a replica's copy of a chunk the primary hashed. The primary computes
    /// the same CRC over the same bytes; equal CRCs make the primary's SHA-256 midstate valid
    /// for the replica's bytes, without a second SHA-256 over them (the design's "never
    /// re-hash what was already hashed").
    pub fn crc_only() -> Hashes {
        Hashes {
            hash_content: false,
            ..Hashes::from(ResumableHasher::new(ipcr_proto::Algorithm::Sha256))
        }
    }
}

/// Hashes the CID's leaves on a thread of its own, beside the writer: on two cores that keeps
/// the second SHA-256 off the request's critical path.
struct LeafThread<'scope> {
    tx: Option<std::sync::mpsc::SyncSender<Bytes>>,
    handle: std::thread::ScopedJoinHandle<'scope, LeafHasher>,
}

impl<'scope> LeafThread<'scope> {
    fn start<'env>(scope: &'scope std::thread::Scope<'scope, 'env>, mut leaves: LeafHasher) -> Self {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Bytes>(BODY_CHANNEL);
        let handle = scope.spawn(move || {
            while let Ok(chunk) = rx.recv() {
                leaves.update(&chunk);
            }
            leaves
        });
        LeafThread { tx: Some(tx), handle }
    }

    fn feed(&self, chunk: &Bytes) {
        if let Some(tx) = &self.tx {
            // The thread only stops when the sender is dropped.
            let _ = tx.send(chunk.clone());
        }
    }

    fn finish(mut self) -> LeafHasher {
        self.tx.take();
        self.handle.join().expect("the leaf hasher does not panic")
    }
}

/// Write `body` into the file at `path` from `start`, feeding it to `hashes`, and fsync (whole
/// blocks bypass the page cache, see [`DirectWriter`]). A file shorter than `start` gets a hole
/// (chunks held elsewhere). Returns the updated hashes and the number of bytes written. When
/// `expected` is known, the body must have exactly that length. Every chunk is also sent to
/// `tee` (a replica's stream) while it lasts.
pub fn write(
    path: PathBuf,
    start: u64,
    hashes: Hashes,
    mut body: Body,
    expected: Option<u64>,
    mut tee: Option<mpsc::Sender<Bytes>>,
    mode: Mode,
) -> Result<(Hashes, u64), UploadError> {
    let Hashes {
        content: mut hasher,
        leaves,
        hash_content,
        ..
    } = hashes;
    let mut crc = crc32fast::Hasher::new();
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)?;
    let len = file.metadata()?.len();
    if mode == Mode::Append && len > start {
        file.set_len(start)?;
    }
    let mut written = 0u64;
    let result = std::thread::scope(|scope| {
        let flusher = Flusher::start(scope, &file)?;
        let leaf_thread = leaves.map(|l| LeafThread::start(scope, l));
        let mut replica = Tee::new(tee.take());
        let mut out = DirectWriter::new(&file, &path, start);
        while let Some(chunk) = body.blocking_recv() {
            let chunk = chunk.map_err(UploadError::Aborted)?;
            written += chunk.len() as u64;
            if expected.is_some_and(|e| written > e) {
                return Err(UploadError::SizeInvalid(
                    "body longer than its declared length".into(),
                ));
            }
            if let Some(t) = &leaf_thread {
                t.feed(&chunk);
            }
            if hash_content {
                hasher.update(&chunk);
            }
            crc.update(&chunk);
            out.write(&chunk)?;
            replica.push(&chunk);
            flusher.wrote(written);
        }
        // The replica's stream ends now, so that it writes its tail and fsyncs while this node
        // does the same.
        replica.finish();
        out.finish()?;
        flusher.finish();
        if let Some(e) = expected
            && written != e
        {
            return Err(UploadError::SizeInvalid(format!(
                "body has {written} bytes, {e} declared"
            )));
        }
        // The chunk is acknowledged only after this returns, so it must be on disk.
        file.sync_data()?;
        Ok(leaf_thread.map(LeafThread::finish))
    });
    match result {
        Ok(leaves) => Ok((
            Hashes {
                content: hasher,
                leaves,
                crc: crc.finalize(),
                hash_content,
            },
            written,
        )),
        Err(e) => {
            if mode == Mode::Append {
                let _ = file.set_len(len.min(start));
            }
            Err(e)
        }
    }
}

/// Hash the first `len` bytes of a file with `algorithm` (for a closing digest whose
/// algorithm differs from the session's).
pub fn rehash(path: &Path, len: u64, algorithm: Algorithm) -> io::Result<Digest> {
    let mut hasher = ResumableHasher::new(algorithm);
    let mut file = File::open(path)?.take(len);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher.digest())
}

/// Make the upload file exactly `size` bytes long (creating it empty, or cutting the leftovers
/// of a chunk that was never acknowledged) and durable, before it is committed as a blob.
pub fn settle(path: &Path, size: u64) -> Result<(), UploadError> {
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)?;
    let len = f.metadata()?.len();
    if len < size {
        return Err(UploadError::Internal(format!(
            "upload file holds {len} bytes, session acknowledged {size}"
        )));
    }
    if len > size {
        f.set_len(size)?;
    }
    f.sync_all()?;
    Ok(())
}
