DROP FUNCTION IF EXISTS oplog_rewrap(bigint, text, text, bytea);
DROP TRIGGER IF EXISTS oplog_entry_immutable ON oplog_entry;
CREATE TRIGGER oplog_entry_immutable BEFORE UPDATE ON oplog_entry
    FOR EACH ROW EXECUTE FUNCTION oplog_reject_update();
DROP FUNCTION IF EXISTS oplog_entry_guard();
