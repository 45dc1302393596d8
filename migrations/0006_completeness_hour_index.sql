-- The status page's heatmap and the completeness gauge read one hour (or
-- 24) of every pair: by hour, not by pair. Without this index each read
-- scanned the whole table, which grows by 24 rows per pair and day.
CREATE INDEX IF NOT EXISTS completeness_hourly_hour_idx
    ON silver.completeness_hourly (hour_start);
