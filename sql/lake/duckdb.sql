-- The raw lake in DuckDB: every observation klines received, as views.
--
-- Replace {lake} with the lake's root (the bucket and `lake.prefix`):
--   a local directory:  data/lake
--   S3:                 s3://my-bucket/raw/klines
-- For S3, load httpfs and give DuckDB credentials first, e.g.
--   INSTALL httpfs; LOAD httpfs;
--   CREATE SECRET lake (TYPE s3, PROVIDER credential_chain);
-- (an S3-compatible store also needs ENDPOINT '127.0.0.1:9000',
--  URL_STYLE 'path', USE_SSL false in the secret).
--
-- Prices and volumes are decimal strings in the lake, exactly as the
-- exchange sent them; they are cast to DECIMAL(38,18) here, which holds
-- every value klines stores (NUMERIC in PostgreSQL) without rounding.
-- Tested: tests/lake.rs runs this file against a replayed day.

-- Every observation (in-progress updates and finals), with the partition
-- columns of the path (exchange, interval, date, hour); the symbol is a
-- column of each line.
CREATE OR REPLACE VIEW lake_observations AS
SELECT exchange,
       symbol,
       "interval",
       "date",
       "hour",
       interval_seconds,
       interval_start::TIMESTAMPTZ AS interval_start,
       interval_end::TIMESTAMPTZ   AS interval_end,
       is_final,
       event_ts::TIMESTAMPTZ       AS event_ts,
       received_ts::TIMESTAMPTZ    AS received_ts,
       open::DECIMAL(38, 18)         AS open,
       high::DECIMAL(38, 18)         AS high,
       low::DECIMAL(38, 18)          AS low,
       close::DECIMAL(38, 18)        AS close,
       volume::DECIMAL(38, 18)       AS volume,
       quote_volume::DECIMAL(38, 18) AS quote_volume,
       trade_count,
       source,
       payload
  FROM read_json(
         '{lake}/exchange=*/interval=*/date=*/hour=*/*.jsonl.gz',
         format = 'newline_delimited',
         hive_partitioning = true,
         hive_types = {'date': DATE, 'hour': INTEGER},
         columns = {
           kind: 'VARCHAR', symbol: 'VARCHAR', interval_seconds: 'INTEGER',
           interval_start: 'VARCHAR', interval_end: 'VARCHAR',
           is_final: 'BOOLEAN', event_ts: 'VARCHAR', received_ts: 'VARCHAR',
           open: 'VARCHAR', high: 'VARCHAR', low: 'VARCHAR', close: 'VARCHAR',
           volume: 'VARCHAR', quote_volume: 'VARCHAR', trade_count: 'BIGINT',
           vwap: 'VARCHAR', source: 'VARCHAR', payload: 'VARCHAR'
         });

-- The final candle of each minute (the newest final observation, as
-- bronze and `klines lake load` keep it).
CREATE OR REPLACE VIEW lake_finals AS
SELECT *
  FROM lake_observations
 WHERE is_final
QUALIFY row_number() OVER (
          PARTITION BY exchange, symbol, "interval", interval_start
          ORDER BY received_ts DESC) = 1;

-- Frames that did not decode, with the decoder's error.
CREATE OR REPLACE VIEW lake_rejects AS
SELECT exchange, "date", "hour", received_ts::TIMESTAMPTZ AS received_ts, error, payload
  FROM read_json(
         '{lake}/kind=reject/exchange=*/date=*/hour=*/*.jsonl.gz',
         format = 'newline_delimited',
         hive_partitioning = true,
         hive_types = {'date': DATE, 'hour': INTEGER},
         columns = {kind: 'VARCHAR', received_ts: 'VARCHAR', error: 'VARCHAR', payload: 'VARCHAR'});

-- Examples:
--   SELECT exchange, symbol, "date", "hour", count(*) AS observations,
--          count(*) FILTER (WHERE is_final) AS finals
--     FROM lake_observations GROUP BY ALL ORDER BY ALL;
--   SELECT interval_start, open, high, low, close, volume
--     FROM lake_finals WHERE symbol = 'BTCUSDT' ORDER BY interval_start;
