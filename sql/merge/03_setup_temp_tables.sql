-- The per-connection scratch tables of a merge, emptied at every commit.
CREATE TEMP TABLE IF NOT EXISTS merge_touched (
    exchange text COLLATE "C", symbol text COLLATE "C",
    interval_seconds integer, interval_start timestamptz
) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS merge_changed (
    exchange text COLLATE "C", symbol text COLLATE "C", bucket_start timestamptz
) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS gold_changed (
    level text COLLATE "C", exchange text COLLATE "C", symbol text COLLATE "C",
    bucket_start timestamptz
) ON COMMIT DELETE ROWS;
-- A pooled connection may carry rows of a transaction that failed.
TRUNCATE merge_touched, merge_changed, gold_changed;
