-- Whether the hour's silver has no row in this connection's range of
-- symbols: a bulk merge then inserts every winner straight.
SELECT NOT EXISTS (SELECT 1 FROM {silver} s WHERE true {shard:s})
