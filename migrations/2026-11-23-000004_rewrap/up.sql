-- Re-encryption under a new key ("rewrap"): the one change an entry may
-- undergo. Only its key_id and data may change, and only inside
-- oplog_rewrap, which announces the exact change (entry id, old key id, new
-- key id) in a transaction-local setting that the entry's trigger checks.
-- Every other UPDATE of an entry is still rejected, and so is any change to
-- another column, including columns added by later migrations.
--
-- The guard is against accidents and against tools that do not know the
-- rules, not against someone who can run arbitrary SQL as the table's
-- owner: the authenticated encryption is what makes a changed key_id or
-- data detectable (the new ciphertext must authenticate under the
-- associated data that names the new key id, which only a key holder can
-- produce), and the chain, which covers neither, still proves the rest.

CREATE FUNCTION oplog_entry_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('oplog.rewrap', true) IS DISTINCT FROM
           json_build_array(OLD.id, OLD.key_id, NEW.key_id)::text THEN
        RAISE EXCEPTION 'oplog: oplog_entry rows are immutable; entries cannot be updated (re-encrypt them with `oplog keys rewrap`)'
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    IF (to_jsonb(NEW) - 'key_id' - 'data') IS DISTINCT FROM (to_jsonb(OLD) - 'key_id' - 'data') THEN
        RAISE EXCEPTION 'oplog: oplog_entry rows are immutable; a rewrap may change only key_id and data'
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    RETURN NEW;
END;
$$;

DROP TRIGGER oplog_entry_immutable ON oplog_entry;
CREATE TRIGGER oplog_entry_immutable BEFORE UPDATE ON oplog_entry
    FOR EACH ROW EXECUTE FUNCTION oplog_entry_guard();

-- Replaces the data of entry p_id, encrypted under p_old_key_id, with
-- p_data encrypted under p_new_key_id. Returns false, changing nothing, when
-- the entry is gone (trimmed) or no longer under p_old_key_id (another
-- rewrap got there first). The caller has checked that p_data decrypts to
-- the same plaintext, under associated data naming p_new_key_id.
CREATE FUNCTION oplog_rewrap(p_id bigint, p_old_key_id text, p_new_key_id text, p_data bytea)
RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    n bigint;
BEGIN
    PERFORM set_config('oplog.rewrap', json_build_array(p_id, p_old_key_id, p_new_key_id)::text, true);
    UPDATE oplog_entry SET key_id = p_new_key_id, data = p_data
     WHERE id = p_id AND key_id = p_old_key_id;
    GET DIAGNOSTICS n = ROW_COUNT;
    PERFORM set_config('oplog.rewrap', '', true);
    RETURN n > 0;
END;
$$;
