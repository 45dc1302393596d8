-- The login Grafana reads silver and gold with: a member of klines_reader
-- (sql/roles.sql), nothing more. Run after roles.sql with the password as a
-- psql variable:  psql -v pw="$READER_PASSWORD" -f deploy/grafana-role.sql
SELECT 'CREATE ROLE grafana LOGIN IN ROLE klines_reader'
 WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'grafana') \gexec
ALTER ROLE grafana PASSWORD :'pw';
