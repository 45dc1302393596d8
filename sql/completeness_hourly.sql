-- Step 4: completeness of every (exchange, symbol, hour) whose silver rows
-- changed in this merge, or of the hours and pairs given in $1..$3 (the
-- hourly sweep passes every configured pair, so an hour with no data at all
-- shows up as fully missing instead of not at all).
-- $1 text[] exchanges, $2 text[] symbols (pairwise), $3 timestamptz[] hours.
-- Expected is 60 minutes per hour.
WITH hours AS (
    SELECT DISTINCT exchange, symbol,
           date_bin('1 hour', interval_start, TIMESTAMPTZ '2000-01-01 00:00:00+00') AS hour_start
      FROM merge_changed
    UNION
    SELECT e, s, h
      FROM unnest($1::text[], $2::text[]) AS p(e, s)
     CROSS JOIN unnest($3::timestamptz[]) AS hh(h)
),
counts AS (
    SELECT h.exchange, h.symbol, h.hour_start,
           count(s.interval_start)                          AS present,
           count(s.interval_start) FILTER (WHERE s.source = 'ws')     AS from_ws,
           count(s.interval_start) FILTER (WHERE s.source = 'rest')   AS from_rest,
           count(s.interval_start) FILTER (WHERE s.source = 'lake')   AS from_lake,
           count(s.interval_start) FILTER (WHERE s.source = 'filled') AS filled
      FROM hours h
      LEFT JOIN silver.fact_ohlcv s
        ON s.exchange = h.exchange AND s.symbol = h.symbol AND s.interval_seconds = 60
       AND s.interval_start >= h.hour_start
       AND s.interval_start < h.hour_start + interval '1 hour'
     GROUP BY h.exchange, h.symbol, h.hour_start
)
INSERT INTO silver.completeness_hourly AS c
       (exchange, symbol, hour_start, expected, present, from_ws, from_rest, from_lake,
        filled, missing, ratio)
SELECT exchange, symbol, hour_start, 60, present, from_ws, from_rest, from_lake,
       filled, 60 - present, round(present / 60.0, 6)
  FROM counts
 ORDER BY exchange, symbol, hour_start
ON CONFLICT (exchange, symbol, hour_start) DO UPDATE
   SET expected = EXCLUDED.expected, present = EXCLUDED.present,
       from_ws = EXCLUDED.from_ws, from_rest = EXCLUDED.from_rest,
       from_lake = EXCLUDED.from_lake, filled = EXCLUDED.filled,
       missing = EXCLUDED.missing, ratio = EXCLUDED.ratio, updated_at = now()
 WHERE (c.expected, c.present, c.from_ws, c.from_rest, c.from_lake, c.filled)
       IS DISTINCT FROM
       (EXCLUDED.expected, EXCLUDED.present, EXCLUDED.from_ws, EXCLUDED.from_rest,
        EXCLUDED.from_lake, EXCLUDED.filled);
