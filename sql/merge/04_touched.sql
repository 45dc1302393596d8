-- Step 1 of a merge of one hour: the candle keys to look at.
-- $1, $2: the hour [from, to); $3: only keys with a final bronze row written
-- by a transaction at or after this id ('0' = every key of the hour);
-- the shard placeholder on b: this connection's range of symbols.
-- Fills the per-connection temp table merge_touched (emptied at commit).
INSERT INTO merge_touched (exchange, symbol, interval_seconds, interval_start)
SELECT DISTINCT exchange, symbol, interval_seconds, interval_start
  FROM {bronze} b
 WHERE is_final
   AND interval_start >= $1 AND interval_start < $2 {shard:b}
   AND ingest_xid >= $3::text::xid8;
