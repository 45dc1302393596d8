(SELECT exchange, symbol, bucket_start AS start FROM merge_changed)
