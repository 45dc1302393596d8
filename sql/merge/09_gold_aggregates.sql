-- The columns of a gold bucket from the rows `x` of the level below, for
-- 09_gold_agg_changed.sql and 09_gold_agg_hour.sql: first open, max high, min low,
-- last close, summed volumes and trades, vwap = Σquote / Σbase, minutes
-- present. The open of the first row and the close of the last are the
-- [start, price] pair with the smallest (largest) start, a plain min/max
-- (array_agg with ORDER BY would sort every bucket on its own).
(min(ARRAY[extract(epoch FROM x.start), x.open]))[2]  AS open,
max(x.high)                                           AS high,
min(x.low)                                            AS low,
(max(ARRAY[extract(epoch FROM x.start), x.close]))[2] AS close,
sum(x.volume)                                         AS volume,
sum(x.quote_volume)                                   AS quote_volume,
sum(x.trade_count)                                    AS trade_count,
sum(x.quote_volume) / nullif(sum(x.volume), 0)        AS vwap,
sum(x.minutes)                                        AS minutes_present
