-- After a bulk merge: fresh statistics for the hour's bronze and silver
-- partitions at once, not when autovacuum comes round.
ANALYZE {bronze}, {silver_partition}
