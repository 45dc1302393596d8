(SELECT exchange, symbol, bucket_start AS start, open, high, low, close, volume,
        quote_volume, trade_count, minutes_present AS minutes
   FROM gold.{previous})
