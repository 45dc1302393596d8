-- The cheap check before an hour's transaction ($1/$2 the hour, $3 the
-- scope's xid, $4 = BULK_ROWS): how many final bronze rows written since the
-- watermark (counted up to $4: enough to tell a bulk merge from the usual
-- minute's), and whether any confirmed-empty minute was. A no-op
-- incremental merge stops here.
SELECT (SELECT count(*)
          FROM (SELECT 1 FROM {bronze}
                 WHERE is_final AND interval_start >= $1 AND interval_start < $2
                   AND ingest_xid >= $3::text::xid8
                 LIMIT $4) r),
       EXISTS (SELECT 1 FROM bronze.empty_minutes
                WHERE interval_start >= $1 AND interval_start < $2
                  AND ingest_xid >= $3::text::xid8)
