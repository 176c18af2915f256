//! The node's content-addressed blob store on its own disk.
//!
//! Layout under the data directory:
//! - `blobs/<algorithm>/<first two hex>/<hex>`: verified blobs, immutable;
//! - `uploads/<session id>`: the bytes of an open upload session on this node;
//! - `uploads/tmp-<uuid>`: a monolithic push being received.
//!
//! A blob becomes visible only by a hard link from a fully written, fsynced and verified file,
//! followed by an fsync of its directory, so a reader never sees a partial blob and a crash
//! never leaves one behind under a digest's name.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use ipcr_proto::Digest;

use super::read::BlobStream;

/// The node's local blob store.
#[derive(Clone, Debug)]
pub struct FsStore {
    blobs: PathBuf,
    uploads: PathBuf,
    /// When each blob was last read since the node started (for the cache's LRU order; the
    /// file's mtime stands in for blobs not read since).
    last_read: Arc<Mutex<HashMap<Digest, SystemTime>>>,
    /// Held while a blob's name is created or touched, and while an unrecorded copy is
    /// checked and deleted, so that the two never interleave.
    names: Arc<Mutex<()>>,
}

/// A stored blob, as the cache sees it.
#[derive(Debug, Clone)]
pub struct StoredBlob {
    /// Its digest.
    pub digest: Digest,
    /// Its size.
    pub size: u64,
    /// When it was last read (or stored).
    pub last_used: SystemTime,
}

/// fsync a directory so that entries created or renamed in it are durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

impl FsStore {
    /// Use (and create) the store under `data_dir`.
    pub fn open(data_dir: &Path) -> io::Result<FsStore> {
        let store = FsStore {
            blobs: data_dir.join("blobs"),
            uploads: data_dir.join("uploads"),
            last_read: Arc::new(Mutex::new(HashMap::new())),
            names: Arc::new(Mutex::new(())),
        };
        fs::create_dir_all(&store.blobs)?;
        fs::create_dir_all(&store.uploads)?;
        Ok(store)
    }

    /// The directories this store writes: `uploads/` (every push lands there first) and
    /// `blobs/`. The health probe checks that both take writes.
    pub fn dirs(&self) -> Vec<PathBuf> {
        vec![self.uploads.clone(), self.blobs.clone()]
    }

