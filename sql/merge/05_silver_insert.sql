-- The insert of 05_silver.sql and 05_silver_fresh.sql: the rows of
-- their CTE `winners` into the hour's silver partition (each adds its own
-- WHERE and RETURNING), with the pair's base and quote assets from the
-- exchange's instrument list (NULL until the instruments refresh has seen
-- the pair).
INSERT INTO {silver}
       (exchange, symbol, base, quote, interval_seconds, interval_start, interval_end,
        open, high, low, close, volume, quote_volume, trade_count, vwap,
        source, event_ts, merged_at)
SELECT w.exchange, w.symbol, i.base, i.quote, w.interval_seconds, w.interval_start,
       w.interval_end, w.open, w.high, w.low, w.close, w.volume, w.quote_volume,
       w.trade_count, w.vwap, w.source, w.event_ts, now()
  FROM winners w
  LEFT JOIN ref.instruments i ON i.exchange = w.exchange AND i.symbol = w.symbol
