-- Consumers: replicas that follow this log. Trimming never deletes an entry
-- a registered consumer has not applied.
CREATE TABLE oplog_consumer (
    name          text PRIMARY KEY CHECK (length(name) BETWEEN 1 AND 256),
    registered_at timestamptz NOT NULL DEFAULT now(),
    -- Last time the consumer reported, and last time it advanced.
    seen_at       timestamptz NOT NULL DEFAULT now(),
    progressed_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE oplog_consumer_position (
    consumer       text NOT NULL REFERENCES oplog_consumer (name) ON DELETE CASCADE,
    aggregate_name text NOT NULL,
    seq            bigint NOT NULL CHECK (seq >= 0),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, aggregate_name)
);

-- Entries are deleted only by trimming: oplog_trim sets a transaction-local
-- flag that these triggers check. (Least privilege does the rest: a writer
-- role has no DELETE privilege at all.)
CREATE FUNCTION oplog_reject_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('oplog.trimming', true) IS DISTINCT FROM 'on' THEN
        RAISE EXCEPTION 'oplog: % rows can only be deleted by trimming (oplog trim)', TG_TABLE_NAME
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    RETURN OLD;
END;
$$;

CREATE TRIGGER oplog_entry_no_delete BEFORE DELETE ON oplog_entry
    FOR EACH ROW EXECUTE FUNCTION oplog_reject_delete();

CREATE TRIGGER oplog_metadata_no_delete BEFORE DELETE ON oplog_metadata
    FOR EACH ROW EXECUTE FUNCTION oplog_reject_delete();

CREATE TRIGGER oplog_catalog_no_delete BEFORE DELETE ON oplog_catalog
    FOR EACH ROW EXECUTE FUNCTION oplog_reject_delete();

-- The highest seq of an aggregate that trimming may delete: entries older
-- than p_older_than, up to the first younger one (trimming deletes a prefix),
-- and no further than any registered consumer has applied. o_from is the
-- current trim point, o_needed the lowest consumer position (NULL when no
-- consumer is registered).
CREATE FUNCTION oplog_trim_bound(p_aggregate text, p_older_than interval,
                                 OUT o_from bigint, OUT o_to bigint, OUT o_needed bigint)
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_young bigint;
BEGIN
    SELECT coalesce(max(tp.seq), 0) INTO o_from
      FROM oplog_trim_point tp WHERE tp.aggregate_name = p_aggregate;
    SELECT coalesce(max(t.version), 0) INTO o_to
      FROM oplog_ticket t WHERE t.name = p_aggregate;
    SELECT min(e.seq) INTO v_young FROM oplog_entry e
     WHERE e.aggregate_name = p_aggregate AND e.seq > o_from
       AND e.created_at >= now() - p_older_than;
    IF v_young IS NOT NULL THEN
        o_to := least(o_to, v_young - 1);
    END IF;
    SELECT min(coalesce(p.seq, 0)) INTO o_needed
      FROM oplog_consumer c
      LEFT JOIN oplog_consumer_position p
             ON p.consumer = c.name AND p.aggregate_name = p_aggregate;
    IF o_needed IS NOT NULL THEN
        o_to := least(o_to, o_needed);
    END IF;
    o_to := greatest(o_to, o_from);
END;
$$;

