//! Content digests of model files, for provenance and pinning.
//!
//! - A file: the SHA-256 of its bytes (what `sha256sum FILE` prints).
//! - A directory: the SHA-256 of a manifest of its regular files, sorted by their path relative
//!   to the directory (`/`-separated): for each file, one line `<sha256 hex>  <relative path>\n`,
//!   the format `sha256sum` prints. So `(cd DIR && find . -type f | sed 's|^\./||' | LC_ALL=C sort
//!   | xargs sha256sum) | sha256sum` gives the same digest. Symbolic links are followed; a link
//!   that loops back to a directory being walked is an error.

use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use oxinfer_core::{Error, Result};

/// How much of a file [`file_sha256`] reads at a time.
const DIGEST_READ_BYTES: usize = 64 * 1024;

/// The SHA-256 of a file's bytes, as lowercase hex.
pub fn file_sha256(path: &Path) -> Result<String> {
    let mut file = std::fs::File::open(path)
        .map_err(|e| Error::Load(format!("cannot read {}: {e}", path.display())))?;
    let mut hasher = Sha256::new();
    // On the stack, not the heap: a large model's digest is taken on a thread of its own while
    // the runtime loads it, and a heap buffer freed by a thread that then exits stays resident
    // (the allocator purges freed memory lazily, from the thread that freed it). The 1 MiB heap
    // buffer this replaced left about 75 KiB per model loaded: 1,000 tiny models, each then
    // digested on a thread, took 160 MiB of RSS with it and 100 MiB with this one. A 64 KiB
    // read is one system call next to about 40 µs of hashing.
    let mut buffer = [0u8; DIGEST_READ_BYTES];
    loop {
        let n = file
            .read(&mut buffer)
            .map_err(|e| Error::Load(format!("cannot read {}: {e}", path.display())))?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// The most files a model directory may hold.
const MAX_FILES: usize = 100_000;

/// Lists the regular files under `dir`, following symbolic links. `ancestors` holds the
/// canonical paths of the directories being walked, so that a link back to one of them (a loop)
/// is an error instead of an endless walk.
fn files_under(
    dir: &Path,
    base: &Path,
    ancestors: &mut Vec<PathBuf>,
    out: &mut Vec<(String, PathBuf)>,
) -> Result<()> {
    let canonical = dir
        .canonicalize()
        .map_err(|e| Error::Load(format!("cannot resolve {}: {e}", dir.display())))?;
    if ancestors.contains(&canonical) {
        return Err(Error::Load(format!(
            "{} links back to {} (a symbolic link loop): the model directory cannot be digested",
            dir.display(),
            canonical.display()
        )));
    }
    ancestors.push(canonical);
    let entries = std::fs::read_dir(dir)
        .map_err(|e| Error::Load(format!("cannot list {}: {e}", dir.display())))?;
    for entry in entries {
        let path = entry
            .map_err(|e| Error::Load(format!("cannot list {}: {e}", dir.display())))?
            .path();
        if path.is_dir() {
            files_under(&path, base, ancestors, out)?;
        } else if path.is_file() {
            if out.len() >= MAX_FILES {
                return Err(Error::Load(format!(
                    "{} holds more than {MAX_FILES} files",
                    base.display()
                )));
            }
            let relative = path
                .strip_prefix(base)
                .expect("under base")
                .components()
                .map(|c| c.as_os_str().to_string_lossy())
                .collect::<Vec<_>>()
                .join("/");
            out.push((relative, path));
        }
    }
    ancestors.pop();
    Ok(())
}

/// The digest of a model file or directory (see the module docs), as lowercase hex.
pub fn model_sha256(path: &Path) -> Result<String> {
    if !path.is_dir() {
        return file_sha256(path);
    }
    let mut files = Vec::new();
    files_under(path, path, &mut Vec::new(), &mut files)?;
    let mut listing = Vec::with_capacity(files.len());
    for (relative, file) in files {
        listing.push((relative, file_sha256(&file)?));
    }
    Ok(listing_sha256(&mut listing))
}

/// The digest of a directory from its files' relative paths (`/`-separated) and digests: what
/// [`model_sha256`] gives for a directory holding exactly those files. Sorts `files`.
pub fn listing_sha256(files: &mut [(String, String)]) -> String {
    files.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    let mut listing = Sha256::new();
    for (relative, digest) in files.iter() {
        listing.update(format!("{digest}  {relative}\n").as_bytes());
    }
    hex::encode(listing.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_and_directory_digests_are_stable() {
        let dir = std::env::temp_dir().join(format!("oxinfer-digest-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::write(dir.join("b.txt"), b"bee\n").unwrap();
        std::fs::write(dir.join("sub/a.txt"), b"hello\n").unwrap();
        // echo hello | sha256sum
        assert_eq!(
            file_sha256(&dir.join("sub/a.txt")).unwrap(),
            "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03"
        );
        let listing = format!(
            "{}  b.txt\n{}  sub/a.txt\n",
            file_sha256(&dir.join("b.txt")).unwrap(),
            file_sha256(&dir.join("sub/a.txt")).unwrap()
        );
        assert_eq!(
            model_sha256(&dir).unwrap(),
            hex::encode(Sha256::digest(listing.as_bytes()))
        );
        assert!(file_sha256(&dir.join("missing")).is_err());
        // A link to a directory elsewhere is followed; one back into the walk is a loop.
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink(dir.join("sub"), dir.join("also-sub")).unwrap();
            assert!(model_sha256(&dir).is_ok());
            std::os::unix::fs::symlink(&dir, dir.join("sub/up")).unwrap();
            let e = model_sha256(&dir).unwrap_err().to_string();
            assert!(e.contains("symbolic link loop"), "{e}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
