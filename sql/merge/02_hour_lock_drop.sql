-- First, before any other lock: the shared hold that retention's drop of a
-- bronze hour waits for (ops.drop_bronze_hour), so that the drop takes
-- bronze's table while no merge is in flight instead of timing out behind
-- one for ever.
SELECT pg_advisory_xact_lock_shared(hashtext('klines.bronze.drop'), 0)
