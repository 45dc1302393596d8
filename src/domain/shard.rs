//! Scale-out: `klines ingest --shard i/N` ingests only the pairs whose
//! stable hash falls in shard `i` of `N`, so N instances share the pairs of
//! one configuration, one database and one bucket without overlap. The hash
//! (FNV-1a, 64 bit, of `exchange/SYMBOL`) never changes between versions or
//! machines: a pair stays in its shard across restarts and upgrades.

use std::fmt;
use std::str::FromStr;

use serde::de::{self, Deserialize, Deserializer};

use crate::domain::Pair;

/// Shard `index` of `count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: u32,
    pub count: u32,
}

impl Shard {
    /// The whole set: one instance ingests every pair.
    pub const ALL: Shard = Shard { index: 0, count: 1 };

    /// Whether `pair` belongs to this shard.
    pub fn owns(&self, pair: &Pair) -> bool {
        self.owns_key(pair.exchange.as_str(), &pair.symbol)
    }

    /// Whether the pair `exchange`/`symbol` belongs to this shard.
    pub fn owns_key(&self, exchange: &str, symbol: &str) -> bool {
        (stable_hash(exchange, symbol) % u64::from(self.count)) == u64::from(self.index)
    }
}

impl Default for Shard {
    fn default() -> Self {
        Shard::ALL
    }
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl FromStr for Shard {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let usage = || format!("{s:?} is not a shard; expected i/N with 0 <= i < N, e.g. 0/2");
        let (i, n) = s.trim().split_once('/').ok_or_else(usage)?;
        let index: u32 = i.trim().parse().map_err(|_| usage())?;
        let count: u32 = n.trim().parse().map_err(|_| usage())?;
        if count == 0 || index >= count {
            return Err(usage());
        }
        if count > 1024 {
            return Err(format!("{s:?}: at most 1024 shards"));
        }
        Ok(Shard { index, count })
    }
}

impl<'de> Deserialize<'de> for Shard {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(de::Error::custom)
    }
}

/// FNV-1a over `exchange`, `/` and `symbol` (the native symbol, as
/// configured after normalisation).
pub fn stable_hash(exchange: &str, symbol: &str) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0100_0000_01b3;
    let mut h = OFFSET;
    for b in exchange
        .bytes()
        .chain(std::iter::once(b'/'))
        .chain(symbol.bytes())
    {
        h ^= u64::from(b);
        h = h.wrapping_mul(PRIME);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rejects() {
        assert_eq!("1/4".parse(), Ok(Shard { index: 1, count: 4 }));
        assert_eq!(" 0 / 1 ".parse(), Ok(Shard::ALL));
        for bad in ["", "1", "2/2", "0/0", "-1/2", "a/b", "1/2/3", "0/5000"] {
            let e = bad.parse::<Shard>().unwrap_err();
            assert!(e.contains(&format!("{bad:?}")), "{e}");
        }
    }

    #[test]
    fn the_hash_is_stable_and_every_pair_has_exactly_one_shard() {
        // Pinned: changing the hash would move pairs between running shards.
        assert_eq!(stable_hash("binance", "BTCUSDT"), 0x9195_86b6_8fcf_b719);
        let symbols: Vec<String> = (0..1000).map(|i| format!("S{i}USDT")).collect();
        for count in 1..6 {
            let mut per_shard = vec![0; count as usize];
            for s in &symbols {
                let owners: Vec<u32> = (0..count)
                    .filter(|&index| Shard { index, count }.owns_key("binance", s))
                    .collect();
                assert_eq!(owners.len(), 1, "{s} in {owners:?} of {count}");
                per_shard[owners[0] as usize] += 1;
            }
            // Spread: no shard is empty or holds more than twice its share.
            let fair = 1000 / count as usize;
            assert!(
                per_shard.iter().all(|&n| n > 0 && n < 2 * fair),
                "{per_shard:?}"
            );
        }
    }
}
