-- Retention's catalog changes (dropping a silver partition, folding; for
-- bronze, see below) wait at most 500 ms for their locks, less than PostgreSQL's
-- deadlock_timeout (1 s): behind a merge or a write they give up and are
-- retried at the next pass, instead of closing a lock cycle in which
-- PostgreSQL cancels the write or the merge ("deadlock detected", seen by
-- the soak run when a backfill wrote old hours while retention dropped
-- them). Meanwhile no write queues behind them for more than that.
ALTER FUNCTION ops.drop_silver_hour(timestamptz) SET lock_timeout = '500ms';

-- Dropping a bronze hour takes bronze's parent table exclusively, so it
-- first waits for the merges in flight to end, as each merge of an hour
-- holds 'klines.bronze.drop' shared for its transaction: queued behind a
-- merge, the exclusive lock on bronze had waited its 500 ms, given up and
-- tried again at the next pass, and in the soak run (a 30-day backfill
-- making the merges long) bronze was never dropped again: 24 partitions
-- and a day of rows more every day. Merges starting meanwhile wait for the
-- drop (a moment); the bronze sink never waits for this lock, and waits at
-- most 500 ms for the table's.
CREATE OR REPLACE FUNCTION ops.drop_bronze_hour(p_hour timestamptz, p_watermark xid8)
RETURNS text
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET lock_timeout = '10s'
AS $$
DECLARE
    part text := 'ohlcv_native_p' || to_char(p_hour AT TIME ZONE 'UTC', 'YYYYMMDDHH24');
    unmerged boolean;
BEGIN
    IF to_regclass(format('bronze.%I', part)) IS NULL THEN
        RETURN 'absent';
    END IF;
    PERFORM pg_advisory_xact_lock(hashtext('klines.bronze.drop'), 0);
    PERFORM set_config('lock_timeout', '500ms', true);
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
REVOKE EXECUTE ON FUNCTION ops.drop_bronze_hour(timestamptz, xid8) FROM PUBLIC;

-- Folding and dropping silver partitions take the lock that partition
-- creation takes (ops.ensure_hourly_partitions), so a merge writing an old
-- hour again never creates an hourly partition inside a day being folded:
-- found by the soak run, where a killed backfill wrote hours that silver's
-- window had dropped while the fold of their day ran ("partition
-- fact_ohlcv_p2025060113 would overlap partition fact_ohlcv_d20250601").

CREATE OR REPLACE FUNCTION ops.fold_silver(p_from timestamptz, p_to timestamptz, p_name text)
RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET TimeZone = 'UTC'
AS $$
DECLARE
    parts text[];
    part text;
    h timestamptz;
    moved bigint := 0;
    n bigint;
BEGIN
    SELECT array_agg(c.relname::text ORDER BY c.relname) INTO parts
      FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
     WHERE i.inhparent = 'silver.fact_ohlcv'::regclass
       AND c.relname <> p_name
       AND (   (c.relname ~ '^fact_ohlcv_p[0-9]{10}$'
                AND to_timestamp(substr(c.relname, 13), 'YYYYMMDDHH24') >= p_from
                AND to_timestamp(substr(c.relname, 13), 'YYYYMMDDHH24') <  p_to)
            OR (c.relname ~ '^fact_ohlcv_d[0-9]{8}$'
                AND to_timestamp(substr(c.relname, 13), 'YYYYMMDD') >= p_from
                AND to_timestamp(substr(c.relname, 13), 'YYYYMMDD') <  p_to));
    IF parts IS NULL OR to_regclass('silver.' || quote_ident(p_name)) IS NOT NULL THEN
        RETURN NULL;
    END IF;
    h := p_from;
    WHILE h < p_to LOOP
        PERFORM pg_advisory_xact_lock(hashtext('klines.merge'), (extract(epoch FROM h) / 3600)::int);
        h := h + interval '1 hour';
    END LOOP;
    EXECUTE format('CREATE TABLE silver.%I (LIKE silver.fact_ohlcv INCLUDING ALL)', p_name);
    EXECUTE format('ALTER TABLE silver.%I ADD CONSTRAINT %I CHECK (interval_start >= %L AND interval_start < %L)',
                   p_name, p_name || '_range', p_from, p_to);
    FOREACH part IN ARRAY parts LOOP
        EXECUTE format('INSERT INTO silver.%I SELECT * FROM silver.%I', p_name, part);
        GET DIAGNOSTICS n = ROW_COUNT;
        moved := moved + n;
    END LOOP;
    EXECUTE format('ANALYZE silver.%I', p_name);
    -- For the catalog change, partition creation waits for the fold (and
    -- then sees its new partition); a partition created in the range
    -- before this point makes the attach fail, and the fold is retried at
    -- the next pass with it. Only this moment is serialized: creation is
    -- not held up while the rows are copied.
    PERFORM pg_advisory_xact_lock(hashtext('klines.partitions'), hashtext('silver.fact_ohlcv'));
    SET LOCAL lock_timeout = '500ms';
    FOREACH part IN ARRAY parts LOOP
        EXECUTE format('ALTER TABLE silver.fact_ohlcv DETACH PARTITION silver.%I', part);
        EXECUTE format('DROP TABLE silver.%I', part);
    END LOOP;
    EXECUTE format('ALTER TABLE silver.fact_ohlcv ATTACH PARTITION silver.%I FOR VALUES FROM (%L) TO (%L)',
                   p_name, p_from, p_to);
    RETURN moved;
END;
$$;
REVOKE EXECUTE ON FUNCTION ops.fold_silver(timestamptz, timestamptz, text) FROM PUBLIC;

CREATE OR REPLACE FUNCTION ops.drop_silver_partition(p_name text, p_from timestamptz, p_to timestamptz)
RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET lock_timeout = '500ms'
AS $$
DECLARE
    n bigint;
BEGIN
    IF p_name !~ '^fact_ohlcv_[pdm][0-9]+$' OR to_regclass('silver.' || p_name) IS NULL THEN
        RETURN NULL;
    END IF;
    PERFORM pg_advisory_xact_lock(hashtext('klines.partitions'), hashtext('silver.fact_ohlcv'));
    EXECUTE format('SELECT count(*) FROM silver.%I', p_name) INTO n;
    EXECUTE format('DROP TABLE silver.%I', p_name);
    DELETE FROM silver.completeness_hourly WHERE hour_start >= p_from AND hour_start < p_to;
    RETURN n;
END;
$$;
REVOKE EXECUTE ON FUNCTION ops.drop_silver_partition(text, timestamptz, timestamptz) FROM PUBLIC;
