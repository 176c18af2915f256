//! The durable Raft log: entries, vote and committed index in one `redb` file.
//!
//! Every `append` is one write transaction committed with immediate durability (fsync) before
//! openraft is told the entries are flushed, so an acknowledged entry survives `kill -9`.
//! The blocking redb calls run on tokio's blocking pool, never on the Raft core's task.

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::Arc;

use openraft::entry::RaftEntry;
use openraft::storage::{IOFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::type_config::alias::{LogIdOf, VoteOf};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};

use super::{TypeConfig, decode, encode};

type Entry = <TypeConfig as openraft::RaftTypeConfig>::Entry;
type LogId = LogIdOf<TypeConfig>;
type Vote = VoteOf<TypeConfig>;

const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("log_meta");
const KEY_VOTE: &str = "vote";
const KEY_COMMITTED: &str = "committed";
const KEY_PURGED: &str = "last_purged";

/// Memory redb may use to cache the log's pages.
const LOG_CACHE: usize = 32 << 20;

fn io_err(e: impl std::error::Error + Send + Sync + 'static) -> io::Error {
    io::Error::other(e)
}

/// The Raft log store. Cheap to clone; clones share the database.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
}

impl Debug for LogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LogStore")
    }
}

impl LogStore {
    /// Open (or create) the log at `path`.
    pub fn open(path: &Path) -> io::Result<LogStore> {
        // redb caches 1 GiB by default; the log is read back only by replication to a lagging
        // peer and after a restart.
        let db = redb::Builder::new()
            .set_cache_size(LOG_CACHE)
            .create(path)
            .map_err(io_err)?;
        let tx = db.begin_write().map_err(io_err)?;
        tx.open_table(LOG).map_err(io_err)?;
        tx.open_table(META).map_err(io_err)?;
        tx.commit().map_err(io_err)?;
        Ok(LogStore { db: Arc::new(db) })
    }

    fn read_meta<T: serde::de::DeserializeOwned>(&self, key: &str) -> io::Result<Option<T>> {
        let tx = self.db.begin_read().map_err(io_err)?;
        let table = tx.open_table(META).map_err(io_err)?;
        match table.get(key).map_err(io_err)? {
            Some(v) => Ok(Some(decode(v.value())?)),
            None => Ok(None),
        }
    }

