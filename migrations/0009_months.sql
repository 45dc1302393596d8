-- Running for months: the merge finds what to merge from what was written
-- since its watermark, whatever the minutes' age, and a pair whose REST
-- keeps failing backs off on its own instead of holding back its exchange.

-- Confirmed-empty minutes written since a merge's watermark, found by index
-- (the final bronze rows have theirs: ohlcv_native_ingest_xid_idx).
CREATE INDEX IF NOT EXISTS empty_minutes_ingest_xid_idx
    ON bronze.empty_minutes (ingest_xid);

-- A pair's backfill failures: how many in a row, the last one, and when the
-- scheduled sweeps try it again (exponential backoff, capped). Reset by its
-- next success. A pair without a history row gets one on its first failure.
ALTER TABLE ops.backfill_pairs
    ADD COLUMN IF NOT EXISTS failures      integer NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS last_error    text,
    ADD COLUMN IF NOT EXISTS last_error_at timestamptz,
    ADD COLUMN IF NOT EXISTS next_try_at   timestamptz;
ALTER TABLE ops.backfill_pairs
    ALTER COLUMN initial_from DROP NOT NULL,
    ALTER COLUMN initial_done_at DROP NOT NULL;
