-- Retention: what each lake spool still holds, so that the retention pass
-- (in whichever instance leads) never drops a bronze hour whose
-- observations are not in the lake yet. One row per spool directory of a
-- host, written by the instance using it every minute: the oldest minute
-- not yet uploaded (NULL: nothing). A row that is never updated again (a
-- host gone with its spool) holds retention back until an operator deletes
-- it: losing raw observations is never decided by a timeout.
CREATE TABLE IF NOT EXISTS ops.lake_spool (
    spool          text        PRIMARY KEY,  -- host:directory
    oldest_pending timestamptz,
    updated_at     timestamptz NOT NULL DEFAULT now()
);

-- The ops tables are pruned by age.
CREATE INDEX IF NOT EXISTS backfill_jobs_finished_idx ON ops.backfill_jobs (finished_at);
CREATE INDEX IF NOT EXISTS source_mismatch_seen_idx ON ops.source_mismatch (interval_start);

-- Drops one hour of bronze if, and only if, every row of it has been merged:
-- no final row and no confirmed-empty minute of the hour was written at or
-- after `p_watermark` (the scheduled merge's watermark: every transaction
-- below it had finished when its last successful run began, so that run saw
-- it). The check and the drop happen under a lock on bronze that no insert
-- gets past, held for the moment they take, so a row arriving meanwhile is
-- either seen (the hour is kept) or waits and lands in a partition created
-- anew. Gives up rather than queue long behind a bulk merge (lock_timeout).
-- Returns 'dropped', 'unmerged' or 'absent'. SECURITY DEFINER: the service
-- runs as a role that may not drop tables (sql/roles.sql grants this).
CREATE OR REPLACE FUNCTION ops.drop_bronze_hour(p_hour timestamptz, p_watermark xid8)
RETURNS text
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET lock_timeout = '2s'
AS $$
DECLARE
    part text := 'ohlcv_native_p' || to_char(p_hour AT TIME ZONE 'UTC', 'YYYYMMDDHH24');
    unmerged boolean;
BEGIN
    IF to_regclass(format('bronze.%I', part)) IS NULL THEN
        RETURN 'absent';
    END IF;
    LOCK TABLE ONLY bronze.ohlcv_native IN ACCESS EXCLUSIVE MODE;
    EXECUTE format('SELECT EXISTS (SELECT 1 FROM bronze.%I WHERE is_final AND ingest_xid >= $1)', part)
       INTO unmerged USING p_watermark;
    IF unmerged OR EXISTS (
        SELECT 1 FROM bronze.empty_minutes
         WHERE interval_start >= p_hour AND interval_start < p_hour + interval '1 hour'
           AND ingest_xid >= p_watermark) THEN
        RETURN 'unmerged';
    END IF;
    EXECUTE format('DROP TABLE bronze.%I', part);
    DELETE FROM bronze.empty_minutes
     WHERE interval_start >= p_hour AND interval_start < p_hour + interval '1 hour';
    RETURN 'dropped';
END;
$$;

-- Drops one hour of silver 1m and its completeness rows (the optional silver
-- window). Returns the silver rows the hour held, or NULL when absent.
CREATE OR REPLACE FUNCTION ops.drop_silver_hour(p_hour timestamptz)
RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET lock_timeout = '2s'
AS $$
DECLARE
    part text := 'fact_ohlcv_p' || to_char(p_hour AT TIME ZONE 'UTC', 'YYYYMMDDHH24');
    n bigint;
BEGIN
    IF to_regclass(format('silver.%I', part)) IS NULL THEN
        RETURN NULL;
    END IF;
    EXECUTE format('SELECT count(*) FROM silver.%I', part) INTO n;
    EXECUTE format('DROP TABLE silver.%I', part);
    DELETE FROM silver.completeness_hourly WHERE hour_start = p_hour;
    RETURN n;
END;
$$;

-- Deletes gold rows (every level) of buckets that start before p_before.
CREATE OR REPLACE FUNCTION ops.prune_gold(p_before timestamptz)
RETURNS TABLE (table_name text, deleted bigint)
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    iv text;
BEGIN
    FOREACH iv IN ARRAY ARRAY['5m', '15m', '30m', '1h', '1d'] LOOP
        table_name := 'gold.ohlcv_' || iv;
        EXECUTE format('DELETE FROM gold.%I WHERE bucket_start < $1', 'ohlcv_' || iv) USING p_before;
        GET DIAGNOSTICS deleted = ROW_COUNT;
        RETURN NEXT;
    END LOOP;
END;
$$;

-- Deletes the ops tables' finished rows older than p_before (wall time):
-- merge and reload runs, finished backfill jobs, recorded source mismatches.
CREATE OR REPLACE FUNCTION ops.prune_ops(p_before timestamptz)
RETURNS TABLE (table_name text, deleted bigint)
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    table_name := 'ops.runs';
    DELETE FROM ops.runs WHERE started_at < p_before AND status <> 'running';
    GET DIAGNOSTICS deleted = ROW_COUNT;
    RETURN NEXT;
    table_name := 'ops.backfill_jobs';
    DELETE FROM ops.backfill_jobs WHERE finished_at < p_before;
    GET DIAGNOSTICS deleted = ROW_COUNT;
    RETURN NEXT;
    table_name := 'ops.source_mismatch';
    DELETE FROM ops.source_mismatch WHERE detected_at < p_before;
    GET DIAGNOSTICS deleted = ROW_COUNT;
    RETURN NEXT;
END;
$$;

-- They delete: only the roles sql/roles.sql grants them to may call them.
REVOKE EXECUTE ON FUNCTION ops.drop_bronze_hour(timestamptz, xid8),
                           ops.drop_silver_hour(timestamptz),
                           ops.prune_gold(timestamptz),
                           ops.prune_ops(timestamptz) FROM PUBLIC;