    /// Run a write transaction on the blocking pool and commit it with the given durability.
    async fn write<F>(&self, durability: Durability, f: F) -> io::Result<()>
    where
        F: FnOnce(&redb::WriteTransaction) -> io::Result<()> + Send + 'static,
    {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || {
            let mut tx = db.begin_write().map_err(io_err)?;
            tx.set_durability(durability).map_err(io_err)?;
            f(&tx)?;
            tx.commit().map_err(io_err)
        })
        .await
        .map_err(io_err)?
    }

    fn last_entry_id(&self) -> io::Result<Option<LogId>> {
        let tx = self.db.begin_read().map_err(io_err)?;
        let table = tx.open_table(LOG).map_err(io_err)?;
        match table.last().map_err(io_err)? {
            Some((_, v)) => Ok(Some(decode::<Entry>(v.value())?.log_id())),
            None => Ok(None),
        }
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        let start = match range.start_bound() {
            Bound::Included(s) => Bound::Included(*s),
            Bound::Excluded(s) => Bound::Excluded(*s),
            Bound::Unbounded => Bound::Unbounded,
        };
        let end = match range.end_bound() {
            Bound::Included(s) => Bound::Included(*s),
            Bound::Excluded(s) => Bound::Excluded(*s),
            Bound::Unbounded => Bound::Unbounded,
        };
        let tx = self.db.begin_read().map_err(io_err)?;
        let table = tx.open_table(LOG).map_err(io_err)?;
        let mut out = Vec::new();
        for item in table.range::<u64>((start, end)).map_err(io_err)? {
            let (_, v) = item.map_err(io_err)?;
            out.push(decode(v.value())?);
        }
        Ok(out)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        self.read_meta(KEY_VOTE)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let last_purged: Option<LogId> = self.read_meta(KEY_PURGED)?;
        let last = self.last_entry_id()?.or(last_purged);
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        let bytes = encode(vote)?;
        self.write(Durability::Immediate, move |tx| {
            let mut t = tx.open_table(META).map_err(io_err)?;
            t.insert(KEY_VOTE, bytes.as_slice()).map_err(io_err)?;
            Ok(())
        })
        .await
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        // Losing the committed index in a crash only means re-learning it from the leader, so
        // this write is not fsynced on its own (the next append's commit persists it).
        let bytes = encode(&committed)?;
        self.write(Durability::None, move |tx| {
            let mut t = tx.open_table(META).map_err(io_err)?;
            t.insert(KEY_COMMITTED, bytes.as_slice()).map_err(io_err)?;
            Ok(())
        })
        .await
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, io::Error> {
        Ok(self.read_meta::<Option<LogId>>(KEY_COMMITTED)?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<TypeConfig>) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut encoded = Vec::new();
        for e in entries {
            encoded.push((e.index(), encode(&e)?));
        }
        let res = self
            .write(Durability::Immediate, move |tx| {
                let mut t = tx.open_table(LOG).map_err(io_err)?;
                for (index, bytes) in &encoded {
                    t.insert(*index, bytes.as_slice()).map_err(io_err)?;
                }
                Ok(())
            })
            .await;
        match res {
            Ok(()) => {
                callback.io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.io_completed(Err(io::Error::new(e.kind(), e.to_string())));
                Err(e)
            }
        }
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        let from = last_log_id.map(|l| l.index() + 1).unwrap_or(0);
        self.write(Durability::Immediate, move |tx| {
            let mut t = tx.open_table(LOG).map_err(io_err)?;
            t.retain_in(from.., |_, _| false).map_err(io_err)?;
            Ok(())
        })
        .await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        let upto = log_id.index();
        let bytes = encode(&log_id)?;
        self.write(Durability::Immediate, move |tx| {
            let mut meta = tx.open_table(META).map_err(io_err)?;
            meta.insert(KEY_PURGED, bytes.as_slice()).map_err(io_err)?;
            let mut t = tx.open_table(LOG).map_err(io_err)?;
            t.retain_in(..=upto, |_, _| false).map_err(io_err)?;
            Ok(())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use openraft::StorageError;
    use openraft::testing::log::{StoreBuilder, Suite};
    use tempfile::TempDir;

    use super::*;
    use crate::raft::state_machine::StateMachine;

    struct Builder;

    impl StoreBuilder<TypeConfig, LogStore, StateMachine, TempDir> for Builder {
        async fn build(&self) -> Result<(TempDir, LogStore, StateMachine), StorageError<TypeConfig>> {
            let dir = TempDir::new().expect("tempdir");
            let log = LogStore::open(&dir.path().join("log.redb")).expect("log store");
            let sm =
                StateMachine::open(&dir.path().join("state.redb"), &dir.path().join("snap")).expect("sm");
            Ok((dir, log, sm))
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn passes_openraft_storage_suite() {
        Suite::test_all(Builder).await.expect("openraft storage suite");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn entries_survive_reopen() {
        use openraft::testing::log_id;
        let dir = TempDir::new().unwrap();
        let path = dir.path().join("log.redb");
        {
            let mut log = LogStore::open(&path).unwrap();
            let entries = (1..=3).map(|i| Entry::new_blank(log_id::<TypeConfig>(1, 1, i)));
            log.append(entries, IOFlushed::noop()).await.unwrap();
            log.save_vote(&Vote::new(1, 1)).await.unwrap();
        }
        let mut log = LogStore::open(&path).unwrap();
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_log_id.unwrap().index(), 3);
        assert_eq!(log.read_vote().await.unwrap(), Some(Vote::new(1, 1)));
        assert_eq!(log.try_get_log_entries(2..).await.unwrap().len(), 2);
    }
}
