-- The planner knows nothing of a freshly filled temp table; without
-- statistics it would join merge_touched to bronze row by row.
ANALYZE merge_touched
