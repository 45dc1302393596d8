-- After 05_silver_fresh.sql: the pairs of this connection's range of
-- symbols go to merge_changed once each, at the hour's start. The caller
-- then recomputes completeness and every gold bucket of the hour for them.
-- Every silver row of the range was just inserted, so the pairs are read
-- from silver's key index, one descent per pair (a skip scan: 5,000
-- look-ups instead of returning and grouping 300,000 inserted rows).
-- $1: the hour's start; the shard placeholder on s: the range of symbols.
WITH RECURSIVE pairs AS (
    (SELECT s.exchange, s.symbol
       FROM {silver} s
      WHERE true {shard:s}
      ORDER BY s.exchange, s.symbol
      LIMIT 1)
    UNION ALL
    SELECT n.exchange, n.symbol
      FROM pairs p
     CROSS JOIN LATERAL (
           SELECT s.exchange, s.symbol
             FROM {silver} s
            WHERE (s.exchange, s.symbol) > (p.exchange, p.symbol) {shard:s}
            ORDER BY s.exchange, s.symbol
            LIMIT 1) n
)
INSERT INTO merge_changed (exchange, symbol, bucket_start)
SELECT exchange, symbol, $1 FROM pairs;
