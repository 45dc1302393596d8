(SELECT exchange, symbol, bucket_start AS start FROM gold_changed WHERE level = '{previous}')
