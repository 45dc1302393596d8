-- The insert of merge_silver.sql and merge_silver_fresh.sql: the rows of
-- their CTE `winners` into the hour's silver partition (each adds its own
-- WHERE and RETURNING).
INSERT INTO {silver}
       (exchange, symbol, interval_seconds, interval_start, interval_end,
        open, high, low, close, volume, quote_volume, trade_count, vwap,
        source, event_ts, merged_at)
SELECT exchange, symbol, interval_seconds, interval_start, interval_end,
       open, high, low, close, volume, quote_volume, trade_count, vwap,
       source, event_ts, now()
  FROM winners