-- Deletes the entries of one aggregate after its trim point up to p_upto,
-- at most p_limit of them, and moves the trim point (seq and the chain
-- value after it) in the same transaction. Deletes a prefix only, so the
-- remaining log still starts right after the trim point, and never an
-- entry a registered consumer has not applied, whatever p_upto says.
-- Concurrent trims of one aggregate take turns.
CREATE FUNCTION oplog_trim(p_aggregate text, p_upto bigint, p_limit bigint,
                           OUT o_deleted bigint, OUT o_trim_seq bigint)
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
DECLARE
    v_from    bigint;
    v_to      bigint;
    v_needed  bigint;
    v_version bigint;
    v_chain   bytea;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtextextended('oplog-trim/' || p_aggregate, 0));
    SELECT coalesce(max(tp.seq), 0) INTO v_from
      FROM oplog_trim_point tp WHERE tp.aggregate_name = p_aggregate;
    SELECT coalesce(max(t.version), 0) INTO v_version
      FROM oplog_ticket t WHERE t.name = p_aggregate;
    SELECT min(coalesce(p.seq, 0)) INTO v_needed
      FROM oplog_consumer c
      LEFT JOIN oplog_consumer_position p
             ON p.consumer = c.name AND p.aggregate_name = p_aggregate;
    v_to := least(p_upto, v_from + greatest(p_limit, 0), v_version, coalesce(v_needed, v_version));
    o_deleted := 0;
    o_trim_seq := v_from;
    IF v_to <= v_from THEN
        RETURN;
    END IF;
    SELECT e.chain INTO v_chain FROM oplog_entry e
     WHERE e.aggregate_name = p_aggregate AND e.seq = v_to;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'oplog: entry % of aggregate % is missing, so the log cannot be trimmed to it; run oplog verify', v_to, p_aggregate
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    PERFORM set_config('oplog.trimming', 'on', true);
    DELETE FROM oplog_entry e
     WHERE e.aggregate_name = p_aggregate AND e.seq > v_from AND e.seq <= v_to;
    GET DIAGNOSTICS o_deleted = ROW_COUNT;
    PERFORM set_config('oplog.trimming', 'off', true);
    INSERT INTO oplog_trim_point (aggregate_name, seq, chain, trimmed_at)
    VALUES (p_aggregate, v_to, v_chain, now())
    ON CONFLICT (aggregate_name) DO UPDATE
        SET seq = excluded.seq, chain = excluded.chain, trimmed_at = excluded.trimmed_at;
    o_trim_seq := v_to;
END;
$$;

-- Running with the migrating role's rights, trimming is granted explicitly
-- (see SECURITY.md), never to everyone.
REVOKE EXECUTE ON FUNCTION oplog_trim(text, bigint, bigint) FROM PUBLIC;

DROP FUNCTION oplog_append(uuid, text, bigint, bytea, smallint, text, bytea, bytea, bytea, text[], text[], boolean, bytea);

-- As before, plus p_notify: when true, a notification on channel
-- 'oplog_entry' (payload: the aggregate) wakes followers at commit.
CREATE FUNCTION oplog_append(
    p_uuid uuid, p_aggregate text, p_seq bigint, p_prev_chain bytea,
    p_format smallint, p_key_id text, p_data bytea, p_digest bytea,
    p_chain bytea, p_keys text[], p_values text[], p_wait boolean,
    p_catalog bytea, p_notify boolean,
    OUT o_entry_id bigint, OUT o_version bigint, OUT o_chain bytea,
    OUT o_missing_catalog boolean)
LANGUAGE plpgsql AS $$
BEGIN
    o_missing_catalog := false;
    IF p_catalog IS NOT NULL
       AND NOT EXISTS (SELECT 1 FROM oplog_catalog c WHERE c.digest = p_catalog) THEN
        o_missing_catalog := true;
        RETURN;
    END IF;
    UPDATE oplog_ticket SET version = p_seq, chain = p_chain
     WHERE name = p_aggregate AND version = p_seq - 1 AND chain = p_prev_chain;
    IF FOUND THEN
        INSERT INTO oplog_entry (entry_uuid, aggregate_name, seq, format, key_id, data, digest, chain, catalog)
        VALUES (p_uuid, p_aggregate, p_seq, p_format, p_key_id, p_data, p_digest, p_chain, p_catalog)
        RETURNING id INTO o_entry_id;
        INSERT INTO oplog_metadata (entry_id, ordinal, key, value)
        SELECT o_entry_id, u.ord - 1, u.k, u.v
          FROM unnest(p_keys, p_values) WITH ORDINALITY AS u(k, v, ord);
        IF p_notify THEN
            PERFORM pg_notify('oplog_entry', p_aggregate);
        END IF;
        o_version := p_seq;
        o_chain := p_chain;
        RETURN;
    END IF;
    IF p_wait THEN
        SELECT t.version, t.chain INTO o_version, o_chain
          FROM oplog_ticket t WHERE t.name = p_aggregate FOR UPDATE;
        IF NOT FOUND THEN
            INSERT INTO oplog_ticket (name) VALUES (p_aggregate) ON CONFLICT DO NOTHING;
            SELECT t.version, t.chain INTO o_version, o_chain
              FROM oplog_ticket t WHERE t.name = p_aggregate FOR UPDATE;
        END IF;
    ELSE
        SELECT t.version, t.chain INTO o_version, o_chain
          FROM oplog_ticket t WHERE t.name = p_aggregate;
    END IF;
END;
$$;
