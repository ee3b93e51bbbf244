-- Least privilege that holds against the roles `oplog grant` hands out.
--
-- 1. Every function runs with a pinned search_path: the oplog's schema,
--    then pg_temp, explicitly last, so that no temporary table of the
--    caller can stand in for an oplog table; and the bodies name every
--    table with its schema and every built-in with pg_catalog. The
--    functions that run with the owner's rights (SECURITY DEFINER:
--    oplog_append and oplog_trim) are executable only by the roles they are
--    granted to.
-- 2. Writers append only through oplog_append, which now runs with the
--    owner's rights: they lose INSERT on entries and metadata (a writer
--    could add metadata to an existing entry, which then no longer
--    authenticates) and UPDATE on tickets (a writer could move a ticket to
--    any version). A stored catalog must match its digest.
-- 3. A consumer belongs to the role that registered it: only that role (or
--    the tables' owner) may move, replace or remove its positions.
-- 4. The retention age is enforced by oplog_trim itself, with a floor that
--    only the owner may set (oplog_trim_policy).
-- 5. Registering a consumer waits for the trims in flight, and trims that
--    start meanwhile wait for the registration (a SHARE lock on the
--    positions, which every write of a position conflicts with).
--
-- The schema is the one this migration runs in, as for every earlier one;
-- the function texts are built with it below.

-- The shortest age an entry must reach before any trim may delete it,
-- whatever age the trimmer asks for. One row; only the owner may change it:
--   UPDATE oplog_trim_policy SET min_age = interval '30 days';
CREATE TABLE oplog_trim_policy (
    singleton  boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    min_age    interval NOT NULL DEFAULT interval '0' CHECK (min_age >= interval '0'),
    updated_at timestamptz NOT NULL DEFAULT now()
);

INSERT INTO oplog_trim_policy DEFAULT VALUES;

-- A catalog is stored under the SHA-256 of its content. NOT VALID: rows
-- already stored are not checked here (verification reports them), every
-- new one is.
ALTER TABLE oplog_catalog
    ADD CONSTRAINT oplog_catalog_digest_matches CHECK (digest = sha256(catalog)) NOT VALID;

-- Who registered each consumer. Consumers registered before this column
-- existed have none (NULL) until their follower registers again, which
-- records its role.
ALTER TABLE oplog_consumer ADD COLUMN owner text;
ALTER TABLE oplog_consumer ALTER COLUMN owner SET DEFAULT current_user;

-- Everyone who may read the registry reads all of it; a consumer's row and
-- positions change only by a role that is a member of its owner. The
-- tables' owner is exempt from these policies, and so is oplog_trim, which
-- runs with its rights. The membership test goes through pg_roles so that
-- an owner role that was dropped meanwhile is nobody's, not an error.
ALTER TABLE oplog_consumer ENABLE ROW LEVEL SECURITY;
ALTER TABLE oplog_consumer_position ENABLE ROW LEVEL SECURITY;

DO $migration$
DECLARE
    s      text := pg_catalog.quote_ident(pg_catalog.current_schema());
    mine   text := 'owner IN (SELECT r.rolname::text FROM pg_catalog.pg_roles r '
                   'WHERE pg_catalog.pg_has_role(r.oid, ''MEMBER''))';
    theirs text;
    -- Whoever could run the old oplog_trim may run the new one, without
    -- being granted again.
    trimmers text[];
    r       text;
BEGIN
    IF pg_catalog.to_regclass(s || '.oplog_entry') IS NULL THEN
        RAISE EXCEPTION 'oplog: the oplog tables are not in schema %; run the migrations with the search_path they were first run with', s;
    END IF;
    -- A position belongs to its consumer's owner; consumers registered
    -- before owners were recorded stay open until registered again.
    theirs := pg_catalog.format(
        'consumer IN (SELECT c.name FROM %s.oplog_consumer c WHERE c.owner IS NULL OR c.%s)', s, mine);

    EXECUTE pg_catalog.format('CREATE POLICY oplog_consumer_read ON %s.oplog_consumer FOR SELECT USING (true)', s);
    EXECUTE pg_catalog.format('CREATE POLICY oplog_consumer_insert ON %s.oplog_consumer FOR INSERT WITH CHECK (%s)', s, mine);
    EXECUTE pg_catalog.format('CREATE POLICY oplog_consumer_update ON %s.oplog_consumer FOR UPDATE USING (owner IS NULL OR %s) WITH CHECK (%s)', s, mine, mine);
    EXECUTE pg_catalog.format('CREATE POLICY oplog_consumer_delete ON %s.oplog_consumer FOR DELETE USING (owner IS NULL OR %s)', s, mine);
    EXECUTE pg_catalog.format('CREATE POLICY oplog_consumer_position_read ON %s.oplog_consumer_position FOR SELECT USING (true)', s);
    EXECUTE pg_catalog.format('CREATE POLICY oplog_consumer_position_insert ON %s.oplog_consumer_position FOR INSERT WITH CHECK (%s)', s, theirs);
    EXECUTE pg_catalog.format('CREATE POLICY oplog_consumer_position_update ON %s.oplog_consumer_position FOR UPDATE USING (%s) WITH CHECK (%s)', s, theirs, theirs);
    EXECUTE pg_catalog.format('CREATE POLICY oplog_consumer_position_delete ON %s.oplog_consumer_position FOR DELETE USING (%s)', s, theirs);

    SELECT pg_catalog.array_agg(DISTINCT a.grantee::regrole::text) INTO trimmers
      FROM pg_catalog.pg_proc p, pg_catalog.aclexplode(p.proacl) a
     WHERE p.oid = pg_catalog.to_regprocedure(s || '.oplog_trim(text, bigint, bigint)')
       AND a.privilege_type = 'EXECUTE' AND a.grantee <> p.proowner AND a.grantee <> 0;
    EXECUTE pg_catalog.format('DROP FUNCTION %s.oplog_trim(text, bigint, bigint)', s);
    EXECUTE pg_catalog.format('DROP FUNCTION %s.oplog_trim_bound(text, interval)', s);

    -- The functions, each with the schema for @schema@. Bodies are as
    -- before except where a comment says otherwise.

    -- Appends one entry (see the first migration). Runs with the owner's
    -- rights, so that writers need no INSERT on entries or metadata and no
    -- UPDATE on tickets: the only entry a writer can add is the next one of
    -- an aggregate, with its own metadata.
    EXECUTE pg_catalog.replace($fn$
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
$body$
$fn$, '@schema@', s);

    -- The highest seq of an aggregate that trimming may delete now: a
    -- prefix of entries older than the retention age (the caller's, or the
    -- owner's floor when that is longer), no further than any registered
    -- consumer has applied. o_from is the current trim point, o_needed the
    -- lowest consumer position (NULL when no consumer is registered), and
    -- o_held_back is true when a consumer keeps the next entry, which age
    -- alone would let go. Reads only the first entries past the bound, so
    -- its cost does not grow with the aggregate's log.
    EXECUTE pg_catalog.replace($fn$
CREATE FUNCTION @schema@.oplog_trim_bound(p_aggregate text, p_older_than interval,
                                          OUT o_from bigint, OUT o_to bigint, OUT o_needed bigint,
                                          OUT o_held_back boolean)
LANGUAGE plpgsql STABLE SET search_path = @schema@, pg_temp AS $body$
DECLARE
    v_version bigint;
    v_cutoff  timestamptz;
    v_young   bigint;
BEGIN
    v_cutoff := @schema@.oplog_trim_cutoff(p_older_than);
    SELECT coalesce(pg_catalog.max(tp.seq), 0) INTO o_from
      FROM @schema@.oplog_trim_point tp WHERE tp.aggregate_name = p_aggregate;
    SELECT coalesce(pg_catalog.max(t.version), 0) INTO v_version
      FROM @schema@.oplog_ticket t WHERE t.name = p_aggregate;
    SELECT pg_catalog.min(coalesce(p.seq, 0)) INTO o_needed
      FROM @schema@.oplog_consumer c
      LEFT JOIN @schema@.oplog_consumer_position p
             ON p.consumer = c.name AND p.aggregate_name = p_aggregate;
    o_to := least(v_version, coalesce(o_needed, v_version));
    SELECT pg_catalog.min(e.seq) INTO v_young FROM @schema@.oplog_entry e
     WHERE e.aggregate_name = p_aggregate AND e.seq > o_from AND e.seq <= o_to
       AND e.created_at >= v_cutoff;
    IF v_young IS NOT NULL THEN
        o_to := v_young - 1;
    END IF;
    o_to := greatest(o_to, o_from);
    o_held_back := v_young IS NULL AND o_needed IS NOT NULL AND o_to = o_needed
        AND EXISTS (SELECT 1 FROM @schema@.oplog_entry e
                     WHERE e.aggregate_name = p_aggregate AND e.seq = o_needed + 1
                       AND e.created_at < v_cutoff);
END;
$body$
$fn$, '@schema@', s);

    -- The creation time before which entries are old enough to trim: the
    -- caller's age or the owner's floor, whichever is longer. An age beyond
    -- what a timestamp can go back keeps everything.
    EXECUTE pg_catalog.replace($fn$
CREATE FUNCTION @schema@.oplog_trim_cutoff(p_older_than interval)
RETURNS timestamptz
LANGUAGE plpgsql STABLE SET search_path = @schema@, pg_temp AS $body$
DECLARE
    v_age interval;
BEGIN
    IF p_older_than IS NULL THEN
        RAISE EXCEPTION 'oplog: trimming needs a retention age (interval ''0'' keeps only the floor in oplog_trim_policy)'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    SELECT pg_catalog.max(tp.min_age) INTO v_age FROM @schema@.oplog_trim_policy tp;
    v_age := greatest(p_older_than, coalesce(v_age, interval '0'));
    IF v_age > interval '5000 years' THEN
        RETURN '-infinity';
    END IF;
    RETURN pg_catalog.now() - v_age;
END;
$body$
$fn$, '@schema@', s);

    -- Deletes the entries of one aggregate after its trim point up to
    -- p_upto, at most p_limit of them, only while they are older than
    -- p_older_than and the owner's floor, and moves the trim point (seq and
    -- the chain value after it) in the same transaction. Deletes a prefix
    -- only, and never an entry a registered consumer has not applied,
    -- whatever the arguments say.
    --
    -- The SHARE lock on the positions makes registrations wait for this
    -- transaction, and this one wait for registrations in flight, after
    -- which (READ COMMITTED: each statement sees what committed before it)
    -- it reads the positions they wrote. Trims do not wait for each other,
    -- except trims of one aggregate, which take turns; writers never wait.
    EXECUTE pg_catalog.replace($fn$
CREATE FUNCTION @schema@.oplog_trim(p_aggregate text, p_upto bigint, p_limit bigint,
                                    p_older_than interval,
                                    OUT o_deleted bigint, OUT o_trim_seq bigint)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = @schema@, pg_temp AS $body$
DECLARE
    v_from    bigint;
    v_to      bigint;
    v_needed  bigint;
    v_version bigint;
    v_young   bigint;
    v_cutoff  timestamptz;
    v_chain   bytea;
BEGIN
    IF pg_catalog.current_setting('transaction_isolation') <> 'read committed' THEN
        RAISE EXCEPTION 'oplog: oplog_trim must run in a READ COMMITTED transaction, to see the consumers registered while it waited'
            USING ERRCODE = 'invalid_transaction_state';
    END IF;
    v_cutoff := @schema@.oplog_trim_cutoff(p_older_than);
    LOCK TABLE @schema@.oplog_consumer_position IN SHARE MODE;
    PERFORM pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtextextended('oplog-trim/' || p_aggregate, 0));
    SELECT coalesce(pg_catalog.max(tp.seq), 0) INTO v_from
      FROM @schema@.oplog_trim_point tp WHERE tp.aggregate_name = p_aggregate;
    SELECT coalesce(pg_catalog.max(t.version), 0) INTO v_version
      FROM @schema@.oplog_ticket t WHERE t.name = p_aggregate;
    SELECT pg_catalog.min(coalesce(p.seq, 0)) INTO v_needed
      FROM @schema@.oplog_consumer c
      LEFT JOIN @schema@.oplog_consumer_position p
             ON p.consumer = c.name AND p.aggregate_name = p_aggregate;
    v_to := least(p_upto, v_from + greatest(p_limit, 0), v_version, coalesce(v_needed, v_version));
    o_deleted := 0;
    o_trim_seq := v_from;
    -- The prefix ends before the first entry that is too young.
    SELECT pg_catalog.min(e.seq) INTO v_young FROM @schema@.oplog_entry e
     WHERE e.aggregate_name = p_aggregate AND e.seq > v_from AND e.seq <= v_to
       AND e.created_at >= v_cutoff;
    IF v_young IS NOT NULL THEN
        v_to := v_young - 1;
    END IF;
    IF v_to <= v_from THEN
        RETURN;
    END IF;
    SELECT e.chain INTO v_chain FROM @schema@.oplog_entry e
     WHERE e.aggregate_name = p_aggregate AND e.seq = v_to;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'oplog: entry % of aggregate % is missing, so the log cannot be trimmed to it; run oplog verify', v_to, p_aggregate
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    PERFORM pg_catalog.set_config('oplog.trimming', 'on', true);
    DELETE FROM @schema@.oplog_entry e
     WHERE e.aggregate_name = p_aggregate AND e.seq > v_from AND e.seq <= v_to;
    GET DIAGNOSTICS o_deleted = ROW_COUNT;
    PERFORM pg_catalog.set_config('oplog.trimming', 'off', true);
    INSERT INTO @schema@.oplog_trim_point (aggregate_name, seq, chain, trimmed_at)
    VALUES (p_aggregate, v_to, v_chain, pg_catalog.now())
    ON CONFLICT (aggregate_name) DO UPDATE
        SET seq = excluded.seq, chain = excluded.chain, trimmed_at = excluded.trimmed_at;
    o_trim_seq := v_to;
END;
$body$
$fn$, '@schema@', s);

    -- Re-encryption (see the rewrap migration); the caller's rights, as
    -- before.
    EXECUTE pg_catalog.replace($fn$
CREATE OR REPLACE FUNCTION @schema@.oplog_rewrap(p_id bigint, p_old_key_id text, p_new_key_id text, p_data bytea)
RETURNS boolean LANGUAGE plpgsql SET search_path = @schema@, pg_temp AS $body$
DECLARE
    n bigint;
BEGIN
    PERFORM pg_catalog.set_config('oplog.rewrap', pg_catalog.json_build_array(p_id, p_old_key_id, p_new_key_id)::text, true);
    UPDATE @schema@.oplog_entry SET key_id = p_new_key_id, data = p_data
     WHERE id = p_id AND key_id = p_old_key_id;
    GET DIAGNOSTICS n = ROW_COUNT;
    PERFORM pg_catalog.set_config('oplog.rewrap', '', true);
    RETURN n > 0;
END;
$body$
$fn$, '@schema@', s);

    -- The triggers' functions, which run with the rights of whoever
    -- changes a row.
    EXECUTE pg_catalog.replace($fn$
CREATE OR REPLACE FUNCTION @schema@.oplog_reject_update() RETURNS trigger
LANGUAGE plpgsql SET search_path = @schema@, pg_temp AS $body$
BEGIN
    RAISE EXCEPTION 'oplog: % rows are immutable; entries cannot be updated', TG_TABLE_NAME
        USING ERRCODE = 'integrity_constraint_violation';
END;
$body$
$fn$, '@schema@', s);

    EXECUTE pg_catalog.replace($fn$
CREATE OR REPLACE FUNCTION @schema@.oplog_reject_delete() RETURNS trigger
LANGUAGE plpgsql SET search_path = @schema@, pg_temp AS $body$
BEGIN
    IF pg_catalog.current_setting('oplog.trimming', true) IS DISTINCT FROM 'on' THEN
        RAISE EXCEPTION 'oplog: % rows can only be deleted by trimming (oplog trim)', TG_TABLE_NAME
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    RETURN OLD;
END;
$body$
$fn$, '@schema@', s);

    EXECUTE pg_catalog.replace($fn$
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
$body$
$fn$, '@schema@', s);

    -- The functions that run with the owner's rights are for the roles they
    -- are granted to.
    EXECUTE pg_catalog.format('REVOKE EXECUTE ON FUNCTION %s.oplog_append(uuid, text, bigint, bytea, smallint, text, bytea, bytea, bytea, text[], text[], boolean, bytea, boolean) FROM PUBLIC', s);
    EXECUTE pg_catalog.format('REVOKE EXECUTE ON FUNCTION %s.oplog_trim(text, bigint, bigint, interval) FROM PUBLIC', s);
    FOREACH r IN ARRAY coalesce(trimmers, '{}') LOOP
        EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION %s.oplog_trim(text, bigint, bigint, interval) TO %s', s, r);
    END LOOP;
    -- Whoever may read the trim points (readers and trimmers) may read the
    -- floor.
    FOR r IN
        SELECT DISTINCT CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE a.grantee::regrole::text END
          FROM pg_catalog.pg_class c, pg_catalog.aclexplode(c.relacl) a
         WHERE c.oid = pg_catalog.to_regclass(s || '.oplog_trim_point')
           AND a.privilege_type = 'SELECT' AND a.grantee <> c.relowner
    LOOP
        EXECUTE pg_catalog.format('GRANT SELECT ON %s.oplog_trim_policy TO %s', s, r);
    END LOOP;
