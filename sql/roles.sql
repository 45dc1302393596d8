-- Least-privilege roles for klines. Run once per database as its owner
-- (after `klines migrate`), e.g.  psql "$DATABASE_URL" -f sql/roles.sql
-- then give each role a login user:
--   CREATE ROLE klines_svc LOGIN PASSWORD '…' IN ROLE klines_ingest, klines_merge, klines_reader;
--   CREATE ROLE looker     LOGIN PASSWORD '…' IN ROLE klines_reader;
-- `klines ingest` logs in as klines_svc (not the owner): it writes bronze,
-- merges, backfills and keeps partitions and retention through the
-- functions granted below, and its HTTP API reads as klines_reader
-- (database.api_role); `klines migrate` runs as the owner
-- (database.migrate_url).
-- Idempotent: safe to run again after new migrations.
--
--   klines_ingest  writes bronze (WebSocket sink, REST backfill, lake reload)
--   klines_merge   reads bronze, writes silver, gold and the ops run log
--   klines_reader  reads silver, gold and the analyst views, nothing else
-- (`klines ingest` runs the scheduled merge too: give its user both
-- klines_ingest and klines_merge, or disable [merge] and run merges apart.)

DO $$
DECLARE
    r text;
BEGIN
    FOREACH r IN ARRAY ARRAY['klines_ingest', 'klines_merge', 'klines_reader'] LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r) THEN
            EXECUTE format('CREATE ROLE %I NOLOGIN', r);
        END IF;
    END LOOP;
END
$$;

-- Reader: silver and gold, read only; and what the HTTP API shows beside
-- them (the pairs, the backfill jobs and pairs). The service's API
-- connections read with these rights only (database.api_role).
GRANT USAGE ON SCHEMA silver, gold TO klines_reader;
GRANT SELECT ON ALL TABLES IN SCHEMA silver, gold TO klines_reader;
ALTER DEFAULT PRIVILEGES IN SCHEMA silver, gold GRANT SELECT ON TABLES TO klines_reader;
GRANT USAGE ON SCHEMA ref, ops TO klines_reader;
GRANT SELECT ON ref.instruments, ops.backfill_jobs, ops.backfill_pairs, ops.archive_files,
      ops.archive_audit, ops.archive_audit_minutes, ops.source_check TO klines_reader;

-- Ingest: append to bronze, create the partitions it writes into.
GRANT USAGE ON SCHEMA bronze, ops TO klines_ingest;
-- Name lookup only (no table rights): writers create the silver partition of
-- every hour they touch along with bronze's.
GRANT USAGE ON SCHEMA silver TO klines_ingest;
GRANT INSERT ON bronze.ohlcv_native, bronze.empty_minutes TO klines_ingest;
GRANT SELECT ON bronze.ohlcv_native, bronze.empty_minutes TO klines_ingest;
GRANT USAGE ON SEQUENCE bronze.ohlcv_native_id_seq TO klines_ingest;
GRANT EXECUTE ON FUNCTION ops.ensure_hourly_partitions(regclass, timestamptz, timestamptz) TO klines_ingest;
-- The backfiller (part of ingest): its job log, listings, unrecoverable gaps,
-- and gap detection, which reads silver.
GRANT USAGE ON SCHEMA ref TO klines_ingest;
GRANT SELECT, INSERT, UPDATE ON ref.instruments, ops.backfill_jobs, ops.backfill_pairs,
      ops.unrecoverable_gaps, ops.archive_files, ops.archive_audit, ops.archive_audit_minutes,
      ops.archive_preferred TO klines_ingest;
GRANT DELETE ON ops.archive_audit_minutes TO klines_ingest;
GRANT SELECT, INSERT, UPDATE ON ops.source_check, ops.source_mismatch TO klines_ingest;
GRANT USAGE ON SEQUENCE ops.backfill_jobs_id_seq TO klines_ingest;
GRANT SELECT ON silver.fact_ohlcv TO klines_ingest;

-- Merge: read bronze; write silver, gold, completeness and the run log.
GRANT USAGE ON SCHEMA bronze, silver, gold, ops, ref TO klines_merge;
GRANT SELECT ON ref.instruments, ops.unrecoverable_gaps, ops.archive_preferred TO klines_merge;
GRANT SELECT ON ALL TABLES IN SCHEMA bronze TO klines_merge;
-- The merge reads and writes each hour's partition by name, so partitions
-- created later (by ops.ensure_hourly_partitions, as the owner) need the
-- grants too.
ALTER DEFAULT PRIVILEGES IN SCHEMA bronze GRANT SELECT ON TABLES TO klines_merge;
GRANT SELECT, INSERT, UPDATE ON ALL TABLES IN SCHEMA silver, gold TO klines_merge;
GRANT SELECT, INSERT, UPDATE, DELETE ON ops.source_mismatch TO klines_merge;
GRANT SELECT, INSERT, UPDATE ON ops.runs, ops.merge_watermark TO klines_merge;
GRANT USAGE ON SEQUENCE ops.runs_id_seq TO klines_merge;
GRANT EXECUTE ON FUNCTION ops.ensure_hourly_partitions(regclass, timestamptz, timestamptz) TO klines_merge;
ALTER DEFAULT PRIVILEGES IN SCHEMA silver, gold GRANT SELECT, INSERT, UPDATE ON TABLES TO klines_merge;
DO $$ BEGIN EXECUTE format('GRANT TEMPORARY ON DATABASE %I TO klines_merge', current_database()); END $$;

-- Retention (the scheduler leader, as the merge's role): drops merged and
-- uploaded bronze hours and prunes by age through SECURITY DEFINER
-- functions that check before they delete; reads what the lake spools hold.
-- Every instance records what its lake spool holds.
GRANT SELECT, INSERT, UPDATE ON ops.lake_spool TO klines_ingest;
GRANT SELECT ON ops.lake_spool TO klines_merge;
GRANT EXECUTE ON FUNCTION ops.drop_bronze_hour(timestamptz, xid8), ops.drop_silver_hour(timestamptz),
      ops.prune_gold(timestamptz), ops.prune_ops(timestamptz) TO klines_merge;

-- The service (klines_ingest + klines_merge) checks at start whether the
-- schema needs a migration, which only the owner applies (`klines migrate`).
GRANT SELECT ON public._sqlx_migrations TO klines_ingest, klines_merge;

-- Folding silver's old hours into days and months, and the optional silver
-- window over partitions of any size (the scheduler leader, as the merge's
-- role).
GRANT EXECUTE ON FUNCTION ops.fold_silver(timestamptz, timestamptz, text),
      ops.drop_silver_partition(text, timestamptz, timestamptz) TO klines_merge;
