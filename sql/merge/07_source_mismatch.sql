-- Step 3: touched minutes where the WebSocket final and the exchange's REST
-- candle disagree on any price or volume. The newest of each source is
-- compared; a later agreement removes the record.
-- $1, $2: the hour [from, to). Returns how many mismatches are recorded now.
-- Lines marked @only-touched are dropped when the merge covers every key.
-- the shard placeholder on b, the shard placeholder on r: this connection's range of symbols.
WITH newest AS (
    SELECT DISTINCT ON (b.exchange, b.symbol, b.interval_seconds, b.interval_start, b.source)
           b.exchange, b.symbol, b.interval_seconds, b.interval_start, b.source,
           b.open, b.high, b.low, b.close, b.volume
      FROM {bronze} b
      JOIN merge_touched t ON (t.exchange, t.symbol, t.interval_seconds, t.interval_start) = (b.exchange, b.symbol, b.interval_seconds, b.interval_start) -- @only-touched
     WHERE b.is_final AND b.source IN ('ws', 'rest')
       AND b.interval_start >= $1 AND b.interval_start < $2 {shard:b}
       -- Only minutes that have a REST candle at all (usually none).
       AND (b.exchange, b.symbol, b.interval_seconds, b.interval_start) IN (
             SELECT r.exchange, r.symbol, r.interval_seconds, r.interval_start
               FROM {bronze} r
              WHERE r.is_final AND r.source = 'rest'
                AND r.interval_start >= $1 AND r.interval_start < $2 {shard:r})
     ORDER BY b.exchange, b.symbol, b.interval_seconds, b.interval_start, b.source,
              b.ingestion_ts DESC, b.id DESC
),
pairs AS (
    -- One row per minute with both sources (a GROUP BY, not a self-join).
    SELECT exchange, symbol, interval_seconds, interval_start,
           max(open)   FILTER (WHERE source = 'ws')   AS ws_open,
           max(high)   FILTER (WHERE source = 'ws')   AS ws_high,
           max(low)    FILTER (WHERE source = 'ws')   AS ws_low,
           max(close)  FILTER (WHERE source = 'ws')   AS ws_close,
           max(volume) FILTER (WHERE source = 'ws')   AS ws_volume,
           max(open)   FILTER (WHERE source = 'rest') AS rest_open,
           max(high)   FILTER (WHERE source = 'rest') AS rest_high,
           max(low)    FILTER (WHERE source = 'rest') AS rest_low,
           max(close)  FILTER (WHERE source = 'rest') AS rest_close,
           max(volume) FILTER (WHERE source = 'rest') AS rest_volume
      FROM newest
     GROUP BY exchange, symbol, interval_seconds, interval_start
    HAVING count(*) = 2
),
compared AS (
    SELECT *,
           (ws_open, ws_high, ws_low, ws_close, ws_volume) IS DISTINCT FROM
           (rest_open, rest_high, rest_low, rest_close, rest_volume) AS differ
      FROM pairs
),
cleared AS (
    DELETE FROM ops.source_mismatch m
     USING compared p
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
      FROM compared
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