END;
$migration$;

-- Writers granted before this migration could insert entries and metadata
-- and update tickets directly. Take that away from every role but the
-- owner: a role that could insert entries may append through oplog_append
-- instead, and one that could insert tickets keeps creating them by name
-- (Oplog::ensure_ticket), never with a version or chain of its own.
DO $migration$
DECLARE
    r record;
BEGIN
    FOR r IN
        WITH privileges AS (
            SELECT c.relname, a.grantee, a.privilege_type
              FROM pg_catalog.pg_class c, pg_catalog.aclexplode(c.relacl) a
             WHERE c.oid IN ('oplog_entry'::regclass, 'oplog_metadata'::regclass, 'oplog_ticket'::regclass)
               AND a.grantee <> c.relowner
            UNION
            SELECT c.relname || '.column', a.grantee, a.privilege_type
              FROM pg_catalog.pg_class c
              JOIN pg_catalog.pg_attribute at ON at.attrelid = c.oid
             CROSS JOIN pg_catalog.aclexplode(at.attacl) a
             WHERE c.oid = 'oplog_ticket'::regclass AND a.grantee <> c.relowner
        )
        SELECT CASE WHEN p.grantee = 0 THEN 'PUBLIC' ELSE p.grantee::regrole::text END AS role,
               bool_or(p.relname = 'oplog_entry' AND p.privilege_type = 'INSERT') AS appended,
               bool_or(p.relname = 'oplog_ticket' AND p.privilege_type = 'INSERT') AS seeded
          FROM privileges p
         WHERE (p.relname IN ('oplog_entry', 'oplog_metadata') AND p.privilege_type = 'INSERT')
            OR (p.relname IN ('oplog_ticket', 'oplog_ticket.column') AND p.privilege_type IN ('INSERT', 'UPDATE'))
         GROUP BY 1
    LOOP
        IF r.appended THEN
            EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION oplog_append(uuid, text, bigint, bytea, smallint, text, bytea, bytea, bytea, text[], text[], boolean, bytea, boolean) TO %s', r.role);
        END IF;
        EXECUTE pg_catalog.format('REVOKE INSERT ON oplog_entry, oplog_metadata FROM %s', r.role);
        EXECUTE pg_catalog.format('REVOKE INSERT, UPDATE ON oplog_ticket FROM %s', r.role);
        EXECUTE pg_catalog.format('REVOKE INSERT (name, version, chain, created_at), UPDATE (name, version, chain, created_at) ON oplog_ticket FROM %s', r.role);
        IF r.seeded THEN
            EXECUTE pg_catalog.format('GRANT INSERT (name) ON oplog_ticket TO %s', r.role);
        END IF;
    END LOOP;
END;
$migration$;
