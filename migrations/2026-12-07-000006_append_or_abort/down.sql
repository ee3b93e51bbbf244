-- Back to the previous migration: no append that aborts.
DROP FUNCTION IF EXISTS oplog_append_or_abort(uuid, text, bigint, bytea, smallint, text, bytea, bytea, bytea, text[], text[], bytea, boolean);
