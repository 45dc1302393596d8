-- Step 5: recompute the buckets of gold.{table} ({width} wide, aligned to UTC
-- midnight) that contain a row of the level below changed in this merge, and
-- write those whose values differ.
--
-- {source} is silver 1m for gold.ohlcv_5m, and the next finer gold table for
-- the others (15m from 5m, 30m from 15m, 1h from 30m, 1d from 1h). Each level
-- covers exactly the minutes of the one below, so the result is the same as
-- aggregating silver 1m directly (first open, last close, max high, min low,
-- summed volumes and trades, vwap = Σquote / Σbase, minutes present) while a
-- daily bucket costs 24 rows instead of 1440 per pair.
--
-- The CTE `agg` of the recomputed buckets (the placeholder after WITH) comes
-- from one of two files:
-- 09_gold_agg_changed.sql (the usual merge: only the buckets whose rows below
-- changed, each read by index) or 09_gold_agg_hour.sql (a bulk merge, where
-- nearly every bucket changed: every bucket of the hour in one pass).
-- Written only when values differ, so a re-run changes nothing, whichever
-- form computed them.
WITH {agg},
-- New buckets are inserted and existing ones updated only where a value
-- differs: a plain insert costs half of INSERT … ON CONFLICT. No other merge
-- writes these buckets meanwhile: the buckets of 5 minutes to 1 hour lie in
-- the merged hour (its advisory lock), and the caller takes the day's lock
-- before the daily level.
-- The look-up is an EXISTS in the select list, one index probe per bucket on
-- the whole key: as a join, PostgreSQL once probed a pair's rows by
-- (exchange, symbol) alone and filtered the bucket afterwards (every bucket
-- of the pair in the table, for each bucket merged).
existing AS (
    SELECT a.*,
           EXISTS (SELECT 1 FROM gold.{table} g
                    WHERE (g.exchange, g.symbol, g.bucket_start)
                        = (a.exchange, a.symbol, a.bucket_start)) AS existed
      FROM agg a
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
