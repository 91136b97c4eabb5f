//! The model cache: downloaded files stored by content digest, so that a model whose source is
//! unreachable can still be served, and two models with the same content are stored once.
//!
//! ```text
//! CACHE/blobs/sha256/HEX       one downloaded file (read-only)
//! CACHE/trees/sha256/HEX/...   one downloaded directory, HEX its directory digest
//! CACHE/refs/HEX.json          the last resolution of a source (HEX: SHA-256 of its key)
//! CACHE/tmp/                   downloads in progress
//! ```
//!
//! Everything is written under `tmp/` and renamed into place only once complete and verified,
//! so a crash or a cut download never leaves a partial model under a name that looks whole.
//! Leftovers in `tmp/` untouched for ten minutes are removed when the cache is opened.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use oxinfer_core::{Error, Provenance, Result};

/// What a downloaded source is: one file or a directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Kind {
    File,
    Tree,
}

/// The last resolution of one source, recorded so that it can be served when the source is
/// unreachable.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Ref {
    /// What was resolved (the source key, for humans reading the cache).
    pub(crate) key: String,
    pub(crate) kind: Kind,
    /// The content digest: the file's, or the directory's.
    pub(crate) digest: String,
    /// What the source said identifies this content (a registry version, an ETag listing).
    pub(crate) identity: String,
    pub(crate) provenance: Provenance,
    /// When it was resolved (RFC 3339).
    pub(crate) resolved_at: String,
}

/// A cache directory.
#[derive(Debug)]
pub(crate) struct Cache {
    root: PathBuf,
}

/// How long a leftover in `tmp/` is kept: a download in progress writes to it all the time.
const STALE: Duration = Duration::from_secs(600);

fn io(what: &str, path: &Path) -> impl FnOnce(std::io::Error) -> Error {
    let message = format!("model cache: cannot {what} {}", path.display());
    move |e| Error::Load(format!("{message}: {e}"))
}

impl Cache {
    /// Opens (creating it when needed) the cache at `root`, and removes stale leftovers of
    /// interrupted downloads.
    pub(crate) fn open(root: &Path) -> Result<Cache> {
        let cache = Cache {
            root: root.to_path_buf(),
        };
        for dir in ["blobs/sha256", "trees/sha256", "refs", "tmp"] {
            let dir = root.join(dir);
            std::fs::create_dir_all(&dir).map_err(io("create", &dir))?;
        }
        let tmp = root.join("tmp");
        if let Ok(entries) = std::fs::read_dir(&tmp) {
            for entry in entries.flatten() {
                // A directory being downloaded into is in use while any file in it is written.
                let stale = newest(&entry.path(), 0)
                    .and_then(|t| SystemTime::now().duration_since(t).ok())
                    .is_none_or(|age| age > STALE);
                if stale {
                    let path = entry.path();
                    let _ = std::fs::remove_dir_all(&path).or_else(|_| std::fs::remove_file(&path));
                }
            }
        }
        Ok(cache)
    }

    /// The cache's directory.
    pub(crate) fn root(&self) -> &Path {
        &self.root
    }

    /// Where the content with this digest is (or would be) stored.
    pub(crate) fn path(&self, kind: Kind, digest: &str) -> PathBuf {
        let dir = match kind {
            Kind::File => "blobs",
            Kind::Tree => "trees",
        };
        self.root.join(dir).join("sha256").join(digest)
    }

    /// Whether the content with this digest is stored.
    pub(crate) fn has(&self, kind: Kind, digest: &str) -> bool {
        let path = self.path(kind, digest);
        match kind {
            Kind::File => path.is_file(),
            Kind::Tree => path.is_dir(),
        }
    }

    /// A fresh name under `tmp/` for a download in progress.
    pub(crate) fn temp(&self, suffix: &str) -> PathBuf {
        let mut random = [0u8; 8];
        getrandom::fill(&mut random).expect("the OS random source works");
        self.root
            .join("tmp")
            .join(format!("{}.{suffix}", hex::encode(random)))
    }

    /// Moves a complete, verified download from `tmp/` to its place by digest (a file is made
    /// read-only first). When that content is already stored, the download is dropped.
    pub(crate) fn commit(&self, kind: Kind, temp: &Path, digest: &str) -> Result<PathBuf> {
        let target = self.path(kind, digest);
        if self.has(kind, digest) {
            remove(temp);
            return Ok(target);
        }
        if kind == Kind::File {
            set_read_only(temp)?;
        }
        match std::fs::rename(temp, &target) {
            Ok(()) => Ok(target),
            // Another download of the same content finished first.
            Err(_) if self.has(kind, digest) => {
                remove(temp);
                Ok(target)
            }
            Err(e) => {
                remove(temp);
                Err(io("store", &target)(e))
            }
        }
    }

