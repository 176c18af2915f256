//! Users from an Apache htpasswd file (`htpasswd -B`: bcrypt entries only, as distribution).
//!
//! The file is re-read when its size, modification time or inode changes (checked at most once
//! a second, on use), so users are added and removed without a restart. bcrypt is slow on
//! purpose; a verified password is remembered for [`REMEMBER`] under a salted SHA-256 of the
//! user and password (never the password itself), and forgotten when the file changes.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use sha2::{Digest, Sha256};

/// How long a verified password is taken without running bcrypt again.
pub const REMEMBER: Duration = Duration::from_secs(60);
/// How often the file's metadata is looked at.
const RECHECK: Duration = Duration::from_secs(1);
/// At most this many remembered credentials (a flood of distinct good passwords is unlikely;
/// the bound keeps memory fixed whatever happens).
const REMEMBER_MAX: usize = 10_000;

/// A bcrypt hash of a random password: unknown users cost as much time as known ones.
const DUMMY_HASH: &str = "$2y$05$1zL8wzL1vQmxHq3bUhSqOuBk8a2Z4lX1XhYrkqX0a9mKzH0QZ6iQ2";

#[derive(Clone, Copy, PartialEq, Eq)]
struct Stamp {
    len: u64,
    modified: Option<SystemTime>,
    inode: u64,
}

struct Loaded {
    users: HashMap<String, String>,
    stamp: Option<Stamp>,
    checked: Instant,
}

/// Verified credentials by salted hash: the user, and when verified.
type Remembered = HashMap<[u8; 32], (String, Instant)>;

/// The htpasswd users. Cheap to clone.
#[derive(Clone)]
pub struct Htpasswd {
    path: PathBuf,
    loaded: Arc<Mutex<Loaded>>,
    remembered: Arc<Mutex<Remembered>>,
    salt: [u8; 32],
}

/// Why a file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum HtpasswdError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

fn stamp(path: &Path) -> std::io::Result<Stamp> {
    let m = std::fs::metadata(path)?;
    Ok(Stamp {
        len: m.len(),
        modified: m.modified().ok(),
        inode: m.ino(),
    })
}

/// Parse the file's text: `user:hash` lines; entries that are not bcrypt are skipped with a
/// warning (distribution accepts bcrypt only).
fn parse(text: &str, path: &Path) -> HashMap<String, String> {
    let mut users = HashMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match line.split_once(':') {
            Some((user, hash)) if !user.is_empty() && hash.starts_with("$2") => {
                users.insert(user.to_string(), hash.to_string());
            }
            _ => tracing::warn!(
                file = %path.display(),
                line = n + 1,
                "htpasswd entry skipped: only bcrypt (htpasswd -B) entries are accepted"
            ),
        }
    }
    users
}

impl Htpasswd {
    /// Read the file now; it must exist.
    pub fn open(path: &Path) -> Result<Htpasswd, HtpasswdError> {
        let read_err = |source| HtpasswdError::Read {
            path: path.to_path_buf(),
            source,
        };
        let st = stamp(path).map_err(read_err)?;
        let text = std::fs::read_to_string(path).map_err(read_err)?;
        Ok(Htpasswd {
            path: path.to_path_buf(),
            loaded: Arc::new(Mutex::new(Loaded {
                users: parse(&text, path),
                stamp: Some(st),
                checked: Instant::now(),
            })),
            remembered: Arc::new(Mutex::new(HashMap::new())),
            salt: rand::random(),
        })
    }

    /// Re-read the file if it changed (at most one look a second). A file that cannot be read
    /// leaves no user able to log in until it can.
    fn refresh(&self) {
        let mut l = self.loaded.lock().expect("htpasswd lock");
        if l.checked.elapsed() < RECHECK {
            return;
        }
        l.checked = Instant::now();
        let now = stamp(&self.path).ok();
        if now == l.stamp {
            return;
        }
        l.stamp = now;
        match std::fs::read_to_string(&self.path) {
            Ok(text) => {
                l.users = parse(&text, &self.path);
                tracing::info!(file = %self.path.display(), users = l.users.len(), "htpasswd file reloaded");
            }
            Err(e) => {
                l.users.clear();
                tracing::error!(file = %self.path.display(), error = %e, "htpasswd file unreadable: nobody can log in");
            }
        }
        self.remembered.lock().expect("remembered lock").clear();
    }

    fn key(&self, user: &str, password: &str) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(self.salt);
        h.update(user.as_bytes());
        h.update([0]);
        h.update(password.as_bytes());
        h.finalize().into()
    }

    /// Whether `password` is `user`'s. Runs bcrypt on a blocking thread unless remembered.
    pub async fn verify(&self, user: &str, password: &str) -> bool {
        self.refresh();
        let key = self.key(user, password);
        {
            let mut remembered = self.remembered.lock().expect("remembered lock");
            match remembered.get(&key) {
                Some((u, at)) if u == user && at.elapsed() < REMEMBER => return true,
                Some(_) => {
                    remembered.remove(&key);
                }
                None => {}
            }
        }
        let hash = self
            .loaded
            .lock()
            .expect("htpasswd lock")
            .users
            .get(user)
            .cloned();
        let known = hash.is_some();
        let hash = hash.unwrap_or_else(|| DUMMY_HASH.to_string());
        let password = password.to_string();
        let ok = tokio::task::spawn_blocking(move || bcrypt::verify(password, &hash).unwrap_or(false))
            .await
            .unwrap_or(false);
        if ok && known {
            let mut remembered = self.remembered.lock().expect("remembered lock");
            if remembered.len() >= REMEMBER_MAX {
                remembered.retain(|_, (_, at)| at.elapsed() < REMEMBER);
            }
            if remembered.len() < REMEMBER_MAX {
                remembered.insert(key, (user.to_string(), Instant::now()));
            }
        }
        ok && known
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(user: &str, password: &str) -> String {
        format!("{user}:{}\n", bcrypt::hash(password, 4).unwrap())
    }

    #[tokio::test]
    async fn bcrypt_users_log_in_and_the_file_is_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("htpasswd");
        std::fs::write(&path, entry("alice", "wonder") + "md5user:$apr1$x$y\n").unwrap();
        let h = Htpasswd::open(&path).unwrap();
        assert!(h.verify("alice", "wonder").await);
        assert!(!h.verify("alice", "wrong").await);
        assert!(!h.verify("bob", "wonder").await);
        assert!(!h.verify("md5user", "y").await, "non-bcrypt entries are skipped");
        // Remembered: still true without bcrypt, then the file changes and alice is gone.
        assert!(h.verify("alice", "wonder").await);
        std::fs::write(&path, entry("bob", "builder")).unwrap();
        h.loaded.lock().unwrap().checked -= RECHECK;
        assert!(
            !h.verify("alice", "wonder").await,
            "a removed user is forgotten at once"
        );
        assert!(h.verify("bob", "builder").await);
    }

    #[test]
    fn the_dummy_hash_is_a_valid_bcrypt_hash() {
        assert!(!bcrypt::verify("x", DUMMY_HASH).unwrap());
    }
}
