-- The hour's transaction's settings.
-- Sorts and hashes of a busy hour (300k rows) stay in memory, and the hours
-- a merge reads are recent, so cached: an index read costs little more than
-- a sequential one (the default 4x keeps PostgreSQL from reading bronze in
-- key order, which spares the merge a sort).
SET LOCAL work_mem = '128MB';
SET LOCAL random_page_cost = 1.1;
-- The merge's statements are short and their plans small, but their cost
-- estimates grow with the tables (months of gold): past jit_above_cost
-- PostgreSQL would compile each of them, 30 ms and more, every merge.
SET LOCAL jit = off;
