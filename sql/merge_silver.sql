-- Step 2: the winning final observation of every touched key goes to silver.
--
-- Winner rules, in order:
--   1. source: a WebSocket candle beats a lake reload (the same WebSocket data
--      replayed), which beats REST; so REST or lake data never replaces a
--      WebSocket candle;
--   2. within a source, the newest observation wins (latest ingestion).
-- A row is written only when it is new or its values really differ, so a
-- re-run reports 0 inserted, 0 updated. Changed keys are remembered in
-- merge_changed for completeness and gold.
-- $1, $2: the hour [from, to).
WITH winners AS (
    SELECT DISTINCT ON (b.exchange, b.symbol, b.interval_seconds, b.interval_start)
           b.exchange, b.symbol, b.interval_seconds, b.interval_start, b.interval_end,
           b.open, b.high, b.low, b.close, b.volume, b.quote_volume, b.trade_count,
           b.vwap, b.source, b.event_ts,
           -- Seen before the upsert (same snapshot): tells inserts from updates.
           EXISTS (SELECT 1 FROM silver.fact_ohlcv s
                    WHERE (s.exchange, s.symbol, s.interval_seconds, s.interval_start)
                        = (b.exchange, b.symbol, b.interval_seconds, b.interval_start)) AS existed
      FROM bronze.ohlcv_native b
      JOIN merge_touched t
        ON (t.exchange, t.symbol, t.interval_seconds, t.interval_start)
         = (b.exchange, b.symbol, b.interval_seconds, b.interval_start)
     WHERE b.is_final
       AND b.interval_start >= $1 AND b.interval_start < $2
     ORDER BY b.exchange, b.symbol, b.interval_seconds, b.interval_start,
              CASE b.source WHEN 'ws' THEN 0 WHEN 'lake' THEN 1 ELSE 2 END,
              b.ingestion_ts DESC, b.id DESC
),
upserted AS (
    INSERT INTO silver.fact_ohlcv AS s
           (exchange, symbol, interval_seconds, interval_start, interval_end,
            open, high, low, close, volume, quote_volume, trade_count, vwap,
            source, event_ts, merged_at)
    SELECT exchange, symbol, interval_seconds, interval_start, interval_end,
           open, high, low, close, volume, quote_volume, trade_count, vwap,
           source, event_ts, now()
      FROM winners
     ORDER BY exchange, symbol, interval_seconds, interval_start
    ON CONFLICT (exchange, symbol, interval_seconds, interval_start) DO UPDATE
       SET open = EXCLUDED.open, high = EXCLUDED.high, low = EXCLUDED.low,
           close = EXCLUDED.close, volume = EXCLUDED.volume,
           quote_volume = EXCLUDED.quote_volume, trade_count = EXCLUDED.trade_count,
           vwap = EXCLUDED.vwap, source = EXCLUDED.source, event_ts = EXCLUDED.event_ts,
           merged_at = now()
     WHERE (s.open, s.high, s.low, s.close, s.volume, s.quote_volume, s.trade_count,
            s.vwap, s.source)
           IS DISTINCT FROM
           (EXCLUDED.open, EXCLUDED.high, EXCLUDED.low, EXCLUDED.close, EXCLUDED.volume,
            EXCLUDED.quote_volume, EXCLUDED.trade_count, EXCLUDED.vwap, EXCLUDED.source)
    RETURNING s.exchange, s.symbol, s.interval_seconds, s.interval_start
),
remembered AS (
    INSERT INTO merge_changed (exchange, symbol, interval_start)
    SELECT exchange, symbol, interval_start FROM upserted
)
SELECT (SELECT count(*) FROM merge_touched)              AS keys,
       count(*) FILTER (WHERE NOT w.existed)             AS inserted,
       count(*) FILTER (WHERE w.existed)                 AS updated
  FROM upserted u
  JOIN winners w USING (exchange, symbol, interval_seconds, interval_start);
