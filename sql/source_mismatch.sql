-- Step 3: touched minutes where the WebSocket final and the exchange's REST
-- candle disagree on any price or volume. The newest of each source is
-- compared; a later agreement removes the record.
-- $1, $2: the hour [from, to). Returns how many mismatches are recorded now.
WITH newest AS (
    SELECT DISTINCT ON (b.exchange, b.symbol, b.interval_seconds, b.interval_start, b.source)
           b.exchange, b.symbol, b.interval_seconds, b.interval_start, b.source,
           b.open, b.high, b.low, b.close, b.volume
      FROM bronze.ohlcv_native b
      JOIN merge_touched t
        ON (t.exchange, t.symbol, t.interval_seconds, t.interval_start)
         = (b.exchange, b.symbol, b.interval_seconds, b.interval_start)
     WHERE b.is_final AND b.source IN ('ws', 'rest')
       AND b.interval_start >= $1 AND b.interval_start < $2
     ORDER BY b.exchange, b.symbol, b.interval_seconds, b.interval_start, b.source,
              b.ingestion_ts DESC, b.id DESC
),
pairs AS (
    SELECT w.exchange, w.symbol, w.interval_seconds, w.interval_start,
           w.open AS ws_open, w.high AS ws_high, w.low AS ws_low, w.close AS ws_close, w.volume AS ws_volume,
           r.open AS rest_open, r.high AS rest_high, r.low AS rest_low, r.close AS rest_close, r.volume AS rest_volume,
           (w.open, w.high, w.low, w.close, w.volume) IS DISTINCT FROM
           (r.open, r.high, r.low, r.close, r.volume) AS differ
      FROM newest w
      JOIN newest r USING (exchange, symbol, interval_seconds, interval_start)
     WHERE w.source = 'ws' AND r.source = 'rest'
),
cleared AS (
    DELETE FROM ops.source_mismatch m
     USING pairs p
     WHERE NOT p.differ
       AND (m.exchange, m.symbol, m.interval_seconds, m.interval_start)
         = (p.exchange, p.symbol, p.interval_seconds, p.interval_start)
),
recorded AS (
    INSERT INTO ops.source_mismatch AS m
           (exchange, symbol, interval_seconds, interval_start,
            ws_open, ws_high, ws_low, ws_close, ws_volume,
            rest_open, rest_high, rest_low, rest_close, rest_volume)
    SELECT exchange, symbol, interval_seconds, interval_start,
           ws_open, ws_high, ws_low, ws_close, ws_volume,
           rest_open, rest_high, rest_low, rest_close, rest_volume
      FROM pairs
     WHERE differ
     ORDER BY exchange, symbol, interval_seconds, interval_start
    ON CONFLICT (exchange, symbol, interval_seconds, interval_start) DO UPDATE
       SET ws_open = EXCLUDED.ws_open, ws_high = EXCLUDED.ws_high, ws_low = EXCLUDED.ws_low,
           ws_close = EXCLUDED.ws_close, ws_volume = EXCLUDED.ws_volume,
           rest_open = EXCLUDED.rest_open, rest_high = EXCLUDED.rest_high,
           rest_low = EXCLUDED.rest_low, rest_close = EXCLUDED.rest_close,
           rest_volume = EXCLUDED.rest_volume, detected_at = now()
    RETURNING 1
)
SELECT count(*) FROM recorded;
