-- Step 2 of a bulk merge into an hour that has no silver rows yet in this
-- connection's range of symbols: a backfill, a lake reload, the first merge
-- after downtime. Every final key of the range, with the same winners as
-- 05_silver.sql, inserted straight: with nothing in silver to compare
-- with or update (the caller checked, and holds the hour's advisory lock),
-- there is no look-up of each key, no list of winners kept and nothing
-- returned (the caller counts the rows inserted, and lists the range's
-- pairs afterwards with 05_silver_fresh_pairs.sql).
-- $1, $2: the hour [from, to); the shard placeholder on b: this connection's
-- range of symbols.
WITH {ranked},
winners AS (
    SELECT * FROM ranked WHERE rank = 1
)
{insert_winners};
