-- Back to the previous migration: its function definitions, the writers'
-- direct privileges, consumers without owners or policies, no retention
-- floor and no catalog digest constraint.

-- Whoever may append gets back what a caller of the invoker's-rights
-- oplog_append needs.
DO $migration$
DECLARE
    r record;
BEGIN
    FOR r IN
        SELECT DISTINCT CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE a.grantee::regrole::text END AS role
          FROM pg_catalog.pg_proc p, pg_catalog.aclexplode(p.proacl) a
         WHERE p.oid = 'oplog_append(uuid, text, bigint, bytea, smallint, text, bytea, bytea, bytea, text[], text[], boolean, bytea, boolean)'::regprocedure
           AND a.privilege_type = 'EXECUTE' AND a.grantee <> p.proowner
    LOOP
        EXECUTE pg_catalog.format('REVOKE INSERT (name) ON oplog_ticket FROM %s', r.role);
        EXECUTE pg_catalog.format('GRANT INSERT ON oplog_ticket, oplog_entry, oplog_metadata TO %s', r.role);
        EXECUTE pg_catalog.format('GRANT UPDATE (version, chain) ON oplog_ticket TO %s', r.role);
    END LOOP;
END;
$migration$;

CREATE OR REPLACE FUNCTION oplog_append(
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

GRANT EXECUTE ON FUNCTION oplog_append(uuid, text, bigint, bytea, smallint, text, bytea, bytea, bytea, text[], text[], boolean, bytea, boolean) TO PUBLIC;

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

REVOKE EXECUTE ON FUNCTION oplog_trim(text, bigint, bigint) FROM PUBLIC;

-- Trimmers may run the old oplog_trim and its bound again.
DO $migration$
DECLARE
    r record;
BEGIN
    FOR r IN
        SELECT DISTINCT a.grantee::regrole::text AS role
          FROM pg_catalog.pg_proc p, pg_catalog.aclexplode(p.proacl) a
         WHERE p.oid = 'oplog_trim(text, bigint, bigint, interval)'::regprocedure
           AND a.privilege_type = 'EXECUTE' AND a.grantee <> p.proowner AND a.grantee <> 0
    LOOP
        EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION oplog_trim(text, bigint, bigint) TO %s', r.role);
    END LOOP;
END;
$migration$;

DROP FUNCTION oplog_trim(text, bigint, bigint, interval);
DROP FUNCTION oplog_trim_bound(text, interval);
DROP FUNCTION oplog_trim_cutoff(interval);

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

DO $migration$
DECLARE
    r record;
BEGIN
    FOR r IN
        SELECT DISTINCT a.grantee::regrole::text AS role
          FROM pg_catalog.pg_proc p, pg_catalog.aclexplode(p.proacl) a
         WHERE p.oid = 'oplog_trim(text, bigint, bigint)'::regprocedure
           AND a.privilege_type = 'EXECUTE' AND a.grantee <> p.proowner AND a.grantee <> 0
    LOOP
        EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION oplog_trim_bound(text, interval) TO %s', r.role);
    END LOOP;
END;
$migration$;

CREATE OR REPLACE FUNCTION oplog_rewrap(p_id bigint, p_old_key_id text, p_new_key_id text, p_data bytea)
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

CREATE OR REPLACE FUNCTION oplog_reject_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'oplog: % rows are immutable; entries cannot be updated', TG_TABLE_NAME
        USING ERRCODE = 'integrity_constraint_violation';
END;
$$;

CREATE OR REPLACE FUNCTION oplog_reject_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('oplog.trimming', true) IS DISTINCT FROM 'on' THEN
        RAISE EXCEPTION 'oplog: % rows can only be deleted by trimming (oplog trim)', TG_TABLE_NAME
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    RETURN OLD;
END;
$$;

CREATE OR REPLACE FUNCTION oplog_entry_guard() RETURNS trigger LANGUAGE plpgsql AS $$
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

DROP POLICY oplog_consumer_read ON oplog_consumer;
DROP POLICY oplog_consumer_insert ON oplog_consumer;
DROP POLICY oplog_consumer_update ON oplog_consumer;
DROP POLICY oplog_consumer_delete ON oplog_consumer;
DROP POLICY oplog_consumer_position_read ON oplog_consumer_position;
DROP POLICY oplog_consumer_position_insert ON oplog_consumer_position;
DROP POLICY oplog_consumer_position_update ON oplog_consumer_position;
DROP POLICY oplog_consumer_position_delete ON oplog_consumer_position;
ALTER TABLE oplog_consumer DISABLE ROW LEVEL SECURITY;
ALTER TABLE oplog_consumer_position DISABLE ROW LEVEL SECURITY;
ALTER TABLE oplog_consumer DROP COLUMN owner;

ALTER TABLE oplog_catalog DROP CONSTRAINT oplog_catalog_digest_matches;

DROP TABLE oplog_trim_policy;
