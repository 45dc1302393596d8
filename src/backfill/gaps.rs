//! Gap detection and page planning: which minutes of a pair lack a final
//! candle, and the fewest REST pages that cover them.

use std::ops::Range;

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use crate::domain::Minute;

const GAPS_SQL: &str = include_str!("../../sql/backfill_gaps.sql");

/// One REST request's worth of minutes: `range` (at most the exchange's page
/// limit long) and the gap minutes inside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    pub range: Range<Minute>,
    pub gaps: Vec<Range<Minute>>,
}

impl Page {
    pub fn gap_minutes(&self) -> i64 {
        minutes_in(&self.gaps)
    }

    pub fn is_gap(&self, m: Minute) -> bool {
        self.gaps.iter().any(|g| g.contains(&m))
    }
}

/// Minutes in a list of ranges.
pub fn minutes_in(runs: &[Range<Minute>]) -> i64 {
    runs.iter().map(|r| r.end.index() - r.start.index()).sum()
}

/// The missing minutes of a pair in `[from, to)` as contiguous runs; see
/// `sql/backfill_gaps.sql`.
pub async fn find_gaps(
    pool: &PgPool,
    exchange: &str,
    symbol: &str,
    from: Minute,
    to: Minute,
) -> Result<Vec<Range<Minute>>, sqlx::Error> {
    if from >= to {
        return Ok(Vec::new());
    }
    let rows: Vec<(DateTime<Utc>, DateTime<Utc>)> = sqlx::query_as(GAPS_SQL)
        .bind(exchange)
        .bind(symbol)
        .bind(from.start())
        .bind(to.start())
        .fetch_all(pool)
        .await?;
    Ok(rows
        .into_iter()
        .map(|(a, b)| Minute::containing(a)..Minute::containing(b))
        .collect())
}

/// Covers `runs` (sorted, disjoint) with pages of at most `limit` minutes:
/// each page starts at the first gap minute not yet covered and takes every
/// gap minute within `limit` of it, so scattered gaps share pages.
pub fn plan_pages(runs: &[Range<Minute>], limit: usize) -> Vec<Page> {
    let limit = limit.max(1) as i64;
    let mut pages: Vec<Page> = Vec::new();
    for run in runs {
        let mut start = run.start;
        while start < run.end {
            if let Some(page) = pages.last_mut() {
                if start < page.range.end {
                    let end = run.end.min(page.range.end);
                    page.gaps.push(start..end);
                    start = end;
                    continue;
                }
            }
            let range = start..start.plus(limit);
            let end = run.end.min(range.end);
            pages.push(Page {
                range,
                gaps: vec![start..end],
            });
            start = end;
        }
    }
    // Trim each page to its last gap minute: fewer rows to transfer.
    for page in &mut pages {
        if let Some(last) = page.gaps.last() {
            page.range.end = last.end;
        }
    }
    pages
}

/// Splits runs at `cutoff`: the parts before it (REST cannot reach them)
/// and the parts from it on.
pub fn split_at(
    runs: &[Range<Minute>],
    cutoff: Minute,
) -> (Vec<Range<Minute>>, Vec<Range<Minute>>) {
    let mut before = Vec::new();
    let mut after = Vec::new();
    for r in runs {
        if r.end <= cutoff {
            before.push(r.clone());
        } else if r.start >= cutoff {
            after.push(r.clone());
        } else {
            before.push(r.start..cutoff);
            after.push(cutoff..r.end);
        }
    }
    (before, after)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(i: i64) -> Minute {
        Minute::from_index(27_000_000 + i)
    }

    #[test]
    fn scattered_gaps_share_a_page_and_long_runs_split() {
        let runs = vec![
            m(0)..m(2),
            m(10)..m(11),
            m(995)..m(1_005),
            m(3_000)..m(5_500),
        ];
        let pages = plan_pages(&runs, 1000);
        assert_eq!(pages.len(), 5);
        assert_eq!(pages[0].range, m(0)..m(1_000));
        assert_eq!(
            pages[0].gaps,
            vec![m(0)..m(2), m(10)..m(11), m(995)..m(1_000)]
        );
        assert_eq!(pages[1].range, m(1_000)..m(1_005));
        assert_eq!(pages[2].range, m(3_000)..m(4_000));
        assert_eq!(pages[3].range, m(4_000)..m(5_000));
        assert_eq!(pages[4].range, m(5_000)..m(5_500));
        let covered: i64 = pages.iter().map(Page::gap_minutes).sum();
        assert_eq!(covered, minutes_in(&runs));
        assert!(pages
            .iter()
            .all(|p| p.range.end.index() - p.range.start.index() <= 1000));
        assert!(pages[0].is_gap(m(10)) && !pages[0].is_gap(m(11)));
    }

    #[test]
    fn no_gaps_no_pages() {
        assert!(plan_pages(&[], 1000).is_empty());
    }

    #[test]
    fn runs_split_at_the_history_cutoff() {
        let runs = vec![m(0)..m(5), m(8)..m(12), m(20)..m(21)];
        let (old, new) = split_at(&runs, m(10));
        assert_eq!(old, vec![m(0)..m(5), m(8)..m(10)]);
        assert_eq!(new, vec![m(10)..m(12), m(20)..m(21)]);
    }
}
