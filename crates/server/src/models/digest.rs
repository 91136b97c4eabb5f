//! Content digests of model files, for provenance and pinning.
//!
//! - A file: the SHA-256 of its bytes (what `sha256sum FILE` prints).
//! - A directory: the SHA-256 of a manifest of its regular files, sorted by their path relative
//!   to the directory (`/`-separated): for each file, one line `<sha256 hex>  <relative path>\n`,
//!   the format `sha256sum` prints. So `(cd DIR && find . -type f | sed 's|^\./||' | LC_ALL=C sort
//!   | xargs sha256sum) | sha256sum` gives the same digest. Symbolic links are followed.

use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use oxinfer_core::{Error, Result};

/// The SHA-256 of a file's bytes, as lowercase hex.
pub(crate) fn file_sha256(path: &Path) -> Result<String> {
    let mut file = std::fs::File::open(path)
        .map_err(|e| Error::Load(format!("cannot read {}: {e}", path.display())))?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
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

fn files_under(dir: &Path, base: &Path, out: &mut Vec<(String, PathBuf)>) -> Result<()> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| Error::Load(format!("cannot list {}: {e}", dir.display())))?;
    for entry in entries {
        let path = entry
            .map_err(|e| Error::Load(format!("cannot list {}: {e}", dir.display())))?
            .path();
        if path.is_dir() {
            files_under(&path, base, out)?;
        } else if path.is_file() {
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
    Ok(())
}

/// The digest of a model file or directory (see the module docs), as lowercase hex.
pub(crate) fn model_sha256(path: &Path) -> Result<String> {
    if !path.is_dir() {
        return file_sha256(path);
    }
    let mut files = Vec::new();
    files_under(path, path, &mut files)?;
    files.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    let mut listing = Sha256::new();
    for (relative, file) in files {
        listing.update(format!("{}  {relative}\n", file_sha256(&file)?).as_bytes());
    }
    Ok(hex::encode(listing.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_and_directory_digests_are_stable() {
        let dir = std::env::temp_dir().join(format!("oxinfer-digest-{}", std::process::id()));
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
    }
}
