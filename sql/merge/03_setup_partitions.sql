-- The silver partitions that hold the hour before ($1) and the hour ($2):
-- hourly, or the day's or month's an old hour was folded into.
SELECT ops.silver_partition_of($1), ops.silver_partition_of($2)
