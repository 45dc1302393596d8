-- {view} ({silver} or {silver_prev} of the statements below) as the hour's
-- own hourly partition: the planner reads it as the partition itself.
CREATE OR REPLACE TEMP VIEW {view} AS SELECT * FROM {partition}
