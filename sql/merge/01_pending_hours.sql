-- The hours a scheduled merge must look at: every hour with a final bronze
-- row or a confirmed-empty minute written by a transaction at or after $1
-- (the job's watermark), however old the minutes are: a backfill that was
-- killed before its own merge, spool rows replayed after a long outage, a
-- lake reload. Hours as whole hours since the epoch (UTC).
-- Each bronze partition answers from its ingest_xid index, so the cost is
-- what was written since the watermark plus one index probe per partition.
SELECT hour
  FROM (SELECT DISTINCT floor(extract(epoch FROM interval_start) / 3600)::bigint AS hour
          FROM bronze.ohlcv_native
         WHERE is_final AND ingest_xid >= $1::text::xid8
        UNION
        SELECT DISTINCT floor(extract(epoch FROM interval_start) / 3600)::bigint
          FROM bronze.empty_minutes
         WHERE ingest_xid >= $1::text::xid8) h
 ORDER BY hour;
