//! The lake's write-ahead spool: lines are appended to one active segment
//! file and fsynced every flush interval; a segment is sealed (renamed) on
//! the hour, on size and on age. Sealed segments wait there until every
//! partition of them is in the store; a segment left active by a crash is
//! treated as sealed at the next start. A segment's name carries the writer
//! id and sequence its objects are keyed by, so uploading it again after a
//! crash writes the same keys (and the store keeps the first).

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chrono::{DateTime, Timelike, Utc};

const ACTIVE_SUFFIX: &str = ".open";
const SEALED_SUFFIX: &str = ".sealed";

/// A sealed segment: its path, writer and sequence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    pub path: PathBuf,
    pub writer: String,
    pub seq: u64,
}

struct Active {
    file: BufWriter<File>,
    path: PathBuf,
    seq: u64,
    bytes: u64,
    opened: Instant,
    /// The wall-clock hour the segment was opened in.
    hour: u32,
}

pub struct LakeSpool {
    dir: PathBuf,
    writer: String,
    next_seq: u64,
    active: Option<Active>,
    max_bytes: u64,
    max_age: Duration,
}

fn name(writer: &str, seq: u64, suffix: &str) -> String {
    format!("seg-{writer}-{seq:06}.jsonl{suffix}")
}

/// Parses `seg-{writer}-{seq}.jsonl{suffix}`.
fn parse_name(file: &str) -> Option<(String, u64, bool)> {
    let rest = file.strip_prefix("seg-")?;
    let (stem, sealed) = if let Some(s) = rest.strip_suffix(&format!(".jsonl{SEALED_SUFFIX}")) {
        (s, true)
    } else {
        (rest.strip_suffix(&format!(".jsonl{ACTIVE_SUFFIX}"))?, false)
    };
    let (writer, seq) = stem.rsplit_once('-')?;
    Some((writer.to_owned(), seq.parse().ok()?, sealed))
}

impl LakeSpool {
    /// Opens the spool in `dir`, sealing any segment a previous process
    /// left active.
    pub fn open(
        dir: impl Into<PathBuf>,
        writer: String,
        max_bytes: u64,
        max_age: Duration,
    ) -> std::io::Result<LakeSpool> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir)?;
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            let Some(file) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            if let Some((w, seq, false)) = parse_name(file) {
                std::fs::rename(&path, dir.join(name(&w, seq, SEALED_SUFFIX)))?;
            }
        }
        Ok(LakeSpool {
            dir,
            writer,
            next_seq: 1,
            active: None,
            max_bytes,
            max_age,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Appends one line (without its newline).
    pub fn append(&mut self, line: &[u8]) -> std::io::Result<()> {
        if self.active.is_none() {
            let seq = self.next_seq;
            self.next_seq += 1;
            let path = self.dir.join(name(&self.writer, seq, ACTIVE_SUFFIX));
            let file = OpenOptions::new().create(true).append(true).open(&path)?;
            self.active = Some(Active {
                file: BufWriter::with_capacity(256 * 1024, file),
                path,
                seq,
                bytes: 0,
                opened: Instant::now(),
                hour: Utc::now().hour(),
            });
        }
        let a = self.active.as_mut().expect("opened above");
        a.file.write_all(line)?;
        a.file.write_all(b"\n")?;
        a.bytes += line.len() as u64 + 1;
        Ok(())
    }

    /// Writes what is buffered and fsyncs it.
    pub fn sync(&mut self) -> std::io::Result<()> {
        if let Some(a) = &mut self.active {
            a.file.flush()?;
            a.file.get_ref().sync_data()?;
        }
        Ok(())
    }

    /// Writes what is buffered and returns a handle to fsync the segment
    /// with, so the caller can do the slow part off its async thread.
    pub fn flush_for_sync(&mut self) -> std::io::Result<Option<File>> {
        match &mut self.active {
            Some(a) => {
                a.file.flush()?;
                a.file.get_ref().try_clone().map(Some)
            }
            None => Ok(None),
        }
    }

    /// Whether the active segment is due to be sealed at `now`.
    pub fn due(&self, now: DateTime<Utc>) -> bool {
        self.active.as_ref().is_some_and(|a| {
            a.bytes >= self.max_bytes || a.opened.elapsed() >= self.max_age || a.hour != now.hour()
        })
    }

    /// Bytes in the active segment.
    pub fn active_bytes(&self) -> u64 {
        self.active.as_ref().map_or(0, |a| a.bytes)
    }

    /// Syncs and seals the active segment, if any. When the sync fails (a
    /// full disk), the segment is sealed anyway with what reached the disk
    /// (a torn last line is skipped at upload) and the error says how many
    /// buffered bytes were dropped: a segment that can never be flushed
    /// must not keep the spool from draining.
    pub fn seal(&mut self) -> std::io::Result<Option<Sealed>> {
        let Some(mut a) = self.active.take() else {
            return Ok(None);
        };
        let synced = a.file.flush().and_then(|()| a.file.get_ref().sync_data());
        let dropped = a.file.buffer().len();
        let (file, _unwritten) = a.file.into_parts();
        drop(file);
        let sealed = self.dir.join(name(&self.writer, a.seq, SEALED_SUFFIX));
        std::fs::rename(&a.path, &sealed)?;
        if let Ok(d) = File::open(&self.dir) {
            let _ = d.sync_all();
        }
        if let Err(e) = synced {
            return Err(std::io::Error::new(
                e.kind(),
                format!(
                    "{e}; sealed {} without its last {dropped} buffered bytes",
                    sealed.display()
                ),
            ));
        }
        Ok(Some(Sealed {
            path: sealed,
            writer: self.writer.clone(),
            seq: a.seq,
        }))
    }
}

/// Sealed segments in `dir`, oldest writer/sequence first.
pub fn sealed_segments(dir: &Path) -> std::io::Result<Vec<Sealed>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let Some(file) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if let Some((writer, seq, true)) = parse_name(file) {
            out.push(Sealed { path, writer, seq });
        }
    }
    out.sort_by(|a, b| (&a.writer, a.seq).cmp(&(&b.writer, b.seq)));
    Ok(out)
}

/// Bytes waiting in `dir` (sealed and active segments).
pub fn spool_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_seal_and_a_crashed_active_one_is_sealed_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let mut s =
            LakeSpool::open(dir.path(), "w1".into(), 1 << 20, Duration::from_secs(300)).unwrap();
        s.append(b"{\"a\":1}").unwrap();
        s.sync().unwrap();
        assert!(!s.due(Utc::now()));
        let sealed = s.seal().unwrap().unwrap();
        assert_eq!(sealed.seq, 1);
        assert_eq!(
            std::fs::read_to_string(&sealed.path).unwrap(),
            "{\"a\":1}\n"
        );
        // A crash leaves an active segment behind.
        s.append(b"{\"b\":2}").unwrap();
        s.sync().unwrap();
        drop(s);
        let _again =
            LakeSpool::open(dir.path(), "w2".into(), 1 << 20, Duration::from_secs(300)).unwrap();
        let all = sealed_segments(dir.path()).unwrap();
        assert_eq!(
            all.iter()
                .map(|s| (s.writer.as_str(), s.seq))
                .collect::<Vec<_>>(),
            vec![("w1", 1), ("w1", 2)]
        );
    }

    #[test]
    fn size_makes_a_segment_due() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = LakeSpool::open(dir.path(), "w".into(), 10, Duration::from_secs(300)).unwrap();
        s.append(b"0123456789").unwrap();
        assert!(s.due(Utc::now()));
        assert_eq!(s.active_bytes(), 11);
    }
}
