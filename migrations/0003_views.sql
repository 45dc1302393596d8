-- Analyst views (Looker Studio, psql, DuckDB over postgres) and the
-- privilege boundary of the partition helper.

-- One row per exchange, pair and minute, with friendly names.
CREATE OR REPLACE VIEW silver.v_candles AS
SELECT exchange,
       symbol,
       base,
       quote,
       interval_start          AS minute_utc,
       open,
       high,
       low,
       close,
       volume                  AS volume_base,
       quote_volume,
       trade_count,
       vwap,
       source,
       source = 'filled'       AS is_filled
  FROM silver.fact_ohlcv
 WHERE interval_seconds = 60;

-- Completeness per exchange, pair and hour, with the day for grouping and
-- the ratio as a percentage.
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
       round(100 * ratio, 2)                  AS completion_pct
  FROM silver.completeness_hourly;

-- Creating a partition needs ownership of the parent table. The writers'
-- roles (sql/roles.sql) get EXECUTE on this function instead, which runs with
-- the schema owner's rights and a fixed search_path.
ALTER FUNCTION ops.ensure_hourly_partitions(regclass, timestamptz, timestamptz)
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
REVOKE ALL ON FUNCTION ops.ensure_hourly_partitions(regclass, timestamptz, timestamptz) FROM PUBLIC;