    /// Where a verified blob lives. Digests are validated hex, so this stays inside the store.
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        let hex = digest.hex();
        self.blobs
            .join(digest.algorithm().name())
            .join(&hex[..2])
            .join(hex)
    }

    /// The file holding an upload session's bytes on this node. Session ids are UUIDs we
    /// generated and validated, so this stays inside the store.
    pub fn upload_path(&self, id: &str) -> PathBuf {
        self.uploads.join(id)
    }

    /// A fresh temporary file path for a monolithic push.
    pub fn temp_path(&self) -> PathBuf {
        self.uploads.join(format!("tmp-{}", uuid::Uuid::new_v4()))
    }

    /// The upload directory (for the purger).
    pub fn uploads_dir(&self) -> &Path {
        &self.uploads
    }

    /// Size of a stored blob, if this node has it.
    pub fn stat(&self, digest: &Digest) -> io::Result<Option<u64>> {
        match fs::metadata(self.blob_path(digest)) {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Make the fully written, fsynced and verified file at `src` visible as `digest`.
    /// `src` stays in place (the caller removes it once the commit is replicated).
    ///
    /// The blob's inode change time (ctime) is now either way: a copy that already existed
    /// is touched, because the command recording this copy follows, and the garbage
    /// collector's janitor keeps unrecorded copies changed within the grace period.
    pub fn commit(&self, src: &Path, digest: &Digest) -> io::Result<()> {
        let dest = self.blob_path(digest);
        let dir = dest.parent().expect("blob path has a parent");
        if !dir.exists() {
            fs::create_dir_all(dir)?;
            sync_dir(dir.parent().expect("algorithm dir"))?;
            sync_dir(&self.blobs)?;
        }
        let names = self.names.lock().expect("names lock");
        match fs::hard_link(src, &dest) {
            Ok(()) => {}
            // Same digest, same bytes: someone committed it first.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return File::options()
                    .write(true)
                    .open(&dest)?
                    .set_modified(SystemTime::now());
            }
            Err(e) => return Err(e),
        }
        drop(names);
        sync_dir(dir)
    }

    /// Delete this node's copy of a blob the index does not record here, unless its inode
    /// changed less than `older_than` ago (a copy whose recording command may still be on
    /// its way). Answers the bytes deleted.
    pub fn remove_unrecorded(&self, digest: &Digest, older_than: Duration) -> io::Result<Option<u64>> {
        let path = self.blob_path(digest);
        let _names = self.names.lock().expect("names lock");
        let meta = match fs::metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let changed = SystemTime::UNIX_EPOCH
            + Duration::new(
                meta.ctime().max(0) as u64,
                meta.ctime_nsec().clamp(0, 999_999_999) as u32,
            );
        if SystemTime::now().duration_since(changed).unwrap_or_default() < older_than {
            return Ok(None);
        }
        Self::remove_file(&path)?;
        self.last_read.lock().expect("last-read lock").remove(digest);
        Ok(Some(meta.len()))
    }

    /// Stream `len` bytes of a blob from `start`.
    pub fn read_range(&self, digest: &Digest, start: u64, len: u64) -> io::Result<BlobStream> {
        let file = File::open(self.blob_path(digest))?;
        self.last_read
            .lock()
            .expect("last-read lock")
            .insert(digest.clone(), SystemTime::now());
        Ok(BlobStream::new(file, start, len))
    }

    /// Every blob stored here, with its size and when it was last used.
    pub fn list(&self) -> io::Result<Vec<StoredBlob>> {
        let last_read = self.last_read.lock().expect("last-read lock").clone();
        let mut out = Vec::new();
        for alg in fs::read_dir(&self.blobs)? {
            let alg = alg?;
            let Ok(algorithm) = alg.file_name().to_string_lossy().parse::<ipcr_proto::Algorithm>() else {
                continue;
            };
            for prefix in fs::read_dir(alg.path())? {
                for entry in fs::read_dir(prefix?.path())? {
                    let entry = entry?;
                    let name = entry.file_name().to_string_lossy().to_string();
                    let Ok(digest) = format!("{}:{name}", algorithm.name()).parse::<Digest>() else {
                        continue;
                    };
                    let meta = entry.metadata()?;
                    let last_used = last_read
                        .get(&digest)
                        .copied()
                        .or_else(|| meta.modified().ok())
                        .unwrap_or(SystemTime::UNIX_EPOCH);
                    out.push(StoredBlob {
                        digest,
                        size: meta.len(),
                        last_used,
                    });
                }
            }
        }
        Ok(out)
    }

    /// Remove a stored blob (evicted from the cache: the IPFS backend holds it).
    pub fn evict(&self, digest: &Digest) -> io::Result<()> {
        self.last_read.lock().expect("last-read lock").remove(digest);
        Self::remove_file(&self.blob_path(digest))
    }

    /// Remove a file of the uploads directory, ignoring absence.
    pub fn remove_file(path: &Path) -> io::Result<()> {
        match fs::remove_file(path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;

    use super::*;

    #[test]
    fn unrecorded_copies_go_only_once_old_enough() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsStore::open(dir.path()).unwrap();
        let digest = ipcr_proto::Algorithm::Sha256.digest_bytes(b"blob");
        let tmp = store.temp_path();
        fs::write(&tmp, b"blob").unwrap();
        store.commit(&tmp, &digest).unwrap();
        let hour = Duration::from_secs(3600);
        assert_eq!(store.remove_unrecorded(&digest, hour).unwrap(), None);
        assert_eq!(store.remove_unrecorded(&digest, Duration::ZERO).unwrap(), Some(4));
        assert_eq!(store.stat(&digest).unwrap(), None);
        assert_eq!(store.remove_unrecorded(&digest, Duration::ZERO).unwrap(), None);
        // A commit over an existing copy makes it new again.
        store.commit(&tmp, &digest).unwrap();
        let before = fs::metadata(store.blob_path(&digest)).unwrap().ctime_nsec();
        std::thread::sleep(Duration::from_millis(20));
        let other = store.temp_path();
        fs::write(&other, b"blob").unwrap();
        store.commit(&other, &digest).unwrap();
        let after = fs::metadata(store.blob_path(&digest)).unwrap();
        assert_ne!(after.ctime_nsec(), before);
        assert_eq!(
            store.remove_unrecorded(&digest, Duration::from_secs(1)).unwrap(),
            None
        );
    }

    #[tokio::test]
    async fn commit_then_read_ranges() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsStore::open(dir.path()).unwrap();
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let digest = ipcr_proto::Algorithm::Sha256.digest_bytes(&data);
        assert_eq!(store.stat(&digest).unwrap(), None);
        let tmp = store.temp_path();
        fs::write(&tmp, &data).unwrap();
        store.commit(&tmp, &digest).unwrap();
        store.commit(&tmp, &digest).unwrap(); // idempotent
        assert_eq!(store.stat(&digest).unwrap(), Some(data.len() as u64));
        for (start, len) in [(0u64, data.len() as u64), (5, 10), (1_048_570, 1_048_600)] {
            let mut s = store.read_range(&digest, start, len).unwrap();
            let mut got = Vec::new();
            while let Some(chunk) = s.next().await {
                got.extend_from_slice(&chunk.unwrap());
            }
            assert_eq!(got, &data[start as usize..(start + len) as usize]);
        }
        let mut s = store.read_range(&digest, 10, data.len() as u64).unwrap();
        let mut saw_error = false;
        while let Some(chunk) = s.next().await {
            saw_error |= chunk.is_err();
        }
        assert!(saw_error, "reading past the end must fail, not truncate silently");
    }
}
