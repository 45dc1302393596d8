-- Step 5: recompute the buckets of gold.{table} ({width} wide, aligned to UTC
-- midnight) that contain a row of the level below changed in this merge: for the
-- 5-minute level the silver minutes of merge_changed, for the others the
-- buckets of the level below that this merge really changed (gold_changed),
-- so a level costs what changed below it, not what the merge touched.
--
-- {source} is silver 1m for gold.ohlcv_5m, and the next finer gold table for
-- the others (15m from 5m, 30m from 15m, 1h from 30m, 1d from 1h). Each level
-- covers exactly the minutes of the one below, so the result is the same as
-- aggregating silver 1m directly (first open, last close, max high, min low,
-- summed volumes and trades, vwap = Σquote / Σbase, minutes present) while a
-- daily bucket costs 24 rows instead of 1440 per pair.
-- Written only when values differ, so a re-run changes nothing.
WITH buckets AS (
    SELECT DISTINCT exchange, symbol,
           date_bin(interval '{width}', start, TIMESTAMPTZ '2000-01-01 00:00:00+00') AS bucket_start
      FROM {changed} c
),
agg AS (
    SELECT x.exchange, x.symbol,
           date_bin(interval '{width}', x.start, TIMESTAMPTZ '2000-01-01 00:00:00+00') AS bucket_start,
           (array_agg(x.open ORDER BY x.start))[1]             AS open,
           max(x.high)                                         AS high,
           min(x.low)                                          AS low,
           (array_agg(x.close ORDER BY x.start DESC))[1]       AS close,
           sum(x.volume)                                       AS volume,
           sum(x.quote_volume)                                 AS quote_volume,
           sum(x.trade_count)                                  AS trade_count,
           sum(x.quote_volume) / nullif(sum(x.volume), 0)      AS vwap,
           sum(x.minutes)                                      AS minutes_present
      FROM {source} x
     -- The buckets of this merge lie within [lo, hi): the merged hour widened
     -- to whole buckets. The bound lets PostgreSQL read only those partitions.
     WHERE x.start >= date_bin(interval '{width}', $1::timestamptz, TIMESTAMPTZ '2000-01-01 00:00:00+00')
       AND x.start <  date_bin(interval '{width}', $2::timestamptz - interval '1 microsecond',
                               TIMESTAMPTZ '2000-01-01 00:00:00+00') + interval '{width}'
       AND (x.exchange, x.symbol,
            date_bin(interval '{width}', x.start, TIMESTAMPTZ '2000-01-01 00:00:00+00'))
           IN (SELECT exchange, symbol, bucket_start FROM buckets)
     GROUP BY 1, 2, 3
),
upserted AS (
INSERT INTO gold.{table} AS g
       (exchange, symbol, bucket_start, bucket_end, open, high, low, close, volume,
        quote_volume, trade_count, vwap, minutes_present)
SELECT exchange, symbol, bucket_start, bucket_start + interval '{width}', open, high, low,
       close, volume, quote_volume, trade_count, vwap, minutes_present
  FROM agg
 ORDER BY exchange, symbol, bucket_start
ON CONFLICT (exchange, symbol, bucket_start) DO UPDATE
   SET open = EXCLUDED.open, high = EXCLUDED.high, low = EXCLUDED.low,
       close = EXCLUDED.close, volume = EXCLUDED.volume,
       quote_volume = EXCLUDED.quote_volume, trade_count = EXCLUDED.trade_count,
       vwap = EXCLUDED.vwap, minutes_present = EXCLUDED.minutes_present,
       refreshed_at = now()
 WHERE (g.open, g.high, g.low, g.close, g.volume, g.quote_volume, g.trade_count,
        g.vwap, g.minutes_present)
       IS DISTINCT FROM
       (EXCLUDED.open, EXCLUDED.high, EXCLUDED.low, EXCLUDED.close, EXCLUDED.volume,
        EXCLUDED.quote_volume, EXCLUDED.trade_count, EXCLUDED.vwap,
        EXCLUDED.minutes_present)
RETURNING g.exchange, g.symbol, g.bucket_start
)
INSERT INTO gold_changed (level, exchange, symbol, bucket_start)
SELECT '{table}', exchange, symbol, bucket_start FROM upserted;
