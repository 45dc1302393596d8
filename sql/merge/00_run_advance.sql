-- A successful incremental run moves its job's watermark ($1 job) to the
-- snapshot it took before merging ($2, an xid8 as text).
INSERT INTO ops.merge_watermark (job, snapshot_xmin) VALUES ($1, $2::text::xid8)
ON CONFLICT (job) DO UPDATE
SET snapshot_xmin = EXCLUDED.snapshot_xmin, updated_at = now()
