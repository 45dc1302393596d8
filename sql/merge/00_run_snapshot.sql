-- A run's snapshot, taken before it merges anything: every transaction
-- below its xmin had committed or aborted by then, so the next incremental
-- run of the job can start from it without missing a row.
SELECT pg_snapshot_xmin(pg_current_snapshot())::text
