//! openraft's `RaftStateMachine` over the redb tables of [`super::state`].
//!
//! Each `apply` call is one write transaction for the whole batch of entries. It is committed
//! without its own fsync (but for one batch a second, see [`DURABLE_EVERY`]): the Raft log
//! already holds every entry durably, and after a crash openraft re-applies from the last
//! durably applied id. Before a snapshot is built (which lets the log be purged) a durable
//! commit makes everything applied so far permanent.

use std::io;
use std::path::Path;
use std::sync::Arc;

use futures::{Stream, TryStreamExt};
use ipcr_proto::CommandResult;
use openraft::storage::{EntryResponder, RaftSnapshotBuilder, RaftStateMachine};
use openraft::type_config::alias::{SnapshotOf, StoredMembershipOf};
use openraft::{EntryPayload, OptionalSend};
use redb::{Database, Durability, ReadableDatabase, WriteTransaction};
use tokio::sync::watch;

use super::snapshot::{self, Meta, SnapshotDir, SnapshotFile};
use super::state::{DATA_TABLES, KEY_APPLIED, KEY_MEMBERSHIP, META, StateReader};
use super::{LogId, TypeConfig, apply, decode, encode};

type Membership = StoredMembershipOf<TypeConfig>;

/// Memory redb may use to cache the state machine's pages (512 MiB made random manifest reads
/// of a million tags only 14 % faster, for 500 MiB more per node).
const STATE_CACHE: usize = 128 << 20;

/// How often an applied batch is committed durably (fsynced) although the log holds it: redb
/// can reuse the pages a commit frees only after a durable commit, and a durable commit
/// records the allocator state, so that reopening after a crash need not walk the whole file
/// (13 s for 2 GiB without it). Once a second costs one fsync a second.
const DURABLE_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

fn io_err(e: impl std::error::Error + Send + Sync + 'static) -> io::Error {
    io::Error::other(e)
}

/// The state machine. Owned by openraft; [`StateMachine::reader`] gives the read side.
pub struct StateMachine {
    db: Arc<Database>,
    snapshots: SnapshotDir,
    /// The last applied log id, published as soon as it is in the database (before any
    /// client's write is acknowledged), unlike openraft's metrics, which follow later.
    applied: watch::Sender<Option<LogId>>,
    /// When the last durable commit was; see [`DURABLE_EVERY`].
    last_durable: std::time::Instant,
}

impl StateMachine {
    /// Open (or create) the state machine database and its snapshot directory.
    pub fn open(db_path: &Path, snapshot_dir: &Path) -> io::Result<StateMachine> {
        // redb caches 1 GiB by default; the OS page cache holds the rest of a big state.
        let db = redb::Builder::new()
            .set_cache_size(STATE_CACHE)
            .create(db_path)
            .map_err(io_err)?;
        let tx = db.begin_write().map_err(io_err)?;
        tx.open_table(META).map_err(io_err)?;
        for t in DATA_TABLES {
            tx.open_table(t).map_err(io_err)?;
        }
        tx.commit().map_err(io_err)?;
        let (applied, _) = Self::read_applied(&db)?;
        Ok(StateMachine {
            db: Arc::new(db),
            snapshots: SnapshotDir::new(snapshot_dir.to_path_buf())?,
            applied: watch::Sender::new(applied),
            last_durable: std::time::Instant::now(),
        })
    }

    /// Follows the last applied log id.
    pub fn applied(&self) -> watch::Receiver<Option<LogId>> {
        self.applied.subscribe()
    }

    /// A reader over the applied state.
    pub fn reader(&self) -> StateReader {
        StateReader::new(self.db.clone())
    }

    fn read_applied(db: &Database) -> io::Result<(Option<LogId>, Membership)> {
        let tx = db.begin_read().map_err(io_err)?;
        let t = tx.open_table(META).map_err(io_err)?;
        let applied = match t.get(KEY_APPLIED).map_err(io_err)? {
            Some(v) => decode(v.value())?,
            None => None,
        };
        let membership = match t.get(KEY_MEMBERSHIP).map_err(io_err)? {
            Some(v) => decode(v.value())?,
            None => Membership::default(),
        };
        Ok((applied, membership))
    }

    fn write_meta(
        tx: &WriteTransaction,
        applied: &Option<LogId>,
        membership: Option<&Membership>,
    ) -> io::Result<()> {
        let mut t = tx.open_table(META).map_err(io_err)?;
        t.insert(KEY_APPLIED, encode(applied)?.as_slice())
            .map_err(io_err)?;
        if let Some(m) = membership {
            t.insert(KEY_MEMBERSHIP, encode(m)?.as_slice()).map_err(io_err)?;
        }
        Ok(())
    }
}

/// Builds a snapshot from a consistent read view, off the apply path.
pub struct SnapshotBuilder {
    db: Arc<Database>,
    snapshots: SnapshotDir,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    type SnapshotData = SnapshotFile;

