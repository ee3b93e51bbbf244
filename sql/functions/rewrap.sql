-- The current definition of oplog_rewrap. `@schema@` is the oplog's
-- schema, quoted. src/store/migrate/mod.rs says when this file is applied and
-- which rules a change to it follows.

-- Replaces the data of entry p_id, encrypted under p_old_key_id, with p_data
-- encrypted under p_new_key_id: the one change an entry may undergo, which
-- oplog_entry_guard lets through because this function announces it in a
-- transaction-local setting. Returns false, changing nothing, when the entry
-- is gone (trimmed) or no longer under p_old_key_id (another rewrap got there
-- first), and always for an entry under a subject's data key (format 2),
-- whose ciphertext never changes: its key is re-wrapped instead. The caller has checked that p_data decrypts to the same plaintext,
-- under associated data naming p_new_key_id. Runs with the caller's rights.
CREATE OR REPLACE FUNCTION @schema@.oplog_rewrap(p_id bigint, p_old_key_id text, p_new_key_id text, p_data bytea)
RETURNS boolean LANGUAGE plpgsql SET search_path = @schema@, pg_temp AS $body$
DECLARE
    n bigint;
BEGIN
    PERFORM pg_catalog.set_config('oplog.rewrap', pg_catalog.json_build_array(p_id, p_old_key_id, p_new_key_id)::text, true);
    UPDATE @schema@.oplog_entry SET key_id = p_new_key_id, data = p_data
     WHERE id = p_id AND key_id = p_old_key_id AND format <> 2;
    GET DIAGNOSTICS n = ROW_COUNT;
    PERFORM pg_catalog.set_config('oplog.rewrap', '', true);
    RETURN n > 0;
END;
$body$;
