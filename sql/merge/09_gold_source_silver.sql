(SELECT exchange, symbol, interval_start AS start, open, high, low, close, volume,
        quote_volume, trade_count, 1 AS minutes
   FROM {silver}
  WHERE interval_seconds = 60)
