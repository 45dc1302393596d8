-- Step 5, a bulk merge: `agg` for gold_refresh.sql, every bucket of the merged
-- hour (widened to whole buckets) for the pairs of this connection in one pass,
-- when nearly all of them changed. A bucket whose rows did not change comes
-- out as it is in gold and is not written.
agg AS (
    SELECT x.exchange, x.symbol,
           date_bin(interval '{width}', x.start, TIMESTAMPTZ '2000-01-01 00:00:00+00') AS bucket_start,
           {aggregates}
      FROM {source} x
     WHERE x.start >= date_bin(interval '{width}', $1::timestamptz, TIMESTAMPTZ '2000-01-01 00:00:00+00')
       AND x.start <  date_bin(interval '{width}', $2::timestamptz - interval '1 microsecond',
                               TIMESTAMPTZ '2000-01-01 00:00:00+00') + interval '{width}'
       {shard:x}
     GROUP BY 1, 2, 3
)
