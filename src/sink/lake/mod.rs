//! The lake sink: takes [`LakeRecord`]s from the workers through its own
//! bounded channel, appends them to the spool, fsyncs every flush
//! interval, seals segments when due, and has a background uploader put
//! sealed segments into the store, split by partition and gzipped,
//! retrying with backoff while the store is unreachable. Segments a crash
//! left are uploaded at start. A spool write failure (a full disk) is
//! counted and logged loudly; it never stops the workers.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use flate2::write::GzEncoder;
use flate2::Compression;
use futures_util::StreamExt;
use tokio::sync::{mpsc, Notify};
use tracing::{error, info, warn};

pub mod spool;

use super::events::{
    InternalEvent, LakeLineRefused, LakeLineWritten, LakeObjectPut, LakeSealFailed, LakeSyncFailed,
    LakeUploadFailed,
};
use super::Throttle;
use crate::config::LakeConfig;
use crate::lake::store::{Put, Store};
use crate::lake::{object_key, LakeRecord, Partition, PartitionFields};
use crate::telemetry::Metrics;
use spool::{sealed_segments, spool_bytes, LakeSpool, Sealed};

/// What the lake sink did, reported at exit.
#[derive(Debug, Clone, Default)]
pub struct LakeReport {
    pub lines: u64,
    pub objects: u64,
    /// Observations the spool refused (a write failed: a full disk); they
    /// are not in the lake (bronze has the finals among them).
    pub refused: u64,
    /// Segments still waiting in the spool at exit (uploaded at next start).
    pub segments_left: usize,
}

pub struct LakeSink {
    spool: LakeSpool,
    pending: Arc<LakePending>,
    store: Store,
    prefix: String,
    flush_interval: Duration,
    metrics: Arc<Metrics>,
    /// A full disk fails every write: log the first failure, then a count
    /// at most every [`Throttle::EVERY`], not a line per observation.
    refusals: Throttle,
    sync_errors: Throttle,
}

impl LakeSink {
    pub fn new(
        config: &LakeConfig,
        spool_dir: std::path::PathBuf,
        store: Store,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<Self> {
        let writer = crate::lake::new_writer_id();
        let spool = LakeSpool::open(
            spool_dir,
            writer,
            config.segment_max_bytes,
            config.segment_max_age,
        )?;
        Ok(LakeSink {
            pending: Arc::new(LakePending::new(spool.dir().to_owned())),
            spool,
            store,
            prefix: config.prefix.clone(),
            flush_interval: config.flush_interval,
            metrics,
            refusals: Throttle::default(),
            sync_errors: Throttle::default(),
        })
    }

    /// What the spool still holds, for retention (shared; see
    /// [`LakePending`]).
    pub fn pending(&self) -> Arc<LakePending> {
        Arc::clone(&self.pending)
    }

    /// Runs until the channel closes (every worker has stopped), then seals
    /// and uploads what is left within `grace`.
    pub async fn run(mut self, mut rx: mpsc::Receiver<LakeRecord>, grace: Duration) -> LakeReport {
        let mut report = LakeReport::default();
        let wake = Arc::new(Notify::new());
        let stop = tokio_util::sync::CancellationToken::new();
        let uploader = tokio::spawn(upload_loop(
            self.store.clone(),
            self.prefix.clone(),
            self.spool.dir().to_owned(),
            Arc::clone(&wake),
            stop.clone(),
            Arc::clone(&self.metrics),
        ));
        info!(store = %self.store.describe(), spool = %self.spool.dir().display(), "Lake sink started");
        let mut tick = tokio::time::interval(self.flush_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                record = rx.recv() => match record {
                    Some(record) => {
                        self.write(&record, &mut report);
                        // Drain what is queued without waking the timer.
                        while let Ok(record) = rx.try_recv() {
                            self.write(&record, &mut report);
                        }
                    }
                    None => break,
                },
                _ = tick.tick() => {
                    // fsync on a blocking thread: a slow disk must not stall
                    // the runtime the WebSocket workers share.
                    let synced = match self.spool.flush_for_sync() {
                        Ok(Some(file)) => tokio::task::spawn_blocking(move || file.sync_data())
                            .await
                            .unwrap_or_else(|e| Err(std::io::Error::other(e))),
                        Ok(None) => Ok(()),
                        Err(e) => Err(e),
                    };
                    if let Err(e) = synced {
                        let report = self.sync_errors.due().then(|| self.sync_errors.take());
                        LakeSyncFailed { error: &e, report }.emit(&self.metrics);
                    }
                    if self.spool.due(Utc::now()) {
                        self.seal(&wake);
                    }
                    self.metrics.lake_spool_bytes.set(spool_bytes(self.spool.dir()) as i64);
                }
            }
        }
        self.seal(&wake);
        // The last upload pass, within the grace period.
        stop.cancel();
        wake.notify_one();
        match tokio::time::timeout(grace, uploader).await {
            Ok(Ok(objects)) => report.objects = objects,
            _ => warn!("Lake upload did not finish within the grace period; the spool keeps the rest for the next start"),
        }
        report.segments_left = sealed_segments(self.spool.dir()).map_or(0, |s| s.len());
        self.metrics
            .lake_spool_bytes
            .set(spool_bytes(self.spool.dir()) as i64);
        report
    }

