//! Hourly partitions of the candle tables. The service creates them ahead of
//! time every hour; every writer also asks for the hours it is about to touch
//! (a backfill or replay may reach years back), and a per-process cache keeps
//! that to one round trip per new hour.

use std::collections::HashSet;
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use sqlx::PgPool;

/// The tables partitioned by hour of `interval_start`.
pub const HOURLY_TABLES: &[&str] = &["bronze.ohlcv_native", "silver.fact_ohlcv"];

const HOUR_SECONDS: i64 = 3600;

/// The hour (seconds since epoch / 3600) containing `t`.
pub fn hour_of(t: DateTime<Utc>) -> i64 {
    t.timestamp().div_euclid(HOUR_SECONDS)
}

fn hour_start(hour: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(hour * HOUR_SECONDS, 0).unwrap_or_default()
}

/// Groups sorted, de-duplicated hours into half-open runs `[a, b)`.
pub fn runs(hours: &[i64]) -> Vec<(i64, i64)> {
    let mut out: Vec<(i64, i64)> = Vec::new();
    for &h in hours {
        match out.last_mut() {
            Some((_, end)) if *end == h => *end = h + 1,
            _ => out.push((h, h + 1)),
        }
    }
    out
}

/// Remembers which hours are known to have partitions.
#[derive(Debug, Default)]
pub struct Partitions {
    known: Mutex<HashSet<i64>>,
}

impl Partitions {
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes sure every table in [`HOURLY_TABLES`] has a partition for each
    /// hour in `hours`. Returns how many partitions were created.
    pub async fn ensure_hours(
        &self,
        pool: &PgPool,
        hours: impl IntoIterator<Item = i64>,
    ) -> Result<u64, sqlx::Error> {
        let mut missing: Vec<i64> = {
            let known = self.known.lock().expect("partition cache poisoned");
            hours.into_iter().filter(|h| !known.contains(h)).collect()
        };
        if missing.is_empty() {
            return Ok(0);
        }
        missing.sort_unstable();
        missing.dedup();
        let mut created = 0u64;
        for (from, to) in runs(&missing) {
            created += create_range(pool, hour_start(from), hour_start(to)).await?;
        }
        self.known
            .lock()
            .expect("partition cache poisoned")
            .extend(missing);
        Ok(created)
    }

    /// Forgets that `hours` have partitions (one was dropped behind this
    /// cache's back, e.g. by retention); the next ensure creates them again.
    pub fn forget(&self, hours: impl IntoIterator<Item = i64>) {
        let mut known = self.known.lock().expect("partition cache poisoned");
        for h in hours {
            known.remove(&h);
        }
    }

    /// Ensures partitions for every hour overlapping `[from, to)`.
    pub async fn ensure_range(
        &self,
        pool: &PgPool,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<u64, sqlx::Error> {
        let first = hour_of(from);
        let last = hour_of(to - chrono::Duration::microseconds(1));
        self.ensure_hours(pool, first..=last).await
    }
}

async fn create_range(
    pool: &PgPool,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<u64, sqlx::Error> {
    let mut created = 0u64;
    for table in HOURLY_TABLES {
        let n: i32 =
            sqlx::query_scalar("SELECT ops.ensure_hourly_partitions($1::regclass, $2, $3)")
                .bind(table)
                .bind(from)
                .bind(to)
                .fetch_one(pool)
                .await?;
        created += u64::try_from(n).unwrap_or(0);
    }
    Ok(created)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hours_group_into_runs() {
        assert_eq!(runs(&[]), vec![]);
        assert_eq!(runs(&[5]), vec![(5, 6)]);
        assert_eq!(runs(&[1, 2, 3, 7, 8, 10]), vec![(1, 4), (7, 9), (10, 11)]);
    }

    #[test]
    fn hour_of_is_floor() {
        let t = DateTime::parse_from_rfc3339("2023-01-21T13:59:59Z")
            .unwrap()
            .to_utc();
        assert_eq!(
            hour_start(hour_of(t)).to_rfc3339(),
            "2023-01-21T13:00:00+00:00"
        );
        let before_epoch = DateTime::parse_from_rfc3339("1969-12-31T23:30:00Z")
            .unwrap()
            .to_utc();
        assert_eq!(hour_of(before_epoch), -1);
    }
}
