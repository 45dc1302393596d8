-- Table maintenance for a service left alone for months.
--
-- Gold buckets and completeness rows are rewritten every minute while their
-- hour or day is open: room left in each page (fillfactor) lets an update
-- put the new row version beside the old one (a HOT update: no index entry,
-- and the old version is pruned from the page without a vacuum), and
-- autovacuum visits these tables after a small share of them changed
-- (the defaults wait for 20 %, which for months of gold is never), so
-- their size on disk stays near their live rows.
DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['gold.ohlcv_5m', 'gold.ohlcv_15m', 'gold.ohlcv_30m',
                             'gold.ohlcv_1h', 'gold.ohlcv_1d',
                             'silver.completeness_hourly'] LOOP
        EXECUTE format(
            'ALTER TABLE %s SET (fillfactor = 70,
                                 autovacuum_vacuum_scale_factor = 0.01,
                                 autovacuum_vacuum_threshold = 1000,
                                 autovacuum_analyze_scale_factor = 0.02)', t);
    END LOOP;
END
$$;

-- Small tables updated on every merge or sweep: vacuumed after a few
-- hundred changes, whatever their size.
ALTER TABLE ops.merge_watermark SET (fillfactor = 50, autovacuum_vacuum_scale_factor = 0,
                                     autovacuum_vacuum_threshold = 200);
ALTER TABLE ops.backfill_pairs SET (fillfactor = 70, autovacuum_vacuum_scale_factor = 0.05,
                                    autovacuum_vacuum_threshold = 200);
ALTER TABLE ops.lake_spool SET (fillfactor = 50, autovacuum_vacuum_scale_factor = 0,
                                autovacuum_vacuum_threshold = 200);
