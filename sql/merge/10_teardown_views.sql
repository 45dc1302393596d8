-- Before the hour's transaction ends: a view left in the session would keep
-- the partition from being folded or dropped.
DROP VIEW IF EXISTS {silver}, {silver_prev}
