-- The REST backfiller: instruments and listing times, backfill jobs, gaps
-- REST can no longer reach, and completeness that knows about both.

-- Instruments as the exchanges list them. The backfiller records a pair's
-- first candle (`listed_at`) so minutes before it are neither gaps nor
-- expected; the instruments refresh fills in status and assets.
CREATE TABLE IF NOT EXISTS ref.instruments (
    exchange     text COLLATE "C" NOT NULL,
    symbol       text COLLATE "C" NOT NULL,
    base         text,
    quote        text,
    status       text,
    trading      boolean,
    listed_at    timestamptz,          -- first 1m candle the exchange has
    delisted_at  timestamptz,          -- end of the last candle, once delisted
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (exchange, symbol),
    CHECK (delisted_at IS NULL OR listed_at IS NULL OR listed_at < delisted_at)
);

-- One row per backfill: requested by an operator (CLI, API) or by the
-- service's schedules. Progress columns are updated while it runs.
CREATE TABLE IF NOT EXISTS ops.backfill_jobs (
    id                bigserial   PRIMARY KEY,
    requested_by      text        NOT NULL,   -- cli:<user>, api, schedule:hourly, schedule:reconnect, schedule:initial
    exchange          text COLLATE "C" NOT NULL,
    symbols           text[]      NOT NULL,
    range_from        timestamptz NOT NULL,
    range_to          timestamptz NOT NULL,
    dry_run           boolean     NOT NULL DEFAULT false,
    status            text        NOT NULL DEFAULT 'queued'
                      CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
    gap_minutes       bigint      NOT NULL DEFAULT 0,  -- missing minutes found at the start
    pages_total       integer     NOT NULL DEFAULT 0,
    pages_done        integer     NOT NULL DEFAULT 0,
    requests          integer     NOT NULL DEFAULT 0,
    rate_limited      integer     NOT NULL DEFAULT 0,  -- 429/418 answers
    candles_inserted  bigint      NOT NULL DEFAULT 0,
    empty_confirmed   bigint      NOT NULL DEFAULT 0,
    unrecoverable     bigint      NOT NULL DEFAULT 0,
    still_missing     bigint      NOT NULL DEFAULT 0,  -- gaps left after the run
    error             text,
    created_at        timestamptz NOT NULL DEFAULT now(),
    started_at        timestamptz,
    finished_at       timestamptz,
    CHECK (range_from < range_to)
);
CREATE INDEX IF NOT EXISTS backfill_jobs_created_idx ON ops.backfill_jobs (created_at DESC);

-- Minutes REST can no longer reach (older than the exchange keeps), with
-- the reason. The backfiller skips them instead of retrying forever, and
-- completeness counts them.
CREATE TABLE IF NOT EXISTS ops.unrecoverable_gaps (
    exchange     text COLLATE "C" NOT NULL,
    symbol       text COLLATE "C" NOT NULL,
    range_from   timestamptz NOT NULL,
    range_to     timestamptz NOT NULL,
    reason       text        NOT NULL,
    recorded_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (exchange, symbol, range_from),
    CHECK (range_from < range_to)
);

-- A pair's one-off initial history fill, so a pair added to the config
-- gets its recent past once, not at every start.
CREATE TABLE IF NOT EXISTS ops.backfill_pairs (
    exchange        text COLLATE "C" NOT NULL,
    symbol          text COLLATE "C" NOT NULL,
    initial_from    timestamptz NOT NULL,
    initial_done_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (exchange, symbol)
);

ALTER TABLE silver.completeness_hourly
    ADD COLUMN IF NOT EXISTS unrecoverable integer NOT NULL DEFAULT 0;

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
       sum(unrecoverable) AS unrecoverable
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
       unrecoverable
  FROM silver.completeness_hourly;
