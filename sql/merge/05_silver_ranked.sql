-- The CTE `ranked` of 05_silver.sql and 05_silver_fresh.sql: the final
-- observations of the hour's keys (of this connection's range of symbols),
-- each ranked by the winner rules: rank 1 wins.
--   1. source: a WebSocket candle beats a lake reload (the same WebSocket data
--      replayed), which beats the exchange's archive files, which beat REST;
--      so REST, archive or lake data never replaces a WebSocket candle,
--      except where an operator chose the archive's candle
--      (ops.archive_preferred): there it ranks first (source_rank -1);
--   2. within a source, the newest observation wins (latest ingestion).
-- $1, $2: the hour [from, to). The line marked @only-touched is dropped when
-- the merge covers every key of the hour (then merge_touched is not filled).
ranked AS (
    -- Observations of a key come out of bronze's key index together; only
    -- those few are sorted by rank (an incremental sort), instead of sorting
    -- the whole hour, and the winners come out in key order, the order the
    -- silver index takes them fastest.
    SELECT b.exchange, b.symbol, b.interval_seconds, b.interval_start, b.interval_end,
           b.open, b.high, b.low, b.close, b.volume, b.quote_volume, b.trade_count,
           b.vwap, b.source, b.event_ts, b.source_rank,
           row_number() OVER (
               PARTITION BY b.exchange, b.symbol, b.interval_seconds, b.interval_start
               ORDER BY b.source_rank, b.ingestion_ts DESC, b.id DESC) AS rank
      FROM (SELECT b.*,
                   CASE b.source WHEN 'ws' THEN 0 WHEN 'lake' THEN 1
                        -- (looked up for archive rows only)
                        WHEN 'archive' THEN CASE WHEN EXISTS (
                                 SELECT 1 FROM ops.archive_preferred p
                                  WHERE (p.exchange, p.symbol, p.interval_start)
                                      = (b.exchange, b.symbol, b.interval_start))
                             THEN -1 ELSE 2 END
                        ELSE 3 END AS source_rank
              FROM {bronze} b) b
     WHERE b.is_final
       AND b.interval_start >= $1 AND b.interval_start < $2 {shard:b}
       AND (b.exchange, b.symbol, b.interval_seconds, b.interval_start) IN (SELECT exchange, symbol, interval_seconds, interval_start FROM merge_touched) -- @only-touched
)
