-- Where each pair's hourly backfill sweep has reached. The first sweep after
-- a start resumes from here, so downtime longer than `lookback` (a crash, a
-- stopped VM) is swept too, not just the last few hours.
ALTER TABLE ops.backfill_pairs ADD COLUMN IF NOT EXISTS swept_to timestamptz;
