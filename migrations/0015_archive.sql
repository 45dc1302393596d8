-- The exchanges' own published files (Binance's data.binance.vision, OKX's
-- market-data history, Kraken's OHLCVT downloads) as a source of bronze:
-- `source = 'archive'`. It ranks below the WebSocket and the lake (a
-- WebSocket candle is never replaced) and above REST.
ALTER TABLE bronze.ohlcv_native
    DROP CONSTRAINT IF EXISTS ohlcv_native_source_check,
    ADD CONSTRAINT ohlcv_native_source_check
        CHECK (source IN ('ws', 'rest', 'lake', 'archive'));
ALTER TABLE silver.fact_ohlcv
    DROP CONSTRAINT IF EXISTS fact_ohlcv_source_check,
    ADD CONSTRAINT fact_ohlcv_source_check
        CHECK (source IN ('ws', 'rest', 'lake', 'archive', 'filled'));

-- Minutes of an hour silver has from an archive.
ALTER TABLE silver.completeness_hourly
    ADD COLUMN IF NOT EXISTS from_archive integer NOT NULL DEFAULT 0;

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
       round(sum(present)::numeric / nullif(sum(expected), 0), 6) AS ratio,
       sum(unrecoverable) AS unrecoverable,
       sum(from_archive) AS from_archive
  FROM silver.completeness_hourly
 GROUP BY exchange, symbol, date_trunc('day', hour_start AT TIME ZONE 'UTC');

CREATE OR REPLACE VIEW silver.v_completeness AS
SELECT exchange,
       symbol,
       hour_start,
       (hour_start AT TIME ZONE 'UTC')::date AS day_utc,
       expected,
       present,
       from_ws,
       from_rest,
       from_lake,
       filled,
       missing,
       ratio,
       round(100 * ratio, 2)                  AS completion_pct,
       unrecoverable,
       from_archive
  FROM silver.completeness_hourly;

-- Every archive file imported: a file already here with the same checksum
-- is skipped by the next import; a re-issued file (a new checksum) is
-- imported again and gets its own row.
CREATE TABLE IF NOT EXISTS ops.archive_files (
    exchange     text COLLATE "C" NOT NULL,
    symbol       text COLLATE "C" NOT NULL,
    name         text COLLATE "C" NOT NULL,
    sha256       text COLLATE "C" NOT NULL,
    -- The minutes the file covers, [period_start, period_end).
    period_start timestamptz NOT NULL,
    period_end   timestamptz NOT NULL,
    rows         integer     NOT NULL,
    bytes        bigint      NOT NULL,
    imported_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (exchange, name, sha256)
);
CREATE INDEX IF NOT EXISTS archive_files_pair_idx
    ON ops.archive_files (exchange, symbol, period_start);

-- `klines archive verify` and the scheduled audit: silver compared with the
-- exchange's published file, per pair and UTC day, minute by minute and
-- decimal-exactly on open, high, low, close, volume, quote volume and
-- trades. The latest result of each pair-day.
CREATE TABLE IF NOT EXISTS ops.archive_audit (
    exchange            text COLLATE "C" NOT NULL,
    symbol              text COLLATE "C" NOT NULL,
    day                 date        NOT NULL,
    -- The file compared (a day's or its month's), NULL when there is none.
    file                text,
    sha256              text,
    minutes_in_file     integer     NOT NULL,
    minutes_in_silver   integer     NOT NULL,
    equal               integer     NOT NULL,
    differing           integer     NOT NULL,
    -- The columns that differ in at least one minute.
    differing_columns   text[]      NOT NULL DEFAULT '{}',
    missing_from_silver integer     NOT NULL,
    missing_from_file   integer     NOT NULL,
    -- equal | differs | silver_incomplete | archive_incomplete | no_file
    verdict             text        NOT NULL,
    -- Minutes silver lacked that a repair imported, and differing minutes
    -- it replaced with the archive's (`--repair=prefer-archive`).
    repaired            integer     NOT NULL DEFAULT 0,
    replaced            integer     NOT NULL DEFAULT 0,
    checked_at          timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (exchange, symbol, day),
    CONSTRAINT archive_audit_verdict_check
        CHECK (verdict IN ('equal', 'differs', 'silver_incomplete', 'archive_incomplete', 'no_file'))
);
CREATE INDEX IF NOT EXISTS archive_audit_verdict_idx ON ops.archive_audit (verdict, day);

-- The minutes behind an audit that are not equal: what differs, with both
-- sides' values.
CREATE TABLE IF NOT EXISTS ops.archive_audit_minutes (
    exchange       text COLLATE "C" NOT NULL,
    symbol         text COLLATE "C" NOT NULL,
    interval_start timestamptz NOT NULL,
    -- differs | missing_from_silver | missing_from_file
    kind           text        NOT NULL,
    columns        text[]      NOT NULL DEFAULT '{}',
    silver         jsonb,
    archive        jsonb,
    PRIMARY KEY (exchange, symbol, interval_start)
);

-- Minutes where the operator chose the archive's candle over silver's
-- (`klines archive verify --repair=prefer-archive`): the merge ranks the
-- archive's row first there, above a WebSocket candle.
CREATE TABLE IF NOT EXISTS ops.archive_preferred (
    exchange       text COLLATE "C" NOT NULL,
    symbol         text COLLATE "C" NOT NULL,
    interval_start timestamptz NOT NULL,
    sha256         text        NOT NULL,
    preferred_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (exchange, symbol, interval_start)
);

-- The hourly WebSocket-against-REST check: per pair and hour sampled, the
-- minutes both feeds have, how many are equal and which columns differ
-- (each differing minute is in ops.source_mismatch).
CREATE TABLE IF NOT EXISTS ops.source_check (
    exchange          text COLLATE "C" NOT NULL,
    symbol            text COLLATE "C" NOT NULL,
    hour_start        timestamptz NOT NULL,
    compared          integer     NOT NULL,
    equal             integer     NOT NULL,
    differing         integer     NOT NULL,
    differing_columns text[]      NOT NULL DEFAULT '{}',
    checked_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (exchange, symbol, hour_start)
);
CREATE INDEX IF NOT EXISTS source_check_hour_idx ON ops.source_check (hour_start);
