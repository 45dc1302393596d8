-- The raw lake in Amazon Athena: one external table over the JSONL.gz
-- objects, with partition projection (no crawler, no MSCK REPAIR: Athena
-- computes the partitions from the key layout).
--
-- Replace my-bucket and raw/klines with `lake.bucket` and `lake.prefix`.
-- `exchange`, `interval`, `date` and `hour` are partition columns (from the
-- key), so `exchange` is not repeated among the data columns; `symbol` is a
-- data column (one object holds every pair of an exchange and hour). Prices and volumes are strings, the
-- exchange's exact decimals; cast them to DECIMAL(38,18) in queries.
-- Not run by the test suite (no Athena here): the DuckDB snippet beside it
-- is, against the same layout.

CREATE EXTERNAL TABLE IF NOT EXISTS klines_lake (
  kind             string,
  symbol           string,
  interval_seconds int,
  interval_start   string,
  interval_end     string,
  is_final         boolean,
  event_ts         string,
  received_ts      string,
  open             string,
  high             string,
  low              string,
  close            string,
  volume           string,
  quote_volume     string,
  trade_count      bigint,
  vwap             string,
  source           string,
  payload          string
)
PARTITIONED BY (
  exchange   string,
  `interval` string,
  `date`     string,
  `hour`     string
)
ROW FORMAT SERDE 'org.openx.data.jsonserde.JsonSerDe'
WITH SERDEPROPERTIES ('ignore.malformed.json' = 'true')
STORED AS INPUTFORMAT 'org.apache.hadoop.mapred.TextInputFormat'
OUTPUTFORMAT 'org.apache.hadoop.hive.ql.io.HiveIgnoreKeyTextOutputFormat'
LOCATION 's3://my-bucket/raw/klines/'
TBLPROPERTIES (
  'projection.enabled'              = 'true',
  'projection.exchange.type'        = 'enum',
  'projection.exchange.values'      = 'binance,kraken,coinbase,okx,bybit',
  'projection.interval.type'        = 'enum',
  'projection.interval.values'      = '1m',
  'projection.date.type'            = 'date',
  'projection.date.format'          = 'yyyy-MM-dd',
  'projection.date.range'           = '2017-01-01,NOW',
  'projection.date.interval'        = '1',
  'projection.date.interval.unit'   = 'DAYS',
  'projection.hour.type'            = 'integer',
  'projection.hour.range'           = '0,23',
  'projection.hour.digits'          = '2',
  'storage.location.template'       =
    's3://my-bucket/raw/klines/exchange=${exchange}/interval=${interval}/date=${date}/hour=${hour}/'
);

-- The final candles of one pair and day (the newest final observation of
-- each minute), with exact decimals:
--
-- SELECT interval_start,
--        CAST(open AS DECIMAL(38,18))   AS open,
--        CAST(high AS DECIMAL(38,18))   AS high,
--        CAST(low AS DECIMAL(38,18))    AS low,
--        CAST(close AS DECIMAL(38,18))  AS close,
--        CAST(volume AS DECIMAL(38,18)) AS volume
--   FROM (SELECT *, row_number() OVER (PARTITION BY interval_start ORDER BY received_ts DESC) AS rn
--           FROM klines_lake
--          WHERE exchange = 'binance' AND symbol = 'BTCUSDT'
--            AND "date" = '2026-11-21' AND is_final)
--  WHERE rn = 1
--  ORDER BY interval_start;
