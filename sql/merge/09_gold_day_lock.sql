-- A day's bucket ($1, days since the epoch) sums the hours of the day,
-- which other merges (of other hours) may be writing: one at a time.
SELECT pg_advisory_xact_lock(hashtext('klines.merge.day'), $1)
