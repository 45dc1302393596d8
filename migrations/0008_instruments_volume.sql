-- The instruments refresh stores each pair's last 24 h quote volume (from
-- the exchange's tickers, when `select.top` asked for it), so a start while
-- the exchange's REST is down can still select from the last known list.
ALTER TABLE ref.instruments ADD COLUMN IF NOT EXISTS quote_volume_24h numeric;
