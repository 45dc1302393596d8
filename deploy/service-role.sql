-- The login `klines ingest` runs as: a member of klines_ingest and
-- klines_merge (it writes bronze, merges, backfills, keeps partitions and
-- retention through the functions granted to them) and of klines_reader
-- (its HTTP API reads as that role: database.api_role). Not the owner, not
-- a superuser: it cannot change the schema; `klines migrate` runs as the
-- owner. Run after roles.sql with the password as a psql variable:
--   psql -v pw="$SERVICE_PASSWORD" -f deploy/service-role.sql
SELECT 'CREATE ROLE klines_svc LOGIN'
 WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'klines_svc') \gexec
GRANT klines_ingest, klines_merge, klines_reader TO klines_svc;
ALTER ROLE klines_svc PASSWORD :'pw';
