-- A self-describing log: every entry names the type catalog it was written
-- with (protobuf descriptors plus each type's table and primary key), and
-- the catalog is stored once per distinct content, keyed by its SHA-256.
-- The entry's catalog digest is part of its associated data, so an entry
-- cannot be pointed at another catalog without failing authentication.
CREATE TABLE oplog_catalog (
    digest     bytea PRIMARY KEY CHECK (length(digest) = 32),
    catalog    bytea NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TRIGGER oplog_catalog_immutable BEFORE UPDATE ON oplog_catalog
    FOR EACH ROW EXECUTE FUNCTION oplog_reject_update();

ALTER TABLE oplog_entry
    ADD COLUMN catalog bytea CHECK (catalog IS NULL OR length(catalog) = 32);

-- This database's identity as a replication source: replicas key their
-- checkpoints by it, so a replica never mistakes one source for another.
CREATE TABLE oplog_source (
    id         uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    singleton  boolean NOT NULL DEFAULT true UNIQUE CHECK (singleton),
    created_at timestamptz NOT NULL DEFAULT now()
);

INSERT INTO oplog_source DEFAULT VALUES ON CONFLICT DO NOTHING;

-- Where each aggregate's log starts after trimming: the last trimmed seq and
-- the chain value after it, from which verification resumes the chain.
CREATE TABLE oplog_trim_point (
    aggregate_name text PRIMARY KEY,
    seq            bigint NOT NULL CHECK (seq > 0),
    chain          bytea NOT NULL CHECK (length(chain) = 32),
    trimmed_at     timestamptz NOT NULL DEFAULT now()
);

DROP FUNCTION oplog_append(uuid, text, bigint, bytea, smallint, text, bytea, bytea, bytea, text[], text[], boolean);

-- As before, plus the catalog: when the entry's catalog is not stored yet,
-- nothing is written and o_missing_catalog is true, so the caller stores the
-- catalog (in the same transaction) and calls again.
CREATE FUNCTION oplog_append(
    p_uuid uuid, p_aggregate text, p_seq bigint, p_prev_chain bytea,
    p_format smallint, p_key_id text, p_data bytea, p_digest bytea,
    p_chain bytea, p_keys text[], p_values text[], p_wait boolean,
    p_catalog bytea,
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
