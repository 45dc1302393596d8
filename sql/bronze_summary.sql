-- What bronze holds, per exchange and symbol: final candles, open
-- observations left by disconnects, and the covered time range.
-- psql "$DATABASE_URL" -f sql/bronze_summary.sql
SELECT exchange,
       symbol,
       source,
       count(*) FILTER (WHERE is_final)      AS finals,
       count(*) FILTER (WHERE NOT is_final)  AS open_at_disconnect,
       count(DISTINCT interval_start) FILTER (WHERE is_final) AS distinct_minutes,
       min(interval_start)                   AS first_minute,
       max(interval_start)                   AS last_minute,
       max(ingestion_ts)                     AS last_ingested
  FROM bronze.ohlcv_native
 GROUP BY exchange, symbol, source
 ORDER BY exchange, symbol, source;
