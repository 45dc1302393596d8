-- Where a venue publishes no listing time (Bybit's spot instruments,
-- Kraken, Coinbase), the backfiller records the pair's first traded minute
-- as REST showed it: the minute whose candle follows minutes REST confirmed
-- empty, with no candle of the pair before it in bronze or silver.
-- Completeness expects no minute before it, as it expects none before a
-- published `listed_at` (which wins where both are known). Unlike
-- `listed_at` it never bounds a backfill: a later backfill that finds an
-- older candle moves it back.
ALTER TABLE ref.instruments ADD COLUMN IF NOT EXISTS first_traded timestamptz;
COMMENT ON COLUMN ref.instruments.first_traded IS
    'first traded minute as REST showed it, where the venue publishes no listing time';
