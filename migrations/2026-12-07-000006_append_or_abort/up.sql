-- oplog_append_or_abort: an append that raises serialization_failure where
-- oplog_append answers "moved" or "catalog missing", for writers that send
-- the append and COMMIT in one round trip. Defined in
-- sql/functions/append.sql, applied with the function set; that file grants
-- it to every role that may execute oplog_append. Nothing else changes
-- (and diesel refuses a migration without a statement).
SELECT 1;
