-- A run ($1) finished: its counts.
UPDATE ops.runs SET finished_at = now(), status = 'ok', keys = $2, inserted = $3,
       updated = $4, unchanged = $5
 WHERE id = $1
