-- Step 2: the winning final observation of every touched key goes to silver.
--
-- Winner rules, in order:
--   1. source: a WebSocket candle beats a lake reload (the same WebSocket data
--      replayed), which beats REST; so REST or lake data never replaces a
--      WebSocket candle;
--   2. within a source, the newest observation wins (latest ingestion).
-- New keys are inserted; existing rows are updated only when the winning
-- values really differ, so a re-run reports 0 inserted, 0 updated. (The
-- caller holds this hour's advisory lock: no other merge writes these keys.)
-- The 5-minute buckets of the changed keys are remembered in merge_changed,
-- for completeness and gold.
-- $1, $2: the hour [from, to). Lines marked @only-touched are dropped when
-- the merge covers every key of the hour (then merge_touched is not filled).
-- the shard placeholder on b: in a merge split by ranges of symbols, this connection's range.
WITH ranked AS (
    -- Observations of a key come out of bronze's key index together; only
    -- those few are sorted by rank (an incremental sort), instead of sorting
    -- the whole hour, and the winners come out in key order, the order the
    -- silver index takes them fastest.
    SELECT b.exchange, b.symbol, b.interval_seconds, b.interval_start, b.interval_end,
           b.open, b.high, b.low, b.close, b.volume, b.quote_volume, b.trade_count,
           b.vwap, b.source, b.event_ts,
           row_number() OVER (
               PARTITION BY b.exchange, b.symbol, b.interval_seconds, b.interval_start
               ORDER BY CASE b.source WHEN 'ws' THEN 0 WHEN 'lake' THEN 1 ELSE 2 END,
                        b.ingestion_ts DESC, b.id DESC) AS rank
      FROM {bronze} b
     WHERE b.is_final
       AND b.interval_start >= $1 AND b.interval_start < $2 {shard:b}
       AND (b.exchange, b.symbol, b.interval_seconds, b.interval_start) IN (SELECT exchange, symbol, interval_seconds, interval_start FROM merge_touched) -- @only-touched
),
winners AS (
    SELECT r.exchange, r.symbol, r.interval_seconds, r.interval_start, r.interval_end,
           r.open, r.high, r.low, r.close, r.volume, r.quote_volume, r.trade_count,
           r.vwap, r.source, r.event_ts,
           s.exchange IS NOT NULL AS existed
      FROM ranked r
      LEFT JOIN {silver} s
        ON (s.exchange, s.symbol, s.interval_seconds, s.interval_start)
         = (r.exchange, r.symbol, r.interval_seconds, r.interval_start)
       AND s.interval_start >= $1 AND s.interval_start < $2
     WHERE r.rank = 1
),
inserted AS (
    INSERT INTO {silver}
           (exchange, symbol, interval_seconds, interval_start, interval_end,
            open, high, low, close, volume, quote_volume, trade_count, vwap,
            source, event_ts, merged_at)
    SELECT exchange, symbol, interval_seconds, interval_start, interval_end,
           open, high, low, close, volume, quote_volume, trade_count, vwap,
           source, event_ts, now()
      FROM winners
     -- (winners come out in key order already; sorting them again for the
     -- insert cost 0.4 s per 300,000 rows)
     WHERE NOT existed
    RETURNING exchange, symbol, interval_start
),
updated AS (
    UPDATE {silver} s
       SET open = w.open, high = w.high, low = w.low, close = w.close,
           volume = w.volume, quote_volume = w.quote_volume,
           trade_count = w.trade_count, vwap = w.vwap, source = w.source,
           event_ts = w.event_ts, merged_at = now()
      FROM winners w
     WHERE w.existed
       AND (s.exchange, s.symbol, s.interval_seconds, s.interval_start)
         = (w.exchange, w.symbol, w.interval_seconds, w.interval_start)
       AND s.interval_start >= $1 AND s.interval_start < $2
       AND (s.open, s.high, s.low, s.close, s.volume, s.quote_volume, s.trade_count,
            s.vwap, s.source)
           IS DISTINCT FROM
           (w.open, w.high, w.low, w.close, w.volume, w.quote_volume, w.trade_count,
            w.vwap, w.source)
    RETURNING s.exchange, s.symbol, s.interval_start
),
remembered AS (
    INSERT INTO merge_changed (exchange, symbol, bucket_start)
    SELECT DISTINCT exchange, symbol,
           date_bin('5 minutes', interval_start, TIMESTAMPTZ '2000-01-01 00:00:00+00')
      FROM (SELECT exchange, symbol, interval_start FROM inserted
            UNION ALL
            SELECT exchange, symbol, interval_start FROM updated) changed
)
SELECT (SELECT count(*) FROM winners)       AS keys,
       (SELECT count(*) FROM inserted)      AS inserted,
       (SELECT count(*) FROM updated)       AS updated;
