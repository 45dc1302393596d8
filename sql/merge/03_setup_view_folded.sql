-- {view} as the hour's slice of the day's or month's partition it was
-- folded into (inserts and updates go through the view).
CREATE OR REPLACE TEMP VIEW {view} AS
SELECT * FROM {partition}
 WHERE interval_start >= '{from}' AND interval_start < '{to}'
