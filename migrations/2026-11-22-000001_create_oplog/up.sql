-- Tickets order the entries of an aggregate: every writer redeems the
-- ticket's version with a compare-and-swap, and the redeemed version is the
-- entry's seq. The chain column holds the hash-chain head after that version.
CREATE TABLE oplog_ticket (
    name       text PRIMARY KEY CHECK (length(name) BETWEEN 1 AND 256),
    version    bigint NOT NULL DEFAULT 0 CHECK (version >= 0),
    chain      bytea NOT NULL DEFAULT decode(repeat('00', 32), 'hex') CHECK (length(chain) = 32),
    created_at timestamptz NOT NULL DEFAULT now()
);

INSERT INTO oplog_ticket (name) VALUES ('global') ON CONFLICT DO NOTHING;

CREATE TABLE oplog_entry (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    entry_uuid     uuid NOT NULL UNIQUE,
    aggregate_name text NOT NULL CHECK (length(aggregate_name) BETWEEN 1 AND 256),
    seq            bigint NOT NULL CHECK (seq > 0),
    format         smallint NOT NULL,
    key_id         text NOT NULL,
    data           bytea NOT NULL,
    digest         bytea NOT NULL CHECK (length(digest) = 32),
    chain          bytea NOT NULL CHECK (length(chain) = 32),
    created_at     timestamptz NOT NULL DEFAULT now(),
    UNIQUE (aggregate_name, seq)
);

-- Metadata stays queryable in plaintext; it is authenticated as part of the
-- entry's associated data and hash chain.
CREATE TABLE oplog_metadata (
    entry_id bigint NOT NULL REFERENCES oplog_entry (id) ON DELETE CASCADE,
    ordinal  integer NOT NULL CHECK (ordinal >= 0),
    key      text NOT NULL CHECK (length(key) BETWEEN 1 AND 256),
    value    text NOT NULL,
    PRIMARY KEY (entry_id, ordinal)
);

CREATE INDEX oplog_metadata_key_value ON oplog_metadata (key, value);

-- Appends one entry: redeems the ticket with a compare-and-swap on its
-- version and chain head, inserts the entry and its metadata. One call, one
-- round trip; PL/pgSQL keeps the statements' plans for the session.
--
-- When the ticket is not at the expected version, nothing is written and the
-- ticket's current version and chain come back (NULL when it does not exist)
-- so the caller can seal the entry again. With p_wait the ticket is created
-- when missing and locked, so the caller's next call cannot lose.
CREATE FUNCTION oplog_append(
    p_uuid uuid, p_aggregate text, p_seq bigint, p_prev_chain bytea,
    p_format smallint, p_key_id text, p_data bytea, p_digest bytea,
    p_chain bytea, p_keys text[], p_values text[], p_wait boolean,
    OUT o_entry_id bigint, OUT o_version bigint, OUT o_chain bytea)
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE oplog_ticket SET version = p_seq, chain = p_chain
     WHERE name = p_aggregate AND version = p_seq - 1 AND chain = p_prev_chain;
    IF FOUND THEN
        INSERT INTO oplog_entry (entry_uuid, aggregate_name, seq, format, key_id, data, digest, chain)
        VALUES (p_uuid, p_aggregate, p_seq, p_format, p_key_id, p_data, p_digest, p_chain)
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

-- Entries and their metadata are immutable once written.
CREATE FUNCTION oplog_reject_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'oplog: % rows are immutable; entries cannot be updated', TG_TABLE_NAME
        USING ERRCODE = 'integrity_constraint_violation';
END;
$$;

CREATE TRIGGER oplog_entry_immutable BEFORE UPDATE ON oplog_entry
    FOR EACH ROW EXECUTE FUNCTION oplog_reject_update();

CREATE TRIGGER oplog_metadata_immutable BEFORE UPDATE ON oplog_metadata
    FOR EACH ROW EXECUTE FUNCTION oplog_reject_update();
