-- The current definition of the triggers' functions. `@schema@` is the oplog's
-- schema, quoted. src/store/migrate/mod.rs says when this file is applied and
-- which rules a change to it follows.

-- They run with the rights of whoever changes a row.

-- Stored catalogs and metadata rows are never updated.
CREATE OR REPLACE FUNCTION @schema@.oplog_reject_update() RETURNS trigger
LANGUAGE plpgsql SET search_path = @schema@, pg_temp AS $body$
BEGIN
    RAISE EXCEPTION 'oplog: % rows are immutable; entries cannot be updated', TG_TABLE_NAME
        USING ERRCODE = 'integrity_constraint_violation';
END;
$body$;

-- Entries, metadata and catalogs are deleted only by oplog_trim, which sets
-- a transaction-local flag.
CREATE OR REPLACE FUNCTION @schema@.oplog_reject_delete() RETURNS trigger
LANGUAGE plpgsql SET search_path = @schema@, pg_temp AS $body$
BEGIN
    IF pg_catalog.current_setting('oplog.trimming', true) IS DISTINCT FROM 'on' THEN
        RAISE EXCEPTION 'oplog: % rows can only be deleted by trimming (oplog trim)', TG_TABLE_NAME
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    RETURN OLD;
END;
$body$;

-- An entry changes only through oplog_rewrap, and then only its key_id and
-- data: every other update, and any change to another column (including
-- columns added later), is rejected.
CREATE OR REPLACE FUNCTION @schema@.oplog_entry_guard() RETURNS trigger
LANGUAGE plpgsql SET search_path = @schema@, pg_temp AS $body$
BEGIN
    IF pg_catalog.current_setting('oplog.rewrap', true) IS DISTINCT FROM
           pg_catalog.json_build_array(OLD.id, OLD.key_id, NEW.key_id)::text THEN
        RAISE EXCEPTION 'oplog: oplog_entry rows are immutable; entries cannot be updated (re-encrypt them with `oplog keys rewrap`)'
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    IF (pg_catalog.to_jsonb(NEW) - 'key_id' - 'data') IS DISTINCT FROM (pg_catalog.to_jsonb(OLD) - 'key_id' - 'data') THEN
        RAISE EXCEPTION 'oplog: oplog_entry rows are immutable; a rewrap may change only key_id and data'
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    RETURN NEW;
END;
$body$;
