-- The current definition of the trimming functions. `@schema@` is the oplog's
-- schema, quoted. src/store/migrate/mod.rs says when this file is applied and
-- which rules a change to it follows.

-- The creation time before which entries are old enough to trim: the
-- caller's age or the owner's floor (oplog_trim_policy), whichever is
-- longer. An age beyond what a timestamp can go back keeps everything.
CREATE OR REPLACE FUNCTION @schema@.oplog_trim_cutoff(p_older_than interval)
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
$body$;

-- The highest seq of an aggregate that trimming may delete now: a prefix of
-- entries older than the retention age, no further than any registered
-- consumer has applied. o_from is the current trim point, o_needed the
-- lowest consumer position (NULL when no consumer is registered), and
-- o_held_back is true when a consumer keeps the next entry, which age alone
-- would let go. Reads only the first entries past the bound, so its cost
-- does not grow with the aggregate's log.
CREATE OR REPLACE FUNCTION @schema@.oplog_trim_bound(p_aggregate text, p_older_than interval,
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
$body$;

-- Deletes the entries of one aggregate after its trim point up to p_upto,
-- at most p_limit of them, only while they are older than p_older_than and
-- the owner's floor, and moves the trim point (seq and the chain value after
-- it) in the same transaction. Deletes a prefix only, and never an entry a
-- registered consumer has not applied, whatever the arguments say.
--
-- The SHARE lock on the positions makes registrations wait for this
-- transaction, and this one wait for registrations in flight, after which
-- (READ COMMITTED: each statement sees what committed before it) it reads
-- the positions they wrote. Trims do not wait for each other, except trims
-- of one aggregate, which take turns; writers never wait.
CREATE OR REPLACE FUNCTION @schema@.oplog_trim(p_aggregate text, p_upto bigint, p_limit bigint,
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
$body$;

-- Running with the owner's rights, trimming is for the roles it is granted
-- to.
REVOKE EXECUTE ON FUNCTION @schema@.oplog_trim(text, bigint, bigint, interval) FROM PUBLIC;
