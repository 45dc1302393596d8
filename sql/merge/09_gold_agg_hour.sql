-- Step 5, a bulk merge: `agg` for 09_gold_refresh.sql, every bucket of the merged
-- hour (widened to whole buckets) of every pair with a change below, when
-- nearly every bucket of the hour changed. A bucket whose rows did not change
-- comes out as it is in gold and is not written.
pairs AS (
    SELECT DISTINCT exchange, symbol
      FROM {changed} c
     WHERE true {shard:c}
),
-- Each pair's hour is read by index on its own (LATERAL). A single grouped
-- pass over the hour would be as fast while the table below is small, but the
-- gold tables are not partitioned: with months in them, a filter on the
-- bucket alone reads the whole table (measured with three days of 5,000
-- pairs in gold.ohlcv_5m: 0.49 s against 0.19 s this way, and growing).
agg AS (
    SELECT p.exchange, p.symbol, a.*
      FROM pairs p
     CROSS JOIN LATERAL (
           SELECT date_bin(interval '{width}', x.start, TIMESTAMPTZ '2000-01-01 00:00:00+00') AS bucket_start,
                  {aggregates}
             FROM {source} x
            WHERE x.exchange = p.exchange AND x.symbol = p.symbol
              AND x.start >= date_bin(interval '{width}', $1::timestamptz, TIMESTAMPTZ '2000-01-01 00:00:00+00')
              AND x.start <  date_bin(interval '{width}', $2::timestamptz - interval '1 microsecond',
                                      TIMESTAMPTZ '2000-01-01 00:00:00+00') + interval '{width}'
            GROUP BY 1) a
)
