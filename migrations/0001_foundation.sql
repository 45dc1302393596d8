-- klines foundation schema: the five schemas, bronze and silver candle tables
-- (hourly range partitions on interval_start) and the partition helper.
--
-- Partitions are not created here: the service creates them 48 h ahead every
-- hour and on demand for any hour a write is about to touch, through
-- ops.ensure_hourly_partitions() below.

CREATE SCHEMA IF NOT EXISTS ref;     -- instruments and other reference data
CREATE SCHEMA IF NOT EXISTS bronze;  -- observations as they arrived, append-only
CREATE SCHEMA IF NOT EXISTS silver;  -- one row per exchange, symbol and minute
CREATE SCHEMA IF NOT EXISTS gold;    -- aggregates derived from silver only
CREATE SCHEMA IF NOT EXISTS ops;     -- runs, jobs and helpers of the service

-- Every candle observation klines accepted: final WebSocket candles, the last
-- open observation of a minute when its connection dropped (is_final = false),
-- REST backfills and lake reloads. Duplicates are allowed; the merge makes
-- silver unique.
CREATE SEQUENCE IF NOT EXISTS bronze.ohlcv_native_id_seq AS bigint;

CREATE TABLE IF NOT EXISTS bronze.ohlcv_native (
    id               bigint      NOT NULL DEFAULT nextval('bronze.ohlcv_native_id_seq'),
    exchange         text        NOT NULL,
    symbol           text        NOT NULL,
    interval_seconds integer     NOT NULL DEFAULT 60,
    interval_start   timestamptz NOT NULL,
    interval_end     timestamptz NOT NULL,
    open             numeric     NOT NULL,
    high             numeric     NOT NULL,
    low              numeric     NOT NULL,
    close            numeric     NOT NULL,
    volume           numeric     NOT NULL,   -- base asset
    quote_volume     numeric,                -- quote asset, where reported
    trade_count      bigint,                 -- where reported
    vwap             numeric,                -- where reported
    is_final         boolean     NOT NULL,
    source           text        NOT NULL,
    event_ts         timestamptz,            -- the exchange's push time
    ingestion_ts     timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT ohlcv_native_source_check CHECK (source IN ('ws', 'rest', 'lake')),
    CONSTRAINT ohlcv_native_interval_check
        CHECK (interval_end = interval_start + make_interval(secs => interval_seconds))
) PARTITION BY RANGE (interval_start);

ALTER SEQUENCE bronze.ohlcv_native_id_seq OWNED BY bronze.ohlcv_native.id;

CREATE INDEX IF NOT EXISTS ohlcv_native_key_idx
    ON bronze.ohlcv_native (exchange, symbol, interval_seconds, interval_start);

-- Exactly one row per exchange, symbol, interval and start: what analysts read.
CREATE TABLE IF NOT EXISTS silver.fact_ohlcv (
    exchange         text        NOT NULL,
    symbol           text        NOT NULL,
    base             text,
    quote            text,
    interval_seconds integer     NOT NULL DEFAULT 60,
    interval_start   timestamptz NOT NULL,
    interval_end     timestamptz NOT NULL,
    open             numeric     NOT NULL,
    high             numeric     NOT NULL,
    low              numeric     NOT NULL,
    close            numeric     NOT NULL,
    volume           numeric     NOT NULL,
    quote_volume     numeric,
    trade_count      bigint,
    vwap             numeric,
    source           text        NOT NULL,
    event_ts         timestamptz,
    merged_at        timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT fact_ohlcv_source_check CHECK (source IN ('ws', 'rest', 'lake', 'filled')),
    CONSTRAINT fact_ohlcv_interval_check
        CHECK (interval_end = interval_start + make_interval(secs => interval_seconds)),
    PRIMARY KEY (exchange, symbol, interval_seconds, interval_start)
) PARTITION BY RANGE (interval_start);

-- Creates the hourly partitions of `parent` covering [p_from, p_to) that do
-- not exist yet, and returns how many it created. Partition names are
-- <table>_pYYYYMMDDHH (UTC). A transaction-scoped advisory lock keeps
-- concurrent callers (several writers, several instances) from racing on the
-- same CREATE.
CREATE OR REPLACE FUNCTION ops.ensure_hourly_partitions(
    parent regclass, p_from timestamptz, p_to timestamptz
) RETURNS integer
LANGUAGE plpgsql AS $$
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
        IF to_regclass(format('%I.%I', parent_schema, part_name)) IS NULL THEN
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