    fn ref_path(&self, key: &str) -> PathBuf {
        self.root.join("refs").join(format!(
            "{}.json",
            hex::encode(Sha256::digest(key.as_bytes()))
        ))
    }

    /// The last recorded resolution of `key`, when its content is still stored.
    pub(crate) fn read_ref(&self, key: &str) -> Option<Ref> {
        let text = std::fs::read(self.ref_path(key)).ok()?;
        let found: Ref = serde_json::from_slice(&text).ok()?;
        let digest_like = found.digest.len() == 64
            && found
                .digest
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        (found.key == key && digest_like && self.has(found.kind, &found.digest)).then_some(found)
    }

    /// Records a resolution of `key` (atomically: written aside, then renamed).
    pub(crate) fn write_ref(&self, key: &str, record: &Ref) -> Result<()> {
        let temp = self.temp("ref");
        let text = serde_json::to_vec_pretty(record).expect("a ref serialises");
        std::fs::write(&temp, text).map_err(io("write", &temp))?;
        let target = self.ref_path(key);
        std::fs::rename(&temp, &target).map_err(|e| {
            remove(&temp);
            io("write", &target)(e)
        })
    }
}

/// The latest modification time of `path` and (for a directory) everything under it.
fn newest(path: &Path, depth: usize) -> Option<SystemTime> {
    let meta = std::fs::symlink_metadata(path).ok()?;
    let own = meta.modified().ok();
    if !meta.is_dir() || depth > 32 {
        return own;
    }
    std::fs::read_dir(path)
        .ok()?
        .flatten()
        .take(100_000)
        .filter_map(|e| newest(&e.path(), depth + 1))
        .chain(own)
        .max()
}

/// Removes a file or directory, ignoring errors (cleaning up after a failed download).
pub(crate) fn remove(path: &Path) {
    let _ = std::fs::remove_dir_all(path).or_else(|_| std::fs::remove_file(path));
}

fn set_read_only(path: &Path) -> Result<()> {
    let mut permissions = std::fs::metadata(path)
        .map_err(io("read", path))?
        .permissions();
    permissions.set_readonly(true);
    std::fs::set_permissions(path, permissions).map_err(io("protect", path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("oxinfer-cache-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn content_is_stored_once_and_refs_point_at_it() {
        let root = scratch("once");
        let cache = Cache::open(&root).unwrap();
        let digest = "ab".repeat(32);
        for _ in 0..2 {
            let temp = cache.temp("part");
            std::fs::write(&temp, b"model").unwrap();
            let stored = cache.commit(Kind::File, &temp, &digest).unwrap();
            assert_eq!(std::fs::read(&stored).unwrap(), b"model");
            assert!(!temp.exists());
        }
        assert_eq!(
            std::fs::read_dir(root.join("blobs/sha256"))
                .unwrap()
                .count(),
            1
        );
        assert!(
            std::fs::metadata(cache.path(Kind::File, &digest))
                .unwrap()
                .permissions()
                .readonly()
        );
        let record = Ref {
            key: "k".into(),
            kind: Kind::File,
            digest: digest.clone(),
            identity: "v1".into(),
            provenance: Provenance::default(),
            resolved_at: "now".into(),
        };
        cache.write_ref("k", &record).unwrap();
        assert_eq!(cache.read_ref("k").unwrap().identity, "v1");
        assert!(cache.read_ref("other").is_none());
        // A ref whose content is gone is no ref.
        let gone = Ref {
            digest: "cd".repeat(32),
            ..record
        };
        cache.write_ref("k", &gone).unwrap();
        assert!(cache.read_ref("k").is_none());
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn stale_partial_downloads_are_cleared_and_fresh_ones_kept() {
        let root = scratch("stale");
        let cache = Cache::open(&root).unwrap();
        let old = cache.temp("part");
        std::fs::write(&old, b"half").unwrap();
        let file = std::fs::File::options().write(true).open(&old).unwrap();
        file.set_modified(SystemTime::now() - Duration::from_secs(3600))
            .unwrap();
        let fresh = cache.temp("part");
        std::fs::write(&fresh, b"half").unwrap();
        Cache::open(&root).unwrap();
        assert!(!old.exists());
        assert!(fresh.exists());
        let _ = std::fs::remove_dir_all(&root);
    }
}
