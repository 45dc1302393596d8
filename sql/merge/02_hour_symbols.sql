-- The symbols of a bulk hour ($1/$2), sorted, from a sample of its bronze
-- pages: enough to cut the hour into ranges of about the same size.
SELECT DISTINCT symbol
  FROM {bronze} TABLESAMPLE SYSTEM (5) REPEATABLE (0)
 WHERE is_final AND interval_start >= $1 AND interval_start < $2
 ORDER BY symbol
