//! A state machine database for unit tests, with commands to fill it.

use ipcr_proto::gc::{GcOptions, GcReport, GcRun, GcStep, GcTally};
use ipcr_proto::{Algorithm, Command, CommandResult, Digest, ManifestRecord};
use redb::{Database, ReadableDatabase, ReadableTable};

use super::apply::apply;
use super::state::{DATA_TABLES, StateReader, Table};

/// A state machine database in a temporary directory.
pub(crate) struct Db {
    db: std::sync::Arc<Database>,
    _dir: tempfile::TempDir,
}

/// A fresh one.
pub(crate) fn db() -> Db {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::create(dir.path().join("state.redb")).unwrap();
    let tx = db.begin_write().unwrap();
    for t in DATA_TABLES {
        tx.open_table(t).unwrap();
    }
    tx.commit().unwrap();
    Db {
        db: std::sync::Arc::new(db),
        _dir: dir,
    }
}

impl Db {
    pub(crate) fn apply(&self, cmd: Command) -> CommandResult {
        let tx = self.db.begin_write().unwrap();
        let r = apply(&tx, &cmd).unwrap();
        tx.commit().unwrap();
        r
    }

    pub(crate) fn ok(&self, cmd: Command) {
        assert_eq!(self.apply(cmd), CommandResult::Ok);
    }

    pub(crate) fn reader(&self) -> StateReader {
        StateReader::new(self.db.clone())
    }

    pub(crate) fn rows(&self, table: Table) -> usize {
        let tx = self.db.begin_read().unwrap();
        let t = tx.open_table(table).unwrap();
        t.iter().unwrap().count()
    }

    pub(crate) fn commit(&self, repo: &str, data: &[u8], at: u64) -> Digest {
        let digest = Algorithm::Sha256.digest_bytes(data);
        self.ok(Command::CommitBlob {
            repo: repo.parse().unwrap(),
            digest: digest.clone(),
            size: data.len() as u64,
            nodes: vec![1, 2],
            cid: None,
            leaves: Vec::new(),
            now_ms: at,
        });
        digest
    }

    /// Push a manifest naming `blobs` and `children`; answers its digest.
    pub(crate) fn push(
        &self,
        repo: &str,
        tag: Option<&str>,
        parts: (&[&Digest], &[&Digest], Option<&Digest>),
        at: u64,
    ) -> (Digest, CommandResult) {
        let (blobs, children, subject) = parts;
        let bytes = format!("{blobs:?}{children:?}{subject:?}").into_bytes();
        let digest = Algorithm::Sha256.digest_bytes(&bytes);
        let r = self.apply(Command::PutManifest {
            repo: repo.parse().unwrap(),
            digest: digest.clone(),
            tags: tag.into_iter().map(|t| t.parse().unwrap()).collect(),
            record: ManifestRecord {
                media_type: "m".into(),
                bytes,
                blobs: blobs.iter().map(|d| (*d).clone()).collect(),
                children: children.iter().map(|d| (*d).clone()).collect(),
                subject: subject.cloned(),
                artifact_type: None,
                annotations: Default::default(),
            },
            now_ms: at,
        });
        (digest, r)
    }

    pub(crate) fn begin(&self, run: &str, at: u64) -> CommandResult {
        self.apply(Command::GcBegin {
            run: GcRun {
                run: run.into(),
                node: 1,
                started_ms: at,
                lease_until_ms: at + 30_000,
                options: options(0, false),
            },
        })
    }

    pub(crate) fn collect(&self, run: &str, at: u64, options: GcOptions, steps: Vec<GcStep>) -> GcTally {
        match self.apply(Command::Collect {
            run: run.into(),
            now_ms: at,
            lease_ms: 30_000,
            options,
            steps,
        }) {
            CommandResult::Collected(t) => t,
            other => panic!("{other:?}"),
        }
    }
}

/// Options of a collection.
pub(crate) fn options(grace_ms: u64, delete_untagged: bool) -> GcOptions {
    GcOptions {
        dry_run: false,
        delete_untagged,
        grace_ms,
        retention: Vec::new(),
        retention_dry_run: false,
    }
}

/// The report of an empty collection `run`.
pub(crate) fn report(run: &str) -> GcReport {
    GcReport {
        run: run.into(),
        node: 1,
        options: options(0, false),
        started_ms: 0,
        finished_ms: 1,
        totals: Default::default(),
        tally: GcTally::default(),
    }
}
