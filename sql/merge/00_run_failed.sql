-- A run ($1) failed: why ($2). Its job's watermark stays, so its hours come back.
UPDATE ops.runs SET finished_at = now(), status = 'failed', error = $2 WHERE id = $1
