-- A run begins: recorded in ops.runs ($1 kind, $2/$3 the hours it covers).
INSERT INTO ops.runs (kind, range_from, range_to) VALUES ($1, $2, $3) RETURNING id
