-- The current definition of oplog_append. `@schema@` is the oplog's
-- schema, quoted. src/store/migrate/mod.rs says when this file is applied and
-- which rules a change to it follows.

-- Appends one entry: redeems the ticket with a compare-and-swap on its
-- version and chain head, inserts the entry and its metadata, and notifies
-- followers when asked. When the ticket is elsewhere, nothing is written and
-- its version and chain come back (locked, and created when missing, with
-- p_wait). When the entry's catalog is not stored, nothing is written and
-- o_missing_catalog is true. An entry under a subject's key is refused
-- when the key is missing or shredded. Runs with the owner's rights, so that writers
-- need no INSERT on entries or metadata and no UPDATE on tickets: the only
-- entry a writer can add is the next one of an aggregate, with its own
-- metadata.
CREATE OR REPLACE FUNCTION @schema@.oplog_append(
    p_uuid uuid, p_aggregate text, p_seq bigint, p_prev_chain bytea,
    p_format smallint, p_key_id text, p_data bytea, p_digest bytea,
    p_chain bytea, p_keys text[], p_values text[], p_wait boolean,
    p_catalog bytea, p_notify boolean,
    OUT o_entry_id bigint, OUT o_version bigint, OUT o_chain bytea,
    OUT o_missing_catalog boolean)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = @schema@, pg_temp AS $body$
BEGIN
    o_missing_catalog := false;
    -- An entry under a subject's data key (format 2) needs that key to
    -- exist and not be shredded; the row is held FOR SHARE until the
    -- transaction ends, as oplog_subject_key holds it, so that a shred
    -- waits for this entry.
    IF p_format = 2 THEN
        PERFORM 1 FROM @schema@.oplog_subject_key k
          WHERE k.key_id = p_key_id AND k.wrapped IS NOT NULL FOR SHARE;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'oplog: subject key % of aggregate %''s entry does not exist or was shredded; nothing was written', p_key_id, p_aggregate
                USING ERRCODE = 'integrity_constraint_violation';
        END IF;
    END IF;
    IF p_catalog IS NOT NULL
       AND NOT EXISTS (SELECT 1 FROM @schema@.oplog_catalog c WHERE c.digest = p_catalog) THEN
        o_missing_catalog := true;
        RETURN;
    END IF;
    UPDATE @schema@.oplog_ticket SET version = p_seq, chain = p_chain
     WHERE name = p_aggregate AND version = p_seq - 1 AND chain = p_prev_chain;
    IF FOUND THEN
        INSERT INTO @schema@.oplog_entry (entry_uuid, aggregate_name, seq, format, key_id, data, digest, chain, catalog)
        VALUES (p_uuid, p_aggregate, p_seq, p_format, p_key_id, p_data, p_digest, p_chain, p_catalog)
        RETURNING id INTO o_entry_id;
        -- unnest of two arrays is syntax, expanded only when unqualified;
        -- functions are never looked up in pg_temp.
        INSERT INTO @schema@.oplog_metadata (entry_id, ordinal, key, value)
        SELECT o_entry_id, u.ord - 1, u.k, u.v
          FROM unnest(p_keys, p_values) WITH ORDINALITY AS u(k, v, ord);
        IF p_notify THEN
            PERFORM pg_catalog.pg_notify('oplog_entry', p_aggregate);
        END IF;
        o_version := p_seq;
        o_chain := p_chain;
        RETURN;
    END IF;
    IF p_wait THEN
        SELECT t.version, t.chain INTO o_version, o_chain
          FROM @schema@.oplog_ticket t WHERE t.name = p_aggregate FOR UPDATE;
        IF NOT FOUND THEN
            INSERT INTO @schema@.oplog_ticket (name) VALUES (p_aggregate) ON CONFLICT DO NOTHING;
            SELECT t.version, t.chain INTO o_version, o_chain
              FROM @schema@.oplog_ticket t WHERE t.name = p_aggregate FOR UPDATE;
        END IF;
    ELSE
        SELECT t.version, t.chain INTO o_version, o_chain
          FROM @schema@.oplog_ticket t WHERE t.name = p_aggregate;
    END IF;
END;
$body$;

-- Running with the owner's rights, it is for the roles it is granted to.
REVOKE EXECUTE ON FUNCTION @schema@.oplog_append(uuid, text, bigint, bytea, smallint, text, bytea, bytea, bytea, text[], text[], boolean, bytea, boolean) FROM PUBLIC;

-- Appends one entry as oplog_append does, for a caller that sends COMMIT in
-- the same round trip: when the entry cannot be written as sealed (its
-- ticket moved, or its catalog is not stored), it raises
-- serialization_failure instead of answering, so that the transaction is
-- aborted and the COMMIT behind it rolls back. Never waits for the ticket:
-- the caller sealed after a position it knows, and retries the whole
-- transaction (with a plain write) when that position was stale.
CREATE OR REPLACE FUNCTION @schema@.oplog_append_or_abort(
    p_uuid uuid, p_aggregate text, p_seq bigint, p_prev_chain bytea,
    p_format smallint, p_key_id text, p_data bytea, p_digest bytea,
    p_chain bytea, p_keys text[], p_values text[], p_catalog bytea,
    p_notify boolean)
RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = @schema@, pg_temp AS $body$
DECLARE
    a record;
BEGIN
    SELECT * INTO a FROM @schema@.oplog_append(p_uuid, p_aggregate, p_seq, p_prev_chain,
        p_format, p_key_id, p_data, p_digest, p_chain, p_keys, p_values, false,
        p_catalog, p_notify);
    IF a.o_entry_id IS NOT NULL THEN
        RETURN a.o_entry_id;
    END IF;
    IF a.o_missing_catalog THEN
        RAISE EXCEPTION 'oplog: the catalog of aggregate %''s entry is not stored; nothing was written', p_aggregate
            USING ERRCODE = 'serialization_failure';
    END IF;
    RAISE EXCEPTION 'oplog: the ticket of aggregate % is at version %, not %; nothing was written',
        -- COALESCE is syntax, not a function looked up on the search_path.
        p_aggregate, COALESCE(a.o_version::text, 'none (no ticket)'), p_seq - 1
        USING ERRCODE = 'serialization_failure';
END;
$body$;

REVOKE EXECUTE ON FUNCTION @schema@.oplog_append_or_abort(uuid, text, bigint, bytea, smallint, text, bytea, bytea, bytea, text[], text[], bytea, boolean) FROM PUBLIC;

-- Whoever may append may append and commit in one round trip.
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
        EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION @schema@.oplog_append_or_abort(uuid, text, bigint, bytea, smallint, text, bytea, bytea, bytea, text[], text[], bytea, boolean) TO %s', r);
    END LOOP;
END
$grants$;
