//! The on-disk spool of the bronze sink: where events wait while PostgreSQL
//! is unreachable and memory is full, and across restarts.
//!
//! A spool is a directory of segment files, one JSON event per line, each
//! written whole and fsynced before it counts. Segments are replayed oldest
//! first and deleted only after their rows are committed. A crash between
//! commit and delete replays a segment twice; bronze allows duplicates and
//! the merge makes silver unique, so that costs nothing but rows.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use thiserror::Error;
use tracing::warn;

use crate::domain::CandleEvent;

const SEGMENT_PREFIX: &str = "segment-";
const SEGMENT_SUFFIX: &str = ".jsonl";

#[derive(Debug, Error)]
pub enum SpoolError {
    #[error("spool {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl SpoolError {
    fn io(path: &Path, source: std::io::Error) -> Self {
        SpoolError::Io {
            path: path.to_owned(),
            source,
        }
    }
}

/// A spool directory.
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    seq: AtomicU64,
}

impl Spool {
    /// Opens (creating if needed) the spool in `dir`.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Spool, SpoolError> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir).map_err(|e| SpoolError::io(&dir, e))?;
        Ok(Spool {
            dir,
            seq: AtomicU64::new(0),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Segments waiting to be written, oldest first.
    pub fn segments(&self) -> Result<Vec<PathBuf>, SpoolError> {
        let mut out: Vec<PathBuf> = std::fs::read_dir(&self.dir)
            .map_err(|e| SpoolError::io(&self.dir, e))?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(SEGMENT_PREFIX) && n.ends_with(SEGMENT_SUFFIX))
            })
            .collect();
        // Names start with a zero-padded timestamp, so name order is age order.
        out.sort();
        Ok(out)
    }

    /// Writes `events` as one new segment, durably (file and directory
    /// fsynced). A partly written segment is left under a temporary name and
    /// never replayed.
    pub fn write_segment(&self, events: &[CandleEvent]) -> Result<PathBuf, SpoolError> {
        let name = format!(
            "{SEGMENT_PREFIX}{:020}-{}-{:06}{SEGMENT_SUFFIX}",
            chrono::Utc::now().timestamp_micros(),
            std::process::id(),
            self.seq.fetch_add(1, Ordering::Relaxed)
        );
        let path = self.dir.join(&name);
        let tmp = self.dir.join(format!(".{name}.tmp"));
        let mut buf = Vec::with_capacity(events.len() * 300);
        for event in events {
            serde_json::to_writer(&mut buf, event).expect("a CandleEvent always serialises");
            buf.push(b'\n');
        }
        let write = || -> std::io::Result<()> {
            let mut file = std::fs::File::create(&tmp)?;
            file.write_all(&buf)?;
            file.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            std::fs::File::open(&self.dir)?.sync_all()
        };
        write().map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            SpoolError::io(&path, e)
        })?;
        Ok(path)
    }

    /// Reads a segment. Lines that do not parse (which only a damaged disk
    /// can produce, since segments are renamed into place whole) are logged
    /// and skipped.
    pub fn read_segment(&self, path: &Path) -> Result<Vec<CandleEvent>, SpoolError> {
        let text = std::fs::read_to_string(path).map_err(|e| SpoolError::io(path, e))?;
        let mut events = Vec::new();
        for (n, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            match serde_json::from_str(line) {
                Ok(event) => events.push(event),
                Err(e) => {
                    warn!(segment = %path.display(), line = n + 1, error = %e, "Skipped a damaged spool line")
                }
            }
        }
        Ok(events)
    }

    /// Deletes a segment whose rows are committed.
    pub fn remove_segment(&self, path: &Path) -> Result<(), SpoolError> {
        std::fs::remove_file(path).map_err(|e| SpoolError::io(path, e))
    }

    /// Rows in all waiting segments (for the gauge at start-up).
    pub fn count_rows(&self) -> usize {
        self.segments()
            .unwrap_or_default()
            .iter()
            .filter_map(|p| std::fs::read_to_string(p).ok())
            .map(|t| t.lines().filter(|l| !l.trim().is_empty()).count())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Minute;

    fn event(i: i64) -> CandleEvent {
        crate::domain::sample_final("BTCUSDT", Minute::from_index(27_904_320 + i))
    }

    #[test]
    fn segments_round_trip_exactly_and_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let a: Vec<_> = (0..3).map(event).collect();
        let b: Vec<_> = (3..5).map(event).collect();
        let pa = spool.write_segment(&a).unwrap();
        let pb = spool.write_segment(&b).unwrap();
        assert_eq!(spool.segments().unwrap(), vec![pa.clone(), pb.clone()]);
        let back = spool.read_segment(&pa).unwrap();
        assert_eq!(back, a);
        assert_eq!(back[0].candle.open.to_string(), "22666.00000000");
        assert_eq!(spool.count_rows(), 5);
        spool.remove_segment(&pa).unwrap();
        assert_eq!(spool.segments().unwrap(), vec![pb]);
    }

    #[test]
    fn damaged_lines_are_skipped_and_temp_files_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let p = spool.write_segment(&[event(0)]).unwrap();
        let mut text = std::fs::read_to_string(&p).unwrap();
        text.push_str("{\"truncated\n");
        std::fs::write(&p, text).unwrap();
        std::fs::write(dir.path().join(".segment-x.jsonl.tmp"), "junk").unwrap();
        assert_eq!(spool.segments().unwrap().len(), 1);
        assert_eq!(spool.read_segment(&p).unwrap().len(), 1);
    }
}
