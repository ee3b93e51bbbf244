-- The current definitions of the subject key functions. `@schema@` is the
-- oplog's schema, quoted. src/store/migrate/mod.rs says when this file is
-- applied and which rules a change to it follows.
--
-- oplog_subject_key rows change only through these functions, which run
-- with the owner's rights: no role is granted more than SELECT on the
-- table.

-- A writer's lookup of a subject's data key, in the writer's transaction:
-- creates the key from the candidate the caller sends (p_key_id, wrapped by
-- the keyring key p_wrapping_key_id) when the subject has none, and locks
-- the row FOR SHARE until the transaction ends, so that a shred waits for
-- every open transaction writing the subject and no entry is written under
-- a key being destroyed. Returns the subject's key id and wrapped key (the
-- candidate's when it was created), or a NULL wrapped key when the subject
-- was shredded.
CREATE OR REPLACE FUNCTION @schema@.oplog_subject_key(
    p_subject text, p_key_id text, p_wrapped bytea, p_wrapping_key_id text,
    OUT o_key_id text, OUT o_wrapped bytea, OUT o_wrapping_key_id text)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = @schema@, pg_temp AS $body$
BEGIN
    SELECT k.key_id, k.wrapped, k.wrapping_key_id INTO o_key_id, o_wrapped, o_wrapping_key_id
      FROM @schema@.oplog_subject_key k WHERE k.subject = p_subject FOR SHARE;
    IF FOUND THEN
        RETURN;
    END IF;
    INSERT INTO @schema@.oplog_subject_key (subject, key_id, wrapped, wrapping_key_id)
    VALUES (p_subject, p_key_id, p_wrapped, p_wrapping_key_id)
    ON CONFLICT (subject) DO NOTHING;
    -- Created here, or by a transaction that committed meanwhile (whose
    -- insert this one waited for).
    SELECT k.key_id, k.wrapped, k.wrapping_key_id INTO o_key_id, o_wrapped, o_wrapping_key_id
      FROM @schema@.oplog_subject_key k WHERE k.subject = p_subject FOR SHARE;
END;
$body$;

REVOKE EXECUTE ON FUNCTION @schema@.oplog_subject_key(text, text, bytea, text) FROM PUBLIC;

-- Re-wraps a subject's data key under another keyring key (key rotation):
-- replaces the wrapped key of p_subject, whose key is p_key_id wrapped by
-- p_old_wrapping_key_id, with p_wrapped under p_new_wrapping_key_id. Never
-- destroys a key (p_wrapped must be given) and never revives a shredded
-- one. Returns false, changing nothing, when the row is no longer as
-- described (shredded, or re-wrapped by someone else).
CREATE OR REPLACE FUNCTION @schema@.oplog_rewrap_subject_key(
    p_subject text, p_key_id text, p_old_wrapping_key_id text,
    p_new_wrapping_key_id text, p_wrapped bytea)
RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = @schema@, pg_temp AS $body$
DECLARE
    n bigint;
BEGIN
    IF p_wrapped IS NULL OR p_new_wrapping_key_id IS NULL THEN
        RAISE EXCEPTION 'oplog: a re-wrapped subject key needs its new wrapped key and wrapping key id'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    UPDATE @schema@.oplog_subject_key
       SET wrapped = p_wrapped, wrapping_key_id = p_new_wrapping_key_id
     WHERE subject = p_subject AND key_id = p_key_id
       AND wrapping_key_id = p_old_wrapping_key_id AND wrapped IS NOT NULL;
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n > 0;
END;
$body$;

REVOKE EXECUTE ON FUNCTION @schema@.oplog_rewrap_subject_key(text, text, text, text, bytea) FROM PUBLIC;

-- Destroys a subject's data key: the wrapped key becomes NULL, and when and
-- by which session user are recorded. Waits for every open transaction
-- writing the subject (they hold its row FOR SHARE), and holds the row
-- until the caller's transaction ends, so no entry of the subject is
-- written meanwhile. Returns the key id and the wrapped key as it was, so
-- that the caller can still read the subject's entries in this transaction
-- to write the tombstones; a rollback keeps the key. No row when the
-- subject has no key; a NULL wrapped key, and who shredded it, when it
-- was shredded already.
CREATE OR REPLACE FUNCTION @schema@.oplog_shred(
    p_subject text,
    OUT o_key_id text, OUT o_wrapped bytea, OUT o_wrapping_key_id text, OUT o_by text)
RETURNS SETOF record
LANGUAGE plpgsql SECURITY DEFINER SET search_path = @schema@, pg_temp AS $body$
BEGIN
    SELECT k.key_id, k.wrapped, k.wrapping_key_id INTO o_key_id, o_wrapped, o_wrapping_key_id
      FROM @schema@.oplog_subject_key k WHERE k.subject = p_subject FOR UPDATE;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    IF o_wrapped IS NULL THEN
        -- Shredded before: who did it.
        SELECT k.shredded_by INTO o_by FROM @schema@.oplog_subject_key k WHERE k.subject = p_subject;
    ELSE
        o_by := session_user;
        UPDATE @schema@.oplog_subject_key
           SET wrapped = NULL, wrapping_key_id = NULL, shredded_at = pg_catalog.now(), shredded_by = o_by
         WHERE subject = p_subject;
    END IF;
    RETURN NEXT;
END;
$body$;

REVOKE EXECUTE ON FUNCTION @schema@.oplog_shred(text) FROM PUBLIC;

-- Whoever may append may look up and create subjects' keys; whoever may
-- rewrap entries may re-wrap subjects' keys. Shredding is granted on its
-- own (`oplog grant shredder`).
DO $grants$
DECLARE
    r text;
BEGIN
    FOR r IN
        SELECT DISTINCT a.grantee::regrole::text
          FROM pg_catalog.pg_proc p, pg_catalog.aclexplode(p.proacl) a
         WHERE p.oid = '@schema@.oplog_append(uuid, text, bigint, bytea, smallint, text, bytea, bytea, bytea, text[], text[], boolean, bytea, boolean)'::regprocedure
           AND a.privilege_type = 'EXECUTE' AND a.grantee <> p.proowner AND a.grantee <> 0
    LOOP
        EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION @schema@.oplog_subject_key(text, text, bytea, text) TO %s', r);
    END LOOP;
    FOR r IN
        SELECT DISTINCT a.grantee::regrole::text
          FROM pg_catalog.pg_proc p, pg_catalog.aclexplode(p.proacl) a
         WHERE p.oid = '@schema@.oplog_rewrap(bigint, text, text, bytea)'::regprocedure
           AND a.privilege_type = 'EXECUTE' AND a.grantee <> p.proowner AND a.grantee <> 0
    LOOP
        EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION @schema@.oplog_rewrap_subject_key(text, text, text, text, bytea) TO %s', r);
    END LOOP;
END
$grants$;