    fn write(&mut self, record: &LakeRecord, report: &mut LakeReport) {
        let line = record.to_line();
        let bytes = match serde_json::to_vec(&line) {
            Ok(b) => b,
            Err(e) => {
                error!(error = %e, "Cannot encode a lake line");
                return;
            }
        };
        match self.spool.append(&bytes) {
            Ok(()) => {
                if let LakeRecord::Candle { event, .. } = record {
                    self.pending.note(event.candle.interval_start);
                }
                report.lines += 1;
                LakeLineWritten.emit(&self.metrics);
            }
            Err(e) => {
                report.refused += 1;
                let report = self.refusals.due().then(|| self.refusals.take());
                LakeLineRefused {
                    error: &e,
                    spool: self.spool.dir(),
                    report,
                }
                .emit(&self.metrics);
            }
        }
    }

    fn seal(&mut self, wake: &Notify) {
        match self.spool.seal() {
            Ok(Some(sealed)) => {
                self.pending.sealed(sealed.path);
                wake.notify_one()
            }
            Ok(None) => {}
            Err(e) => {
                // Sealed anyway when the disk is full (see LakeSpool::seal).
                LakeSealFailed { error: &e }.emit(&self.metrics);
                wake.notify_one();
            }
        }
    }
}

/// The oldest minute whose observations the spool still holds (not yet
/// uploaded to the store): bronze retention never drops an hour from it on.
/// Lines are tracked as they are appended; segments a previous process left
/// (their content unknown until uploaded) and segments sealed with an error
/// hold everything back until they are uploaded.
#[derive(Debug)]
pub struct LakePending {
    dir: std::path::PathBuf,
    inner: std::sync::Mutex<PendingInner>,
}

#[derive(Debug, Default)]
struct PendingInner {
    /// The oldest `interval_start` appended to the active segment.
    active: Option<chrono::DateTime<Utc>>,
    /// Sealed segments of this process, with their oldest `interval_start`.
    sealed: BTreeMap<std::path::PathBuf, chrono::DateTime<Utc>>,
}

impl LakePending {
    fn new(dir: std::path::PathBuf) -> Self {
        LakePending {
            dir,
            inner: std::sync::Mutex::new(PendingInner::default()),
        }
    }

    fn note(&self, interval_start: chrono::DateTime<Utc>) {
        let mut inner = self.inner.lock().expect("lake pending poisoned");
        inner.active = Some(
            inner
                .active
                .map_or(interval_start, |a| a.min(interval_start)),
        );
    }

    fn sealed(&self, path: std::path::PathBuf) {
        let mut inner = self.inner.lock().expect("lake pending poisoned");
        if let Some(oldest) = inner.active.take() {
            inner.sealed.insert(path, oldest);
        }
    }

    /// The oldest minute not yet uploaded: `None` when the spool holds
    /// nothing; the Unix epoch when it holds a segment of unknown content.
    pub fn oldest(&self) -> Option<chrono::DateTime<Utc>> {
        let on_disk = sealed_segments(&self.dir).unwrap_or_default();
        let mut inner = self.inner.lock().expect("lake pending poisoned");
        let paths: std::collections::BTreeSet<&std::path::Path> =
            on_disk.iter().map(|s| s.path.as_path()).collect();
        inner.sealed.retain(|p, _| paths.contains(p.as_path()));
        let unknown = on_disk.iter().any(|s| !inner.sealed.contains_key(&s.path));
        if unknown {
            return Some(chrono::DateTime::UNIX_EPOCH);
        }
        inner.sealed.values().copied().chain(inner.active).min()
    }
}

/// Uploads sealed segments whenever woken (and every few seconds), until
/// `stop`, then one last pass. Returns the objects written.
async fn upload_loop(
    store: Store,
    prefix: String,
    dir: std::path::PathBuf,
    wake: Arc<Notify>,
    stop: tokio_util::sync::CancellationToken,
    metrics: Arc<Metrics>,
) -> u64 {
    let mut objects = 0;
    let mut backoff = Duration::from_millis(500);
    loop {
        let last = stop.is_cancelled();
        match upload_pending(&store, &prefix, &dir, &metrics).await {
            Ok(n) => {
                objects += n;
                backoff = Duration::from_millis(500);
            }
            Err(e) => {
                LakeUploadFailed {
                    error: &e,
                    retry: backoff,
                }
                .emit(&metrics);
                backoff = (backoff * 2).min(Duration::from_secs(30));
                if last {
                    return objects;
                }
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.cancelled() => {}
                }
                continue;
            }
        }
        if last {
            return objects;
        }
        tokio::select! {
            _ = wake.notified() => {}
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
    }
}

