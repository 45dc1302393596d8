-- Step 2b: minutes that REST confirmed had no trades (bronze.empty_minutes)
-- and that have no real candle become flat candles at the previous close:
-- volume 0, trade_count 0, source 'filled'. A minute is filled only when
-- every minute back to a real candle is present or confirmed empty, so
-- nothing is ever filled across an unconfirmed gap. The minute before the
-- hour (real or itself filled) anchors runs that started earlier.
-- $1, $2: the hour [from, to); the shard placeholder on e: this connection's
-- range of symbols. The 5-minute buckets of changed keys go to merge_changed.
WITH empties AS (
    SELECT e.exchange, e.symbol, e.interval_seconds, e.interval_start
      FROM bronze.empty_minutes e
     WHERE e.interval_start >= $1 AND e.interval_start < $2 {shard:e}
       AND NOT EXISTS (
             SELECT 1 FROM {silver} s
              WHERE (s.exchange, s.symbol, s.interval_seconds, s.interval_start)
                  = (e.exchange, e.symbol, e.interval_seconds, e.interval_start)
                -- The bound prunes silver to this hour's partition.
                AND s.interval_start >= $1 AND s.interval_start < $2
                AND s.source <> 'filled')
),
series AS (
    SELECT s.exchange, s.symbol, s.interval_seconds, s.interval_start, s.close
      FROM (SELECT * FROM {silver_prev} WHERE interval_start >= $1 - interval '1 minute'
            UNION ALL
            SELECT * FROM {silver}) s
     WHERE s.interval_start >= $1 - interval '1 minute' AND s.interval_start < $2
       AND (s.exchange, s.symbol, s.interval_seconds) IN
           (SELECT exchange, symbol, interval_seconds FROM empties)
       AND NOT EXISTS (
             SELECT 1 FROM empties e
              WHERE (e.exchange, e.symbol, e.interval_seconds, e.interval_start)
                  = (s.exchange, s.symbol, s.interval_seconds, s.interval_start))
    UNION ALL
    SELECT exchange, symbol, interval_seconds, interval_start, NULL FROM empties
),
grouped AS (
    SELECT *,
           -- Each present minute starts a group; the empties after it follow.
           count(close) OVER w AS grp,
           coalesce(interval_start - lag(interval_start) OVER w = interval '1 minute', false) AS contiguous
      FROM series
    WINDOW w AS (PARTITION BY exchange, symbol, interval_seconds ORDER BY interval_start)
),
runs AS (
    SELECT *,
           first_value(close) OVER g AS anchor_close,
           sum(CASE WHEN close IS NOT NULL OR contiguous THEN 0 ELSE 1 END) OVER g AS breaks
      FROM grouped
    WINDOW g AS (PARTITION BY exchange, symbol, interval_seconds, grp ORDER BY interval_start)
),
fills AS (
    SELECT exchange, symbol, interval_seconds, interval_start, anchor_close AS price
      FROM runs
     WHERE close IS NULL AND grp > 0 AND breaks = 0 AND anchor_close IS NOT NULL
),
upserted AS (
    INSERT INTO {silver} AS s
           (exchange, symbol, interval_seconds, interval_start, interval_end,
            open, high, low, close, volume, quote_volume, trade_count, vwap, source, merged_at)
    SELECT exchange, symbol, interval_seconds, interval_start,
           interval_start + make_interval(secs => interval_seconds),
           price, price, price, price, 0, 0, 0, NULL, 'filled', now()
      FROM fills
     ORDER BY exchange, symbol, interval_seconds, interval_start
    ON CONFLICT (exchange, symbol, interval_seconds, interval_start) DO UPDATE
       SET open = EXCLUDED.open, high = EXCLUDED.high, low = EXCLUDED.low,
           close = EXCLUDED.close, merged_at = now()
     WHERE s.source = 'filled' AND s.close IS DISTINCT FROM EXCLUDED.close
    RETURNING s.exchange, s.symbol, s.interval_start
),
remembered AS (
    INSERT INTO merge_changed (exchange, symbol, bucket_start)
    SELECT DISTINCT exchange, symbol,
           date_bin('5 minutes', interval_start, TIMESTAMPTZ '2000-01-01 00:00:00+00')
      FROM upserted
)
SELECT count(*) FROM upserted;
