-- The current definition of oplog_append. `@schema@` is the oplog's
-- schema, quoted. src/store/migrate/mod.rs says when this file is applied and
-- which rules a change to it follows.

-- Appends one entry: redeems the ticket with a compare-and-swap on its
-- version and chain head, inserts the entry and its metadata, and notifies
-- followers when asked. When the ticket is elsewhere, nothing is written and
-- its version and chain come back (locked, and created when missing, with
-- p_wait). When the entry's catalog is not stored, nothing is written and
-- o_missing_catalog is true. Runs with the owner's rights, so that writers
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
