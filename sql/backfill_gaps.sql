-- Gap detection for the backfiller: the minutes of one pair in [$3, $4)
-- that have no final candle in silver or bronze, are not confirmed empty,
-- and are not recorded as unrecoverable, grouped into contiguous runs
-- [run_from, run_to).
-- $1 exchange, $2 symbol, $3 from, $4 to (minute-aligned).
WITH missing AS (
    SELECT generate_series($3::timestamptz, $4::timestamptz - interval '1 minute',
                           interval '1 minute') AS minute
    EXCEPT
    SELECT interval_start FROM silver.fact_ohlcv
     WHERE exchange = $1 AND symbol = $2 AND interval_seconds = 60
       AND interval_start >= $3 AND interval_start < $4
    EXCEPT
    SELECT interval_start FROM bronze.ohlcv_native
     WHERE exchange = $1 AND symbol = $2 AND interval_seconds = 60 AND is_final
       AND interval_start >= $3 AND interval_start < $4
    EXCEPT
    SELECT interval_start FROM bronze.empty_minutes
     WHERE exchange = $1 AND symbol = $2 AND interval_seconds = 60
       AND interval_start >= $3 AND interval_start < $4
),
open AS (
    SELECT minute FROM missing m
     WHERE NOT EXISTS (
             SELECT 1 FROM ops.unrecoverable_gaps g
              WHERE g.exchange = $1 AND g.symbol = $2
                AND m.minute >= g.range_from AND m.minute < g.range_to)
),
islands AS (
    SELECT minute,
           minute - (row_number() OVER (ORDER BY minute)) * interval '1 minute' AS island
      FROM open
)
SELECT min(minute) AS run_from, max(minute) + interval '1 minute' AS run_to
  FROM islands
 GROUP BY island
 ORDER BY run_from;
