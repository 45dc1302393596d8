-- Gold is read and written by key only (a pair's rows below, a bucket's row
-- in the level), but a gold table that was empty at its last vacuum looks
-- empty to the planner: it then scanned the table for each of 60,000
-- buckets while filling it (a 2 s merge took 30).
SET LOCAL enable_seqscan = off
