-- Which process ran a merge: the session's application_name, which
-- `klines ingest` sets to "klines <host> pid <pid> shard <i>/<N>". With
-- several shards on one database, operators (and the tests) see that one
-- leader at a time ran the scheduled merges.
ALTER TABLE ops.runs
    ADD COLUMN IF NOT EXISTS instance text DEFAULT current_setting('application_name', true);