/// Puts every sealed segment in `dir` into the store; removes each segment
/// once all its partitions are there.
pub async fn upload_pending(
    store: &Store,
    prefix: &str,
    dir: &std::path::Path,
    metrics: &Metrics,
) -> Result<u64, String> {
    let segments = sealed_segments(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut objects = 0;
    for segment in segments {
        objects += upload_segment(store, prefix, &segment, metrics).await?;
        tokio::fs::remove_file(&segment.path)
            .await
            .map_err(|e| format!("{}: {e}", segment.path.display()))?;
    }
    Ok(objects)
}

/// Puts of one segment's objects in flight at once.
const UPLOAD_CONCURRENCY: usize = 32;

/// One partition's share of a segment, compressed as it is read.
struct Group {
    first_ms: i64,
    gz: GzEncoder<Vec<u8>>,
}

/// A segment's objects: per partition its gzip body and its first line's
/// received time (ms), and the unreadable lines skipped.
struct Grouped {
    bodies: BTreeMap<Partition, (Vec<u8>, i64)>,
    torn: u64,
}

/// Reads a sealed segment line by line and compresses each line into its
/// partition's object at once, so memory holds the compressed objects, not
/// the segment. A torn last line of a crashed segment is skipped (and
/// counted). Blocking: run it off the async workers.
fn group_segment(path: &std::path::Path) -> Result<Grouped, String> {
    use std::io::BufRead;
    let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut reader = std::io::BufReader::with_capacity(1 << 20, file);
    let mut groups: BTreeMap<Partition, Group> = BTreeMap::new();
    let mut torn = 0;
    let mut raw = Vec::new();
    loop {
        raw.clear();
        let n = reader
            .read_until(b'\n', &mut raw)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        if n == 0 {
            break;
        }
        let line = raw.strip_suffix(b"\n").unwrap_or(&raw);
        if line.is_empty() {
            continue;
        }
        let Ok(f) = serde_json::from_slice::<PartitionFields<'_>>(line) else {
            torn += 1;
            continue;
        };
        let partition = Partition::from_fields(
            &f.kind,
            &f.exchange,
            f.interval_seconds,
            f.interval_start,
            f.received_ts,
        );
        let group = groups.entry(partition).or_insert_with(|| Group {
            first_ms: f.received_ts.timestamp_millis(),
            // Level 1: most of the ratio of the default level for a third
            // of the CPU, which the uploader shares with the feed.
            gz: GzEncoder::new(Vec::new(), Compression::fast()),
        });
        group.gz.write_all(line).map_err(|e| e.to_string())?;
        group.gz.write_all(b"\n").map_err(|e| e.to_string())?;
    }
    let mut bodies = BTreeMap::new();
    for (partition, group) in groups {
        let body = group.gz.finish().map_err(|e| e.to_string())?;
        bodies.insert(partition, (body, group.first_ms));
    }
    Ok(Grouped { bodies, torn })
}

async fn upload_segment(
    store: &Store,
    prefix: &str,
    segment: &Sealed,
    metrics: &Metrics,
) -> Result<u64, String> {
    let path = segment.path.clone();
    let Grouped { bodies, torn } = tokio::task::spawn_blocking(move || group_segment(&path))
        .await
        .map_err(|e| format!("reading a spool segment: {e}"))??;
    if torn > 0 {
        warn!(segment = %segment.path.display(), lines = torn, "Skipped unreadable lines of a spool segment (cut off by a crash)");
    }
    // One object per partition (exchange and hour), put a few at a time.
    let puts: Vec<_> = bodies
        .into_iter()
        .map(|(partition, (body, first_ms))| {
            let key = object_key(prefix, &partition, first_ms, &segment.writer, segment.seq);
            async move {
                let began = std::time::Instant::now();
                let put = store
                    .put_if_absent(&key, body)
                    .await
                    .map_err(|e| e.to_string())?;
                LakeObjectPut {
                    took: began.elapsed(),
                    created: matches!(put, Put::Created),
                }
                .emit(metrics);
                Ok::<_, String>(put)
            }
        })
        .collect();
    let puts = futures_util::stream::iter(puts).buffer_unordered(UPLOAD_CONCURRENCY);
    futures_util::pin_mut!(puts);
    let mut written = 0;
    while let Some(put) = puts.next().await {
        if let Put::Created = put? {
            written += 1;
        }
    }
    Ok(written)
}