    async fn build_snapshot(&mut self) -> Result<SnapshotOf<TypeConfig, SnapshotFile>, io::Error> {
        let db = self.db.clone();
        let dir = self.snapshots.clone();
        tokio::task::spawn_blocking(move || {
            // Make every non-durable apply permanent before the log may be purged up to here.
            let mut tx = db.begin_write().map_err(io_err)?;
            tx.set_durability(Durability::Immediate).map_err(io_err)?;
            tx.set_quick_repair(true);
            tx.commit().map_err(io_err)?;

            let read = db.begin_read().map_err(io_err)?;
            let (applied, membership) = {
                let t = read.open_table(META).map_err(io_err)?;
                let applied: Option<LogId> = match t.get(KEY_APPLIED).map_err(io_err)? {
                    Some(v) => decode(v.value())?,
                    None => None,
                };
                let membership: Membership = match t.get(KEY_MEMBERSHIP).map_err(io_err)? {
                    Some(v) => decode(v.value())?,
                    None => Membership::default(),
                };
                (applied, membership)
            };
            let meta = Meta {
                last_log_id: applied,
                last_membership: membership,
            };
            let started = std::time::Instant::now();
            let file = dir.write(&meta, &read)?;
            let bytes = std::fs::metadata(&file.path).map(|m| m.len()).unwrap_or(0);
            tracing::info!(
                snapshot = %file.path.display(),
                bytes,
                ms = started.elapsed().as_millis() as u64,
                "snapshot built"
            );
            Ok(SnapshotOf::<TypeConfig, SnapshotFile> { meta, snapshot: file })
        })
        .await
        .map_err(io_err)?
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotData = SnapshotFile;
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, Membership), io::Error> {
        Self::read_applied(&self.db)
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + OptionalSend,
    {
        let mut batch = Vec::new();
        while let Some(item) = entries.try_next().await? {
            batch.push(item);
        }
        if batch.is_empty() {
            return Ok(());
        }
        let db = self.db.clone();
        let durable = self.last_durable.elapsed() >= DURABLE_EVERY;
        if durable {
            self.last_durable = std::time::Instant::now();
        }
        let (batch, results, last) = tokio::task::spawn_blocking(move || -> io::Result<_> {
            let mut tx = db.begin_write().map_err(io_err)?;
            if durable {
                tx.set_durability(Durability::Immediate).map_err(io_err)?;
                tx.set_quick_repair(true);
            } else {
                tx.set_durability(Durability::None).map_err(io_err)?;
            }
            let mut results = Vec::with_capacity(batch.len());
            let mut last = None;
            let mut membership = None;
            for (entry, _) in &batch {
                let result = match &entry.payload {
                    EntryPayload::Blank => CommandResult::Ok,
                    EntryPayload::Normal(cmd) => apply::apply(&tx, cmd)?,
                    EntryPayload::Membership(m) => {
                        membership = Some(Membership::new(Some(entry.log_id), m.clone()));
                        CommandResult::Ok
                    }
                };
                last = Some(entry.log_id);
                results.push(result);
            }
            Self::write_meta(&tx, &last, membership.as_ref())?;
            tx.commit().map_err(io_err)?;
            Ok((batch, results, last))
        })
        .await
        .map_err(io_err)??;
        self.applied.send_replace(last);
        for ((_, responder), result) in batch.into_iter().zip(results) {
            if let Some(r) = responder {
                r.send(result);
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            db: self.db.clone(),
            snapshots: self.snapshots.clone(),
        }
    }

    async fn install_snapshot(&mut self, meta: &Meta, snapshot: SnapshotFile) -> Result<(), io::Error> {
        let db = self.db.clone();
        let dir = self.snapshots.clone();
        let meta = meta.clone();
        let applied = self.applied.clone();
        tokio::task::spawn_blocking(move || {
            let started = std::time::Instant::now();
            let mut tx = db.begin_write().map_err(io_err)?;
            tx.set_durability(Durability::Immediate).map_err(io_err)?;
            tx.set_quick_repair(true);
            let file_meta = snapshot::load(&snapshot.path, &tx)?;
            if file_meta.last_log_id != meta.last_log_id {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "snapshot file does not match its meta",
                ));
            }
            Self::write_meta(&tx, &meta.last_log_id, Some(&meta.last_membership))?;
            tx.commit().map_err(io_err)?;
            applied.send_replace(meta.last_log_id);
            if !dir.holds(&snapshot.path) {
                dir.adopt(&meta, &snapshot.path)?;
            }
            tracing::info!(
                last_log_id = ?meta.last_log_id,
                ms = started.elapsed().as_millis() as u64,
                "snapshot installed"
            );
            Ok(())
        })
        .await
        .map_err(io_err)?
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<SnapshotOf<TypeConfig, SnapshotFile>>, io::Error> {
        Ok(self
            .snapshots
            .current()?
            .map(|(meta, snapshot)| SnapshotOf::<TypeConfig, SnapshotFile> { meta, snapshot }))
    }
}
