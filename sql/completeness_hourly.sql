-- Step 4: completeness of every (exchange, symbol, hour) whose silver rows
-- changed in this merge, or of the hours and pairs given in $1..$3 (the
-- hourly sweep passes every configured pair, so an hour with no data at all
-- shows up as fully missing instead of not at all).
-- $1 text[] exchanges, $2 text[] symbols (pairwise), $3 timestamptz[] hours;
-- $4, $5: the merged hour [from, to), which holds every hour above.
-- Expected is 60 minutes per hour, fewer in the hours a pair was listed or
-- delisted (ref.instruments). Missing minutes that REST can no longer reach
-- (ops.unrecoverable_gaps) are counted as unrecoverable.
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
    SELECT s.exchange, s.symbol,
           date_bin('1 hour', s.interval_start, TIMESTAMPTZ '2000-01-01 00:00:00+00') AS hour_start,
           count(*)                                       AS present,
           count(*) FILTER (WHERE s.source = 'ws')        AS from_ws,
           count(*) FILTER (WHERE s.source = 'rest')      AS from_rest,
           count(*) FILTER (WHERE s.source = 'lake')      AS from_lake,
           count(*) FILTER (WHERE s.source = 'filled')    AS filled
      FROM {silver} s
     WHERE s.interval_seconds = 60
       AND s.interval_start >= $4 AND s.interval_start < $5
       AND (s.exchange, s.symbol) IN (SELECT exchange, symbol FROM hours)
     GROUP BY 1, 2, 3
),
expected AS (
    SELECT h.exchange, h.symbol, h.hour_start,
           greatest(0, extract(epoch FROM
               least(h.hour_start + interval '1 hour', coalesce(i.delisted_at, 'infinity'))
             - greatest(h.hour_start, coalesce(i.listed_at, '-infinity'))) / 60)::integer AS expected
      FROM hours h
      LEFT JOIN ref.instruments i USING (exchange, symbol)
),
unrecoverable AS (
    SELECT h.exchange, h.symbol, h.hour_start, count(*) AS unrecoverable
      FROM hours h
      JOIN ops.unrecoverable_gaps g
        ON g.exchange = h.exchange AND g.symbol = h.symbol
       AND g.range_from < h.hour_start + interval '1 hour' AND g.range_to > h.hour_start
     CROSS JOIN LATERAL generate_series(greatest(g.range_from, h.hour_start),
                                        least(g.range_to, h.hour_start + interval '1 hour')
                                          - interval '1 minute',
                                        interval '1 minute') AS m(minute)
     WHERE NOT EXISTS (
             SELECT 1 FROM {silver} s
              WHERE s.exchange = h.exchange AND s.symbol = h.symbol
                AND s.interval_seconds = 60 AND s.interval_start = m.minute
                AND s.interval_start >= $4 AND s.interval_start < $5)
     GROUP BY 1, 2, 3
),
joined AS (
    SELECT h.exchange, h.symbol, h.hour_start, e.expected,
           coalesce(c.present, 0) AS present, coalesce(c.from_ws, 0) AS from_ws,
           coalesce(c.from_rest, 0) AS from_rest, coalesce(c.from_lake, 0) AS from_lake,
           coalesce(c.filled, 0) AS filled, coalesce(u.unrecoverable, 0) AS unrecoverable
      FROM hours h
      JOIN expected e USING (exchange, symbol, hour_start)
      LEFT JOIN counts c USING (exchange, symbol, hour_start)
      LEFT JOIN unrecoverable u USING (exchange, symbol, hour_start)
)
INSERT INTO silver.completeness_hourly AS c
       (exchange, symbol, hour_start, expected, present, from_ws, from_rest, from_lake,
        filled, missing, ratio, unrecoverable)
SELECT exchange, symbol, hour_start, expected, present, from_ws, from_rest, from_lake,
       filled, greatest(expected - present, 0),
       CASE WHEN expected = 0 THEN 1 ELSE round(least(present, expected)::numeric / expected, 6) END,
       unrecoverable
  FROM joined
 ORDER BY exchange, symbol, hour_start
ON CONFLICT (exchange, symbol, hour_start) DO UPDATE
   SET expected = EXCLUDED.expected, present = EXCLUDED.present,
       from_ws = EXCLUDED.from_ws, from_rest = EXCLUDED.from_rest,
       from_lake = EXCLUDED.from_lake, filled = EXCLUDED.filled,
       missing = EXCLUDED.missing, ratio = EXCLUDED.ratio,
       unrecoverable = EXCLUDED.unrecoverable, updated_at = now()
 WHERE (c.expected, c.present, c.from_ws, c.from_rest, c.from_lake, c.filled, c.unrecoverable)
       IS DISTINCT FROM
       (EXCLUDED.expected, EXCLUDED.present, EXCLUDED.from_ws, EXCLUDED.from_rest,
        EXCLUDED.from_lake, EXCLUDED.filled, EXCLUDED.unrecoverable);
