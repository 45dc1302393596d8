-- Folding: silver's hourly partitions are right for the recent, busy hours;
-- years of them are not (8,760 tables a year). Days older than a few days
-- are folded into one partition per day (`fact_ohlcv_dYYYYMMDD`), months
-- older than a few weeks into one per month (`fact_ohlcv_mYYYYMM`), so the
-- partition count stays near a hundred whatever the history. Bronze is not
-- folded: retention bounds it (14 days of hours).

-- Hourly partitions are created only for hours no coarser partition covers
-- (a late row for a folded day lands in that day's partition).
CREATE OR REPLACE FUNCTION ops.ensure_hourly_partitions(
    parent regclass, p_from timestamptz, p_to timestamptz
) RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    hour_start timestamptz := date_trunc('hour', p_from AT TIME ZONE 'UTC') AT TIME ZONE 'UTC';
    parent_schema text;
    parent_name text;
    part_name text;
    created integer := 0;
BEGIN
    SELECT n.nspname, c.relname INTO parent_schema, parent_name
      FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE c.oid = parent;
    PERFORM pg_advisory_xact_lock(hashtext('klines.partitions'), hashtext(parent::text));
    WHILE hour_start < p_to LOOP
        part_name := parent_name || '_p' || to_char(hour_start AT TIME ZONE 'UTC', 'YYYYMMDDHH24');
        IF to_regclass(format('%I.%I', parent_schema, part_name)) IS NULL
           AND to_regclass(format('%I.%I', parent_schema,
                   parent_name || '_d' || to_char(hour_start AT TIME ZONE 'UTC', 'YYYYMMDD'))) IS NULL
           AND to_regclass(format('%I.%I', parent_schema,
                   parent_name || '_m' || to_char(hour_start AT TIME ZONE 'UTC', 'YYYYMM'))) IS NULL THEN
            EXECUTE format(
                'CREATE TABLE %I.%I PARTITION OF %s FOR VALUES FROM (%L) TO (%L)',
                parent_schema, part_name, parent,
                hour_start, hour_start + interval '1 hour');
            created := created + 1;
        END IF;
        hour_start := hour_start + interval '1 hour';
    END LOOP;
    RETURN created;
END;
$$;
REVOKE ALL ON FUNCTION ops.ensure_hourly_partitions(regclass, timestamptz, timestamptz) FROM PUBLIC;

-- The silver partition holding an hour: its hourly one, else its day's or
-- its month's; NULL when none exists.
CREATE OR REPLACE FUNCTION ops.silver_partition_of(p_hour timestamptz)
RETURNS text
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT coalesce(
        to_regclass('silver.fact_ohlcv_p' || to_char(p_hour AT TIME ZONE 'UTC', 'YYYYMMDDHH24'))::text,
        to_regclass('silver.fact_ohlcv_d' || to_char(p_hour AT TIME ZONE 'UTC', 'YYYYMMDD'))::text,
        to_regclass('silver.fact_ohlcv_m' || to_char(p_hour AT TIME ZONE 'UTC', 'YYYYMM'))::text)
$$;

-- Folds every silver partition inside [p_from, p_to) (a whole UTC day or
-- month) into one new partition named p_name, online:
--   1. the merge's lock of every hour of the range is taken, so no merge
--      writes them meanwhile (ingest never writes silver);
--   2. the new table is filled from the old partitions and indexed, with a
--      CHECK of its range so that attaching it needs no scan;
--   3. only then, for the moment the catalog changes take, silver is locked:
--      the old partitions are detached and dropped, the new one attached.
-- Readers see the old partitions until the commit and the new one after:
-- never a row twice or missing. lock_timeout keeps step 3 from queueing
-- behind a long read (the fold is retried at the next pass). Returns the
-- rows moved, or NULL when there was nothing to fold.
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
    SET LOCAL lock_timeout = '2s';
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

-- Drops one silver partition of any size (the optional silver window) and
-- the completeness rows of its range. Returns its rows, or NULL if absent.
CREATE OR REPLACE FUNCTION ops.drop_silver_partition(p_name text, p_from timestamptz, p_to timestamptz)
RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET lock_timeout = '2s'
AS $$
DECLARE
    n bigint;
BEGIN
    IF p_name !~ '^fact_ohlcv_[pdm][0-9]+$' OR to_regclass('silver.' || p_name) IS NULL THEN
        RETURN NULL;
    END IF;
    EXECUTE format('SELECT count(*) FROM silver.%I', p_name) INTO n;
    EXECUTE format('DROP TABLE silver.%I', p_name);
    DELETE FROM silver.completeness_hourly WHERE hour_start >= p_from AND hour_start < p_to;
    RETURN n;
END;
$$;
REVOKE EXECUTE ON FUNCTION ops.drop_silver_partition(text, timestamptz, timestamptz) FROM PUBLIC;
