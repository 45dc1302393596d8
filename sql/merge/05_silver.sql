-- Step 2: the winning final observation of every touched key goes to silver.
--
-- The winner of a key is its observation ranked first (05_silver_ranked.sql:
-- WebSocket over lake over archive over REST, then the newest; an archive
-- candle an operator preferred over all).
-- New keys are inserted; existing rows are updated only when the winning
-- values really differ (and the winner's source ranks at least as high as
-- the row's), so a re-run reports 0 inserted, 0 updated. (The
-- caller holds this hour's advisory lock: no other merge writes these keys.)
-- The 5-minute buckets of the changed keys are remembered in merge_changed,
-- for completeness and gold.
-- $1, $2: the hour [from, to). Lines marked @only-touched are dropped when
-- the merge covers every key of the hour (then merge_touched is not filled).
-- the shard placeholder on b: in a merge split by ranges of symbols, this connection's range.
WITH {ranked},
winners AS (
    SELECT r.exchange, r.symbol, r.interval_seconds, r.interval_start, r.interval_end,
           r.open, r.high, r.low, r.close, r.volume, r.quote_volume, r.trade_count,
           r.vwap, r.source, r.event_ts, r.source_rank,
           s.exchange IS NOT NULL AS existed
      FROM ranked r
      LEFT JOIN {silver} s
        ON (s.exchange, s.symbol, s.interval_seconds, s.interval_start)
         = (r.exchange, r.symbol, r.interval_seconds, r.interval_start)
       AND s.interval_start >= $1 AND s.interval_start < $2
     WHERE r.rank = 1
),
inserted AS (
    {insert_winners}
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
       -- Never for a source that ranks below silver's own: once retention
       -- has dropped an old hour of bronze, a REST, archive or lake row
       -- arriving for it is the only observation there, and must not replace
       -- the WebSocket candle silver keeps (a filled minute ranks last; an
       -- archive candle an operator preferred, first).
       AND w.source_rank
        <= CASE s.source WHEN 'ws' THEN 0 WHEN 'lake' THEN 1
                WHEN 'archive' THEN CASE WHEN EXISTS (
                         SELECT 1 FROM ops.archive_preferred p
                          WHERE (p.exchange, p.symbol, p.interval_start)
                              = (s.exchange, s.symbol, s.interval_start))
                     THEN -1 ELSE 2 END
                WHEN 'rest' THEN 3 ELSE 4 END
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
