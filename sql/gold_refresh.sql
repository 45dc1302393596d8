-- Step 5: recompute the buckets of gold.{table} ({width} wide, aligned to UTC
-- midnight) that contain a row of the level below changed in this merge: for the
-- 5-minute level the buckets of merge_changed (silver minutes changed), for the others the
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
-- Each bucket is aggregated from its own rows, read by index (LATERAL): the
-- cost follows the buckets changed, and there is no join for a misestimate
-- to get wrong (a freshly filled hour has no statistics; a planned join of
-- all rows against all buckets once rescanned the buckets for every row).
agg AS (
    SELECT b.exchange, b.symbol, b.bucket_start, a.*
      FROM buckets b
     CROSS JOIN LATERAL (
           SELECT -- The open of the bucket's first row and the close of its
                  -- last: the [start, price] pair with the smallest (largest)
                  -- start, a plain min/max (array_agg with ORDER BY would sort
                  -- every bucket on its own).
                  (min(ARRAY[extract(epoch FROM x.start), x.open]))[2]  AS open,
                  max(x.high)                                           AS high,
                  min(x.low)                                            AS low,
                  (max(ARRAY[extract(epoch FROM x.start), x.close]))[2] AS close,
                  sum(x.volume)                                         AS volume,
                  sum(x.quote_volume)                                   AS quote_volume,
                  sum(x.trade_count)                                    AS trade_count,
                  sum(x.quote_volume) / nullif(sum(x.volume), 0)        AS vwap,
                  sum(x.minutes)                                        AS minutes_present
             FROM {source} x
            WHERE x.exchange = b.exchange AND x.symbol = b.symbol
              AND x.start >= b.bucket_start
              AND x.start < b.bucket_start + interval '{width}'
              -- The merged hour widened to whole buckets holds every bucket
              -- here; the bound lets PostgreSQL read only those partitions.
              AND x.start >= date_bin(interval '{width}', $1::timestamptz, TIMESTAMPTZ '2000-01-01 00:00:00+00')
              AND x.start <  date_bin(interval '{width}', $2::timestamptz - interval '1 microsecond',
                                      TIMESTAMPTZ '2000-01-01 00:00:00+00') + interval '{width}') a
     WHERE a.minutes_present > 0
),
-- New buckets are inserted and existing ones updated only where a value
-- differs: a plain insert costs half of INSERT … ON CONFLICT. No other merge
-- writes these buckets meanwhile: the buckets of 5 minutes to 1 hour lie in
-- the merged hour (its advisory lock), and the caller takes the day's lock
-- before the daily level.
existing AS (
    SELECT a.*, g.existed IS NOT NULL AS existed
      FROM agg a
      LEFT JOIN LATERAL (
            SELECT true AS existed FROM gold.{table} g
             WHERE (g.exchange, g.symbol, g.bucket_start) = (a.exchange, a.symbol, a.bucket_start)
           ) g ON true
),
inserted AS (
    INSERT INTO gold.{table}
           (exchange, symbol, bucket_start, bucket_end, open, high, low, close, volume,
            quote_volume, trade_count, vwap, minutes_present)
    SELECT exchange, symbol, bucket_start, bucket_start + interval '{width}', open, high, low,
           close, volume, quote_volume, trade_count, vwap, minutes_present
      FROM existing
     WHERE NOT existed
    RETURNING exchange, symbol, bucket_start
),
updated AS (
    UPDATE gold.{table} g
       SET open = e.open, high = e.high, low = e.low, close = e.close, volume = e.volume,
           quote_volume = e.quote_volume, trade_count = e.trade_count, vwap = e.vwap,
           minutes_present = e.minutes_present, refreshed_at = now()
      FROM existing e
     WHERE e.existed
       AND (g.exchange, g.symbol, g.bucket_start) = (e.exchange, e.symbol, e.bucket_start)
       AND (g.open, g.high, g.low, g.close, g.volume, g.quote_volume, g.trade_count,
            g.vwap, g.minutes_present)
           IS DISTINCT FROM
           (e.open, e.high, e.low, e.close, e.volume, e.quote_volume, e.trade_count,
            e.vwap, e.minutes_present)
    RETURNING g.exchange, g.symbol, g.bucket_start
)
INSERT INTO gold_changed (level, exchange, symbol, bucket_start)
SELECT '{table}', exchange, symbol, bucket_start FROM inserted
UNION ALL
SELECT '{table}', exchange, symbol, bucket_start FROM updated;
