-- Step 5, the usual merge: `agg` for 09_gold_refresh.sql, the buckets that
-- contain a row of the level below changed in this merge: for the 5-minute
-- level the buckets of merge_changed (silver minutes changed), for the others
-- the buckets of the level below that this merge really changed
-- (gold_changed), so a level costs what changed below it.
buckets AS (
    SELECT DISTINCT exchange, symbol,
           date_bin(interval '{width}', start, TIMESTAMPTZ '2000-01-01 00:00:00+00') AS bucket_start
      FROM {changed} c
     -- The changes are this connection's own already; naming its range of
     -- symbols gives both forms of `agg` the same parameters.
     WHERE true {shard:c}
),
-- Each bucket is aggregated from its own rows, read by index (LATERAL): the
-- cost follows the buckets changed, and there is no join for a misestimate
-- to get wrong (a freshly filled hour has no statistics; a planned join of
-- all rows against all buckets once rescanned the buckets for every row).
agg AS (
    SELECT b.exchange, b.symbol, b.bucket_start, a.*
      FROM buckets b
     CROSS JOIN LATERAL (
           SELECT {aggregates}
             FROM {source} x
            WHERE x.exchange = b.exchange AND x.symbol = b.symbol
              AND x.start >= b.bucket_start
              AND x.start < b.bucket_start + interval '{width}'
              -- The merged hour widened to whole buckets holds every bucket
              -- here; the bound lets PostgreSQL read only those partitions.
              AND x.start >= date_bin(interval '{width}', $1::timestamptz, TIMESTAMPTZ '2000-01-01 00:00:00+00')
              AND x.start <  date_bin(interval '{width}', $2::timestamptz - interval '1 microsecond',
                                      TIMESTAMPTZ '2000-01-01 00:00:00+00') + interval '{width}') a
     WHERE a.minutes_present > 0
)
