//! A blob fetch from a cache's upstream, read while it is being written: the other pulls of
//! the blob, on this node or (through the cluster port) on others, stream its temporary file
//! from the start as it grows instead of waiting for the commit.
//!
//! What the file holds is what `put_whole` was given: the fetch's verified stream, whose last
//! chunk arrives only once the whole blob matched its digest. So a reader that got all `size`
//! bytes got the right blob, and a failed fetch ends every reader with an error.

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::AsyncReadExt as _;
use tokio::sync::{mpsc, watch};

/// How long a reader at the end of what is written waits before looking again.
const POLL: Duration = Duration::from_millis(10);
/// Bytes read at once.
const READ: usize = 256 << 10;

/// How a fetch ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Still fetching.
    Running,
    /// Stored and committed: the temporary file became the blob's file.
    Stored,
    /// Failed: the temporary file is gone or incomplete.
    Failed(String),
}

/// A fetch in flight on this node.
#[derive(Clone)]
pub struct InFlight {
    /// The file the blob is written to.
    pub tmp: PathBuf,
    /// Where it lies once stored.
    pub stored: PathBuf,
    /// Its size (the upstream's `Content-Length`).
    pub size: u64,
    outcome: watch::Receiver<Outcome>,
}

impl InFlight {
    /// A fetch about to write `size` bytes to `tmp`, moved to `stored` when done; the sender
    /// reports how it ended.
    pub fn new(tmp: PathBuf, stored: PathBuf, size: u64) -> (InFlight, watch::Sender<Outcome>) {
        let (tx, rx) = watch::channel(Outcome::Running);
        (
            InFlight {
                tmp,
                stored,
                size,
                outcome: rx,
            },
            tx,
        )
    }

    /// The blob from its first byte, as it is written: `size` bytes, or an error when the
    /// fetch fails first. Read on the current actix worker.
    pub fn read(self) -> mpsc::Receiver<Result<Bytes, String>> {
        let (tx, rx) = mpsc::channel(16);
        actix_web::rt::spawn(async move {
            if let Err(e) = self.copy(&tx).await {
                let _ = tx.send(Err(e)).await;
            }
        });
        rx
    }

    async fn copy(&self, tx: &mpsc::Sender<Result<Bytes, String>>) -> Result<(), String> {
        let mut file = self.open().await?;
        let (mut at, mut buf) = (0u64, vec![0u8; READ]);
        while at < self.size {
            let n = file
                .read(&mut buf)
                .await
                .map_err(|e| format!("reading {}: {e}", self.tmp.display()))?;
            if n > 0 {
                at += n as u64;
                if tx.send(Ok(Bytes::copy_from_slice(&buf[..n]))).await.is_err() {
                    return Ok(());
                }
                continue;
            }
            // At the end of what is written so far. The open file outlives the rename to the
            // blob's name, so a stored fetch reads on to its end. (The state is copied out in
            // a statement of its own: a guard held across an await blocks the sender.)
            let state = self.outcome.borrow().clone();
            match state {
                Outcome::Failed(e) => return Err(format!("the fetch failed: {e}")),
                Outcome::Stored => {
                    let n = file.read(&mut buf).await.map_err(|e| e.to_string())?;
                    if n == 0 {
                        return Err(format!("the stored blob ends after {at} of {} bytes", self.size));
                    }
                    at += n as u64;
                    if tx.send(Ok(Bytes::copy_from_slice(&buf[..n]))).await.is_err() {
                        return Ok(());
                    }
                }
                Outcome::Running => tokio::time::sleep(POLL).await,
            }
        }
        Ok(())
    }

    /// The file: the temporary one once it exists, or the stored blob when the fetch ended
    /// before this reader came.
    async fn open(&self) -> Result<tokio::fs::File, String> {
        loop {
            if let Ok(f) = tokio::fs::File::open(&self.tmp).await {
                return Ok(f);
            }
            let state = self.outcome.borrow().clone();
            match state {
                Outcome::Running => {}
                Outcome::Stored => {
                    return tokio::fs::File::open(&self.stored)
                        .await
                        .map_err(|e| format!("opening {}: {e}", self.stored.display()));
                }
                Outcome::Failed(e) => return Err(format!("the fetch failed: {e}")),
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use super::*;

    async fn drain(mut rx: mpsc::Receiver<Result<Bytes, String>>) -> (Vec<u8>, Option<String>) {
        let mut out = Vec::new();
        while let Some(item) = rx.recv().await {
            match item {
                Ok(b) => out.extend_from_slice(&b),
                Err(e) => return (out, Some(e)),
            }
        }
        (out, None)
    }

    #[actix_web::test]
    async fn a_reader_follows_the_file_as_it_grows_and_after_its_rename() {
        let dir = tempfile::tempdir().unwrap();
        let (tmp, stored) = (dir.path().join("tmp"), dir.path().join("blob"));
        let (fetch, outcome) = InFlight::new(tmp.clone(), stored.clone(), 6);
        // A reader that comes before the file exists.
        let early = fetch.clone().read();
        tokio::time::sleep(Duration::from_millis(30)).await;
        let mut f = std::fs::File::create(&tmp).unwrap();
        f.write_all(b"abc").unwrap();
        tokio::time::sleep(Duration::from_millis(30)).await;
        let middle = fetch.clone().read();
        f.write_all(b"def").unwrap();
        std::fs::rename(&tmp, &stored).unwrap();
        outcome.send(Outcome::Stored).unwrap();
        // A reader that comes after the rename reads the stored blob.
        let late = fetch.read();
        for rx in [early, middle, late] {
            assert_eq!(drain(rx).await, (b"abcdef".to_vec(), None));
        }
    }

    #[actix_web::test]
    async fn a_failed_fetch_ends_its_readers_with_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let tmp = dir.path().join("tmp");
        let (fetch, outcome) = InFlight::new(tmp.clone(), dir.path().join("blob"), 6);
        std::fs::write(&tmp, b"abc").unwrap();
        let reader = fetch.clone().read();
        tokio::time::sleep(Duration::from_millis(30)).await;
        std::fs::remove_file(&tmp).unwrap();
        outcome
            .send(Outcome::Failed("upstream went away".into()))
            .unwrap();
        let (got, err) = drain(reader).await;
        assert_eq!(got, b"abc");
        assert!(err.unwrap().contains("upstream went away"));
        let (got, err) = drain(fetch.read()).await;
        assert!(got.is_empty() && err.is_some());
    }
}
