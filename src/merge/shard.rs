//! A bulk hour's ranges of symbols: how an hour is cut between the
//! connections that merge it at once.

use sqlx::postgres::PgArguments;
use sqlx::Postgres;

/// How much of a bulk hour the highest range of symbols takes, against 1
/// for each other range. Only that range appends at the right edge of
/// silver's and gold's key indexes (where PostgreSQL splits a full page
/// 90/10); a range below another inserts into the middle of them, where
/// pages split in half: more pages, more WAL. Measured on the merge bench
/// (two ranges, a fresh hour), cut in equal halves the lower range's silver
/// step took 0.90–1.00 s against 0.72–0.87 s, its 5-minute gold 0.37–0.39 s
/// against 0.29–0.33 s (gold costs by pair, not by index page, so a larger
/// share overshoots: at 1.25 the higher range finished last). At 1.15 the
/// two finish within 0.1 s of each other, and the merge took 1.52–1.59 s at
/// the median instead of 1.71–1.86 s.
const LAST_RANGE_SHARE: f64 = 1.15;

/// A range of symbols, `[lower, upper)` in bytewise order (the "C"
/// collation of the column); `None` is open. A bulk merge splits an hour
/// into such ranges and merges each in its own transaction on its own
/// connection: every step of the merge (silver, filled minutes, mismatches,
/// completeness, gold) concerns one pair at a time, and a pair's symbol is
/// in exactly one range, so the ranges never write the same rows. (The range
/// is on the symbol alone, not on (exchange, symbol): PostgreSQL estimates a
/// row comparison from its first column only, and with one exchange it took
/// half of an hour's rows for none and planned quadratic joins.)
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Shard {
    pub(super) lower: Option<String>,
    pub(super) upper: Option<String>,
}

impl Shard {
    /// The condition of this range on `alias.symbol` for a `{shard:ALIAS}`
    /// placeholder, its parameters numbered from `first` (nothing for the
    /// whole range).
    pub(super) fn condition(&self, alias: &str, first: usize) -> String {
        let mut out = String::new();
        let mut n = first;
        if self.lower.is_some() {
            out.push_str(&format!("AND {alias}.symbol >= ${n}"));
            n += 1;
        }
        if self.upper.is_some() {
            out.push_str(&format!(" AND {alias}.symbol < ${n}"));
        }
        out
    }

    /// Binds the parameters `condition` numbered.
    pub(super) fn bind<'q>(
        &'q self,
        mut query: sqlx::query::Query<'q, Postgres, PgArguments>,
    ) -> sqlx::query::Query<'q, Postgres, PgArguments> {
        for symbol in [&self.lower, &self.upper].into_iter().flatten() {
            query = query.bind(symbol.as_str());
        }
        query
    }

    pub(super) fn contains(&self, symbol: &str) -> bool {
        self.lower.as_deref().is_none_or(|l| symbol >= l)
            && self.upper.as_deref().is_none_or(|u| symbol < u)
    }

    /// Up to `n` ranges that split `symbols` (sorted, distinct) into runs
    /// that take about as long to merge: the last (highest) range gets
    /// [`LAST_RANGE_SHARE`] times the share of each other.
    pub(super) fn split(symbols: &[String], n: usize) -> Vec<Shard> {
        let n = n.min(symbols.len()).max(1);
        let shares = (n - 1) as f64 + LAST_RANGE_SHARE;
        let mut bounds = vec![None];
        let mut previous = 0;
        for i in 1..n {
            // Each range keeps at least one symbol of the sample.
            let at = ((symbols.len() as f64 * i as f64 / shares) as usize)
                .max(previous + 1)
                .min(symbols.len() - (n - i));
            bounds.push(Some(symbols[at].clone()));
            previous = at;
        }
        bounds.push(None);
        bounds
            .windows(2)
            .map(|w| Shard {
                lower: w[0].clone(),
                upper: w[1].clone(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::Shard;
    use crate::merge::sql::render;

    fn symbols(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    /// `sql` with its `{shard:ALIAS}` placeholders rendered for `shard`.
    fn apply(shard: &Shard, sql: &str, first: usize) -> String {
        render(sql, &|name, alias| {
            (name == "shard").then(|| shard.condition(alias.unwrap_or("?"), first))
        })
        .unwrap()
    }

    #[test]
    fn the_whole_range_adds_nothing() {
        let sql = "WHERE b.is_final {shard:b} AND x {shard:r}";
        assert_eq!(apply(&Shard::default(), sql, 3), "WHERE b.is_final  AND x ");
        assert!(Shard::default().contains("ANYTHING"));
    }

    #[test]
    fn ranges_number_their_parameters_and_repeat_them_per_alias() {
        let both = Shard {
            lower: Some("B".into()),
            upper: Some("D".into()),
        };
        assert_eq!(
            apply(&both, "a {shard:b} c {shard:r}", 3),
            "a AND b.symbol >= $3 AND b.symbol < $4 c AND r.symbol >= $3 AND r.symbol < $4"
        );
        let upper = Shard {
            lower: None,
            upper: Some("D".into()),
        };
        assert_eq!(apply(&upper, "{shard:e}", 4), " AND e.symbol < $4");
        let lower = Shard {
            lower: Some("D".into()),
            upper: None,
        };
        assert_eq!(apply(&lower, "{shard:e}", 4), "AND e.symbol >= $4");
    }

    #[test]
    fn a_split_covers_every_symbol_exactly_once() {
        let all = symbols(&["A", "B", "BTCUSDT", "C", "ETHUSDT", "X", "Z"]);
        for n in 1..=9 {
            let shards = Shard::split(&all, n);
            assert_eq!(shards.len(), n.min(all.len()));
            assert_eq!(shards.first().unwrap().lower, None);
            assert_eq!(shards.last().unwrap().upper, None);
            for probe in ["", "A", "AB", "BTCUSDC", "BTCUSDT", "Y", "ZZ", "~"] {
                let owners = shards.iter().filter(|s| s.contains(probe)).count();
                assert_eq!(owners, 1, "{probe} with {n} shards");
            }
        }
        assert_eq!(Shard::split(&[], 2), vec![Shard::default()]);
    }

    #[test]
    fn the_highest_range_takes_a_larger_share() {
        let all: Vec<String> = (0..1000).map(|i| format!("P{i:05}USDT")).collect();
        assert_eq!(owned_of(&all, &Shard::split(&all, 2)), vec![465, 535]);
        assert_eq!(owned_of(&all, &Shard::split(&all, 3)), vec![317, 317, 366]);
        // Never an empty range while there are symbols enough.
        let few = symbols(&["A", "B", "C"]);
        assert_eq!(owned_of(&few, &Shard::split(&few, 3)), vec![1, 1, 1]);
    }

    fn owned_of(all: &[String], shards: &[Shard]) -> Vec<usize> {
        shards
            .iter()
            .map(|s| all.iter().filter(|p| s.contains(p)).count())
            .collect()
    }

    #[test]
    fn ranges_order_bytes_as_the_c_collation_does() {
        let shard = Shard {
            lower: Some("B".into()),
            upper: Some("b".into()),
        };
        // Bytewise, every uppercase letter sorts before every lowercase one.
        assert!(shard.contains("Z"));
        assert!(shard.contains("a"));
        assert!(!shard.contains("b"));
        assert!(!shard.contains("A"));
    }
}
