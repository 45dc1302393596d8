-- The job's watermark ($1 = job): where its next incremental run starts.
SELECT snapshot_xmin::text FROM ops.merge_watermark WHERE job = $1
