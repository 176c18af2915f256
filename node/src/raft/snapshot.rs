//! Snapshot files: a full dump of the state machine's tables at one applied log id.
//!
//! Layout: the magic `IPCRSNAP`, the format version, then a stream of bincode [`Item`]s: the
//! snapshot's meta, then each table's name followed by its rows, then `End`. Files are written
//! to a temporary name, fsynced and renamed, so a snapshot on disk is always whole; only the
//! newest one is kept.

use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use openraft::type_config::alias::SnapshotMetaOf;
use redb::{ReadTransaction, ReadableTable, TableHandle, WriteTransaction};
use serde::{Deserialize, Serialize};

use super::state::DATA_TABLES;
use super::{FORMAT, TypeConfig, bincode_config};

const MAGIC: &[u8; 8] = b"IPCRSNAP";

/// The meta openraft attaches to a snapshot.
pub type Meta = SnapshotMetaOf<TypeConfig>;

/// A snapshot as openraft passes it around: the path of a complete snapshot file.
#[derive(Debug, Clone)]
pub struct SnapshotFile {
    /// Where the file is.
    pub path: PathBuf,
}

#[derive(Serialize, Deserialize)]
enum Item {
    Meta(Meta),
    Table(String),
    Row(String, Vec<u8>),
    End,
}

fn io_err(e: impl std::error::Error + Send + Sync + 'static) -> io::Error {
    io::Error::other(e)
}

fn write_item(w: &mut impl Write, item: &Item) -> io::Result<()> {
    bincode::serde::encode_into_std_write(item, w, bincode_config()).map_err(io_err)?;
    Ok(())
}

fn read_item(r: &mut impl Read) -> io::Result<Item> {
    bincode::serde::decode_from_std_read(r, bincode_config())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// The snapshots directory of a node.
#[derive(Debug, Clone)]
pub struct SnapshotDir {
    dir: PathBuf,
}

impl SnapshotDir {
    /// Use (and create) `dir`.
    pub fn new(dir: PathBuf) -> io::Result<SnapshotDir> {
        fs::create_dir_all(&dir)?;
        Ok(SnapshotDir { dir })
    }

    /// Whether `path` is already one of this directory's complete snapshots.
    pub fn holds(&self, path: &Path) -> bool {
        path.parent() == Some(self.dir.as_path()) && path.extension().is_some_and(|e| e == "snap")
    }

    /// A fresh path for an incoming or new snapshot, not yet visible as current.
    pub fn temp_path(&self) -> PathBuf {
        self.dir.join(format!("incoming-{}.tmp", uuid::Uuid::new_v4()))
    }

    fn name_for(meta: &Meta) -> String {
        let (term, index) = meta
            .last_log_id
            .as_ref()
            .map(|l| (l.leader_id.term, l.index))
            .unwrap_or((0, 0));
        format!("{term:020}-{index:020}.snap")
    }

    /// Dump the tables seen by `tx` into a new current snapshot file.
    pub fn write(&self, meta: &Meta, tx: &ReadTransaction) -> io::Result<SnapshotFile> {
        let tmp = self.temp_path();
        {
            let mut w = BufWriter::with_capacity(1 << 20, File::create(&tmp)?);
            w.write_all(MAGIC)?;
            w.write_all(&[FORMAT])?;
            write_item(&mut w, &Item::Meta(meta.clone()))?;
            for table in DATA_TABLES {
                write_item(&mut w, &Item::Table(table.name().to_string()))?;
                let t = tx.open_table(table).map_err(io_err)?;
                for row in t.iter().map_err(io_err)? {
                    let (k, v) = row.map_err(io_err)?;
                    write_item(&mut w, &Item::Row(k.value().to_string(), v.value().to_vec()))?;
                }
            }
            write_item(&mut w, &Item::End)?;
            let f = w.into_inner().map_err(|e| e.into_error())?;
            f.sync_all()?;
        }
        self.adopt(meta, &tmp)
    }

    /// Make a complete snapshot file at `path` the current one (renamed into place).
    pub fn adopt(&self, meta: &Meta, path: &Path) -> io::Result<SnapshotFile> {
        let dest = self.dir.join(Self::name_for(meta));
        fs::rename(path, &dest)?;
        File::open(&self.dir)?.sync_all()?;
        // Only the newest snapshot is kept.
        for entry in fs::read_dir(&self.dir)? {
            let p = entry?.path();
            if p != dest && p.extension().is_some_and(|e| e == "snap") {
                let _ = fs::remove_file(p);
            }
        }
        Ok(SnapshotFile { path: dest })
    }

    /// The newest complete snapshot and its meta.
    pub fn current(&self) -> io::Result<Option<(Meta, SnapshotFile)>> {
        let mut newest: Option<PathBuf> = None;
        for entry in fs::read_dir(&self.dir)? {
            let p = entry?.path();
            if p.extension().is_some_and(|e| e == "snap") && newest.as_ref().is_none_or(|n| p > *n) {
                newest = Some(p);
            }
        }
        let Some(path) = newest else { return Ok(None) };
        let meta = read_meta(&path)?;
        Ok(Some((meta, SnapshotFile { path })))
    }
}

fn open_checked(path: &Path) -> io::Result<BufReader<File>> {
    let mut r = BufReader::with_capacity(1 << 20, File::open(path)?);
    let mut head = [0u8; 9];
    r.read_exact(&mut head)?;
    if &head[..8] != MAGIC || head[8] != FORMAT {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "not an IPCR snapshot"));
    }
    Ok(r)
}

/// Read only the meta of a snapshot file.
pub fn read_meta(path: &Path) -> io::Result<Meta> {
    let mut r = open_checked(path)?;
    match read_item(&mut r)? {
        Item::Meta(m) => Ok(m),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "snapshot without meta",
        )),
    }
}

/// Replace every data table in `tx` by the snapshot's rows. Returns the snapshot's meta.
pub fn load(path: &Path, tx: &WriteTransaction) -> io::Result<Meta> {
    let mut r = open_checked(path)?;
    let Item::Meta(meta) = read_item(&mut r)? else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "snapshot without meta",
        ));
    };
    for table in DATA_TABLES {
        let mut t = tx.open_table(table).map_err(io_err)?;
        t.retain(|_, _| false).map_err(io_err)?;
    }
    let mut current: Option<redb::Table<&str, &[u8]>> = None;
    loop {
        match read_item(&mut r)? {
            Item::Table(name) => {
                let def = DATA_TABLES
                    .into_iter()
                    .find(|t| t.name() == name)
                    .ok_or_else(|| {
                        io::Error::new(io::ErrorKind::InvalidData, format!("unknown table {name}"))
                    })?;
                drop(current.take());
                current = Some(tx.open_table(def).map_err(io_err)?);
            }
            Item::Row(k, v) => {
                let t = current
                    .as_mut()
                    .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "row before table"))?;
                t.insert(k.as_str(), v.as_slice()).map_err(io_err)?;
            }
            Item::End => return Ok(meta),
            Item::Meta(_) => return Err(io::Error::new(io::ErrorKind::InvalidData, "second meta")),
        }
    }
}
