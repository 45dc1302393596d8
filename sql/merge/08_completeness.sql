-- Step 4: completeness of every (exchange, symbol, hour) whose silver rows
-- changed in this merge, or of the hours and pairs given in $1..$3 (the
-- hourly sweep passes every configured pair, so an hour with no data at all
-- shows up as fully missing instead of not at all).
-- $1 text[] exchanges, $2 text[] symbols (pairwise), $3 timestamptz[] hours;
-- $4, $5: the merged hour [from, to), which holds every hour above.
-- Expected is 60 minutes per hour, fewer in the hours a pair was listed or
-- delisted (ref.instruments: the listing the venue publishes, else the first
-- traded minute REST showed). Missing minutes that REST can no longer reach
-- (ops.unrecoverable_gaps) are counted as unrecoverable.
WITH hours AS (
    SELECT DISTINCT exchange, symbol,
           date_bin('1 hour', bucket_start, TIMESTAMPTZ '2000-01-01 00:00:00+00') AS hour_start
      FROM merge_changed
    UNION
    SELECT e, s, h
      FROM unnest($1::text[], $2::text[]) AS p(e, s)
     CROSS JOIN unnest($3::timestamptz[]) AS hh(h)
),
-- Each hour's numbers are read by index for that pair and hour alone (the
-- LATERAL subqueries): the cost follows the hours touched, and there is no
-- join order for a misestimate to get wrong (a freshly filled silver hour
-- has no statistics yet; a planned join of all counts against all hours
-- once ran 2,500 times over).
counted AS (
    SELECT h.exchange, h.symbol, h.hour_start, e.expected, n.present, n.from_ws,
           n.from_rest, n.from_lake, n.from_archive, n.filled, u.unrecoverable
      FROM hours h
     CROSS JOIN LATERAL (
           SELECT greatest(0, extract(epoch FROM
                      least(h.hour_start + interval '1 hour', coalesce(max(i.delisted_at), 'infinity'))
                    - greatest(h.hour_start,
                               coalesce(max(i.listed_at), max(i.first_traded), '-infinity'))) / 60)::integer
                  AS expected
             FROM ref.instruments i
            WHERE i.exchange = h.exchange AND i.symbol = h.symbol) e
     CROSS JOIN LATERAL (
           SELECT count(*)                                    AS present,
                  count(*) FILTER (WHERE s.source = 'ws')     AS from_ws,
                  count(*) FILTER (WHERE s.source = 'rest')   AS from_rest,
                  count(*) FILTER (WHERE s.source = 'lake')   AS from_lake,
                  count(*) FILTER (WHERE s.source = 'archive') AS from_archive,
                  count(*) FILTER (WHERE s.source = 'filled') AS filled
             FROM {silver} s
            WHERE s.exchange = h.exchange AND s.symbol = h.symbol AND s.interval_seconds = 60
              AND s.interval_start >= h.hour_start
              AND s.interval_start < h.hour_start + interval '1 hour'
              -- The bound prunes silver to this hour's partition.
              AND s.interval_start >= $4 AND s.interval_start < $5) n
     CROSS JOIN LATERAL (
           SELECT count(*) AS unrecoverable
             FROM ops.unrecoverable_gaps g
            CROSS JOIN LATERAL generate_series(greatest(g.range_from, h.hour_start),
                                               least(g.range_to, h.hour_start + interval '1 hour')
                                                 - interval '1 minute',
                                               interval '1 minute') AS m(minute)
            WHERE g.exchange = h.exchange AND g.symbol = h.symbol
              AND g.range_from < h.hour_start + interval '1 hour' AND g.range_to > h.hour_start
              AND NOT EXISTS (
                    SELECT 1 FROM {silver} s
                     WHERE s.exchange = h.exchange AND s.symbol = h.symbol
                       AND s.interval_seconds = 60 AND s.interval_start = m.minute
                       AND s.interval_start >= $4 AND s.interval_start < $5)) u
)
INSERT INTO silver.completeness_hourly AS c
       (exchange, symbol, hour_start, expected, present, from_ws, from_rest, from_lake,
        from_archive, filled, missing, ratio, unrecoverable)
SELECT exchange, symbol, hour_start, expected, present, from_ws, from_rest, from_lake,
       from_archive, filled, greatest(expected - present, 0),
       CASE WHEN expected = 0 THEN 1 ELSE round(least(present, expected)::numeric / expected, 6) END,
       unrecoverable
  FROM counted
 ORDER BY exchange, symbol, hour_start
ON CONFLICT (exchange, symbol, hour_start) DO UPDATE
   SET expected = EXCLUDED.expected, present = EXCLUDED.present,
       from_ws = EXCLUDED.from_ws, from_rest = EXCLUDED.from_rest,
       from_lake = EXCLUDED.from_lake, from_archive = EXCLUDED.from_archive,
       filled = EXCLUDED.filled,
       missing = EXCLUDED.missing, ratio = EXCLUDED.ratio,
       unrecoverable = EXCLUDED.unrecoverable, updated_at = now()
 WHERE (c.expected, c.present, c.from_ws, c.from_rest, c.from_lake, c.from_archive,
        c.filled, c.unrecoverable)
       IS DISTINCT FROM
       (EXCLUDED.expected, EXCLUDED.present, EXCLUDED.from_ws, EXCLUDED.from_rest,
        EXCLUDED.from_lake, EXCLUDED.from_archive, EXCLUDED.filled, EXCLUDED.unrecoverable);
