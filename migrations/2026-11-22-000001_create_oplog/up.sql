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
