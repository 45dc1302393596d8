-- Step 2 of a bulk merge into an hour that has no silver rows yet in this
-- connection's range of symbols: a backfill, a lake reload, the first merge
-- after downtime. Every final key of the range, with the same winners as
-- merge_silver.sql, inserted straight: with nothing in silver to compare
-- with or update (the caller checked, and holds the hour's advisory lock),
-- there is no look-up of each key and no list of winners to keep.
-- Each pair goes to merge_changed once, at the hour's start: the caller
-- recomputes completeness and every gold bucket of the hour for them.
-- $1, $2: the hour [from, to); the shard placeholder on b: this connection's
-- range of symbols.
WITH {ranked},
winners AS (
    SELECT * FROM ranked WHERE rank = 1
),
inserted AS (
    {insert_winners}
    RETURNING exchange, symbol
),
remembered AS (
    INSERT INTO merge_changed (exchange, symbol, bucket_start)
    SELECT exchange, symbol, $1
      FROM inserted
     GROUP BY exchange, symbol
)
SELECT count(*) AS keys, count(*) AS inserted, 0::bigint AS updated
  FROM inserted;
