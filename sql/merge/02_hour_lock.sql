-- One merge of an hour ($1, hours since the epoch) at a time, across
-- processes: two merges of the same hour take turns instead of
-- double-writing or deadlocking.
SELECT pg_advisory_xact_lock(hashtext('klines.merge'), $1)
