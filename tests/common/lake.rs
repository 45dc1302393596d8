//! Reading the lake back in tests: the objects in the store and the lines
//! a (killed) writer left in its spool.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use klines::lake::store::Store;
use klines::lake::LakeLine;

/// Every object in the lake as (key, lines), read back through S3 and
/// gunzipped.
pub async fn read_lake(store: &Store) -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    for key in store.list("").await.unwrap() {
        assert!(
            key.ends_with(".jsonl.gz"),
            "only objects in the lake: {key}"
        );
        let body = store.get(&key).await.unwrap();
        let mut text = String::new();
        flate2::read::GzDecoder::new(&body[..])
            .read_to_string(&mut text)
            .unwrap_or_else(|e| panic!("{key} is gzip: {e}"));
        out.push((key, text.lines().map(String::from).collect()));
    }
    out
}

/// The lines of a lake, as a multiset.
pub fn line_counts(objects: &[(String, Vec<String>)]) -> BTreeMap<String, u32> {
    let mut out = BTreeMap::new();
    for (_, lines) in objects {
        for l in lines {
            *out.entry(l.clone()).or_insert(0) += 1;
        }
    }
    out
}

/// The complete lines in the lake spool's segments (a torn last line of a
/// killed writer does not count: it was never whole on disk).
pub fn spooled_lines(spool: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(spool) else {
        return out;
    };
    for entry in entries {
        let path = entry.unwrap().path();
        if !path.is_file() {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        for l in text.split_inclusive('\n') {
            if l.ends_with('\n') && serde_json::from_str::<LakeLine>(l.trim_end()).is_ok() {
                out.push(l.trim_end().to_owned());
            }
        }
    }
    out
}

/// The names of the segment files in a lake spool.
pub fn segment_files(spool: &Path) -> Vec<String> {
    std::fs::read_dir(spool)
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("seg-"))
                .collect()
        })
        .unwrap_or_default()
}
