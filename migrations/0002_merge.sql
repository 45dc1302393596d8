-- The merge slice: what the incremental bronze → silver merge needs, the
-- completeness and cross-source tables it maintains, the gold aggregates,
-- and the run log.

-- Exchange and symbol names are ASCII identifiers: compare them bytewise
-- ("C") instead of by the database's locale. Sorting, grouping and the
-- primary-key index of a busy hour get several times cheaper.
ALTER TABLE bronze.ohlcv_native
    ALTER COLUMN exchange TYPE text COLLATE "C",
    ALTER COLUMN symbol TYPE text COLLATE "C";
ALTER TABLE silver.fact_ohlcv
    ALTER COLUMN exchange TYPE text COLLATE "C",
    ALTER COLUMN symbol TYPE text COLLATE "C";

-- The transaction that wrote each bronze row. Incremental merges read the
-- rows written since the previous merge's snapshot (see sql/merge_silver.sql):
-- unlike a sequence number, a transaction id cannot commit "behind" a
-- watermark unseen.
ALTER TABLE bronze.ohlcv_native
    ADD COLUMN IF NOT EXISTS ingest_xid xid8 NOT NULL DEFAULT pg_current_xact_id();

CREATE INDEX IF NOT EXISTS ohlcv_native_ingest_xid_idx
    ON bronze.ohlcv_native (ingest_xid) WHERE is_final;

-- Where each scheduled merge job got to: the xmin of the snapshot of its last
-- successful run. Every transaction below it had finished by then.
CREATE TABLE IF NOT EXISTS ops.merge_watermark (
    job        text        PRIMARY KEY,
    snapshot_xmin xid8     NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- One row per merge, backfill or reload run.
CREATE TABLE IF NOT EXISTS ops.runs (
    id          bigserial   PRIMARY KEY,
    kind        text        NOT NULL,          -- merge_recent, merge_sweep, merge_cli, …
    range_from  timestamptz NOT NULL,
    range_to    timestamptz NOT NULL,
    started_at  timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,
    status      text        NOT NULL DEFAULT 'running'
                CHECK (status IN ('running', 'ok', 'failed')),
    keys        bigint      NOT NULL DEFAULT 0, -- candle keys examined
    inserted    bigint      NOT NULL DEFAULT 0,
    updated     bigint      NOT NULL DEFAULT 0,
    unchanged   bigint      NOT NULL DEFAULT 0,
    error       text
);
CREATE INDEX IF NOT EXISTS runs_kind_started_idx ON ops.runs (kind, started_at DESC);

-- Minutes that REST covered and returned no candle for: no trades happened.
-- Written by the backfiller; the merge fills them at the previous close.
CREATE TABLE IF NOT EXISTS bronze.empty_minutes (
    exchange         text COLLATE "C" NOT NULL,
    symbol           text COLLATE "C" NOT NULL,
    interval_seconds integer     NOT NULL DEFAULT 60,
    interval_start   timestamptz NOT NULL,
    confirmed_at     timestamptz NOT NULL DEFAULT now(),
    ingest_xid       xid8        NOT NULL DEFAULT pg_current_xact_id(),
    PRIMARY KEY (exchange, symbol, interval_seconds, interval_start)
);
CREATE INDEX IF NOT EXISTS empty_minutes_start_idx ON bronze.empty_minutes (interval_start);

-- Where a WebSocket final and the exchange's own REST candle of the same
-- minute disagree. Kept (not overwritten) so analysts can see which feeds
-- disagree with their REST, and by how much.
CREATE TABLE IF NOT EXISTS ops.source_mismatch (
    exchange         text COLLATE "C" NOT NULL,
    symbol           text COLLATE "C" NOT NULL,
    interval_seconds integer     NOT NULL,
    interval_start   timestamptz NOT NULL,
    ws_open numeric, ws_high numeric, ws_low numeric, ws_close numeric, ws_volume numeric,
    rest_open numeric, rest_high numeric, rest_low numeric, rest_close numeric, rest_volume numeric,
    detected_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (exchange, symbol, interval_seconds, interval_start)
);

-- Per exchange, symbol and hour: how many of the expected minutes silver has,
-- and from where.
CREATE TABLE IF NOT EXISTS silver.completeness_hourly (
    exchange   text COLLATE "C" NOT NULL,
    symbol     text COLLATE "C" NOT NULL,
    hour_start timestamptz NOT NULL,
    expected   integer     NOT NULL,
    present    integer     NOT NULL,
    from_ws    integer     NOT NULL,
    from_rest  integer     NOT NULL,
    from_lake  integer     NOT NULL,
    filled     integer     NOT NULL,
    missing    integer     NOT NULL,
    ratio      numeric(7, 6) NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (exchange, symbol, hour_start)
);

CREATE OR REPLACE VIEW silver.completeness_daily AS
SELECT exchange,
       symbol,
       date_trunc('day', hour_start AT TIME ZONE 'UTC')::date AS day,
       sum(expected)  AS expected,
       sum(present)   AS present,
       sum(from_ws)   AS from_ws,
       sum(from_rest) AS from_rest,
       sum(from_lake) AS from_lake,
       sum(filled)    AS filled,
       sum(missing)   AS missing,
       round(sum(present)::numeric / nullif(sum(expected), 0), 6) AS ratio
  FROM silver.completeness_hourly
 GROUP BY exchange, symbol, date_trunc('day', hour_start AT TIME ZONE 'UTC');

-- Gold: longer candles derived only from silver 1m. One table per interval,
-- same shape; `bucket_start` is the interval's start (UTC).
DO $$
DECLARE
    iv text;
BEGIN
    FOREACH iv IN ARRAY ARRAY['5m', '15m', '30m', '1h', '1d'] LOOP
        EXECUTE format($f$
            CREATE TABLE IF NOT EXISTS gold.%I (
                exchange        text COLLATE "C" NOT NULL,
                symbol          text COLLATE "C" NOT NULL,
                bucket_start    timestamptz NOT NULL,
                bucket_end      timestamptz NOT NULL,
                open            numeric     NOT NULL,
                high            numeric     NOT NULL,
                low             numeric     NOT NULL,
                close           numeric     NOT NULL,
                volume          numeric     NOT NULL,
                quote_volume    numeric,
                trade_count     bigint,
                vwap            numeric,
                minutes_present integer     NOT NULL,
                refreshed_at    timestamptz NOT NULL DEFAULT now(),
                PRIMARY KEY (exchange, symbol, bucket_start)
            )$f$, 'ohlcv_' || iv);
    END LOOP;
END
$$;
