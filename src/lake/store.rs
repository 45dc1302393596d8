//! Where lake objects go: an S3 bucket (any S3-compatible store through a
//! custom endpoint and path-style addressing), or a local directory with
//! the same layout, the default when no bucket is configured (so `make
//! demo` needs no S3).

use std::path::{Path, PathBuf};

use thiserror::Error;

pub use super::s3::S3Store;
use crate::config::LakeConfig;

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("lake store {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("lake store s3://{bucket}/{key}: {op} failed: {detail}")]
    S3 {
        bucket: String,
        key: String,
        op: &'static str,
        detail: String,
    },
}

/// The outcome of a put that must not overwrite.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Put {
    Created,
    /// The key was there already (a retry after a crash): nothing written.
    Exists,
}

/// A lake store.
#[derive(Debug, Clone)]
pub enum Store {
    Local(LocalStore),
    S3(S3Store),
}

impl Store {
    pub fn local(dir: impl Into<PathBuf>) -> Store {
        Store::Local(LocalStore { root: dir.into() })
    }

    /// The store `[lake]` names: the bucket when one is set, else the
    /// directory.
    pub async fn from_config(config: &LakeConfig) -> Store {
        match &config.bucket {
            Some(bucket) => Store::S3(S3Store::connect(config, bucket).await),
            None => Store::local(&config.dir),
        }
    }

    /// Writes `key` unless it exists (`If-None-Match: *` on S3).
    pub async fn put_if_absent(&self, key: &str, body: Vec<u8>) -> Result<Put, StoreError> {
        match self {
            Store::Local(s) => {
                let s = s.clone();
                let key = key.to_owned();
                tokio::task::spawn_blocking(move || s.put_if_absent(&key, &body))
                    .await
                    .unwrap_or_else(|e| {
                        Err(StoreError::Io {
                            path: PathBuf::new(),
                            source: std::io::Error::other(e),
                        })
                    })
            }
            Store::S3(s) => s.put_if_absent(key, body).await,
        }
    }

    /// Every key under `prefix` (a directory path in the layout), sorted.
    pub async fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        match self {
            Store::Local(s) => {
                let s = s.clone();
                let prefix = prefix.to_owned();
                tokio::task::spawn_blocking(move || s.list(&prefix))
                    .await
                    .unwrap_or_else(|e| {
                        Err(StoreError::Io {
                            path: PathBuf::new(),
                            source: std::io::Error::other(e),
                        })
                    })
            }
            Store::S3(s) => s.list(prefix).await,
        }
    }

    /// The names of the "directories" right under `prefix` (S3's common
    /// prefixes with delimiter `/`), without the trailing slash, sorted:
    /// `list_dirs("exchange=binance")` gives `["symbol=BTCUSDT", …]`.
    pub async fn list_dirs(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        match self {
            Store::Local(s) => {
                let dir = s.root.join(prefix.trim_matches('/'));
                let mut out = Vec::new();
                let mut entries = match tokio::fs::read_dir(&dir).await {
                    Ok(e) => e,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
                    Err(e) => return Err(io(&dir)(e)),
                };
                while let Some(entry) = entries.next_entry().await.map_err(io(&dir))? {
                    if entry.file_type().await.map_err(io(&dir))?.is_dir() {
                        out.push(entry.file_name().to_string_lossy().into_owned());
                    }
                }
                out.sort();
                Ok(out)
            }
            Store::S3(s) => s.list_dirs(prefix).await,
        }
    }

    pub async fn get(&self, key: &str) -> Result<Vec<u8>, StoreError> {
        match self {
            Store::Local(s) => {
                let path = s.root.join(key);
                tokio::fs::read(&path)
                    .await
                    .map_err(|source| StoreError::Io { path, source })
            }
            Store::S3(s) => s.get(key).await,
        }
    }

    /// Where the store is, for logs.
    pub fn describe(&self) -> String {
        match self {
            Store::Local(s) => format!("directory {}", s.root.display()),
            Store::S3(s) => s.describe(),
        }
    }
}

/// A directory with the lake's layout.
#[derive(Debug, Clone)]
pub struct LocalStore {
    root: PathBuf,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_owned(),
        source,
    }
}

impl LocalStore {
    fn put_if_absent(&self, key: &str, body: &[u8]) -> Result<Put, StoreError> {
        use std::io::Write;
        let path = self.root.join(key);
        if path.exists() {
            return Ok(Put::Exists);
        }
        let dir = path.parent().unwrap_or(&self.root);
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        // Write aside, fsync, then link into place: readers never see a
        // partial object, and a concurrent writer of the same key loses.
        let tmp = dir.join(format!(
            ".tmp-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        let mut f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
        f.write_all(body).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
        drop(f);
        let linked = std::fs::hard_link(&tmp, &path);
        let _ = std::fs::remove_file(&tmp);
        match linked {
            Ok(()) => {
                if let Ok(d) = std::fs::File::open(dir) {
                    let _ = d.sync_all();
                }
                Ok(Put::Created)
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(Put::Exists),
            Err(e) => Err(io(&path)(e)),
        }
    }

    fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let start = self.root.join(prefix.trim_matches('/'));
        let mut out = Vec::new();
        let mut stack = vec![start];
        while let Some(dir) = stack.pop() {
            let entries = match std::fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io(&dir)(e)),
            };
            for entry in entries {
                let entry = entry.map_err(io(&dir))?;
                let path = entry.path();
                if path.is_dir() {
                    stack.push(path);
                } else if path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.ends_with(".jsonl.gz"))
                {
                    if let Ok(rel) = path.strip_prefix(&self.root) {
                        out.push(rel.to_string_lossy().into_owned());
                    }
                }
            }
        }
        out.sort();
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn puts_never_overwrite_and_list_finds_objects() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::local(dir.path());
        let key = "a=1/b=2/part-1-w-000001.jsonl.gz";
        assert_eq!(
            store.put_if_absent(key, b"one".to_vec()).await.unwrap(),
            Put::Created
        );
        assert_eq!(
            store.put_if_absent(key, b"two".to_vec()).await.unwrap(),
            Put::Exists
        );
        assert_eq!(store.get(key).await.unwrap(), b"one");
        assert_eq!(store.list("a=1").await.unwrap(), vec![key.to_owned()]);
        assert!(store.list("nothing=here").await.unwrap().is_empty());
    }
}
