DROP TABLE IF EXISTS oplog_metadata;
DROP TABLE IF EXISTS oplog_entry;
DROP TABLE IF EXISTS oplog_ticket;
DROP FUNCTION IF EXISTS oplog_reject_update();
DROP FUNCTION IF EXISTS oplog_append(uuid, text, bigint, bytea, smallint, text, bytea, bytea, bytea, text[], text[], boolean);
