-- A replica's own tables, in the replica's database (or, for suffixed
-- tables, in the source's): its checkpoints, the entries the operator passed
-- over, and where each aggregate last stopped. Versioned in
-- oplog_replica_migrations, applied under the replica setup lock.
--
-- Replicas set up before this table set was versioned have these tables
-- already, created by this very text: IF NOT EXISTS adopts them as they
-- are, with their rows.

-- How far the replica has applied each aggregate of a source, keyed by the
-- source's id (oplog_source) plus the replica's table suffix; changed in the
-- same transaction as the rows it covers.
CREATE TABLE IF NOT EXISTS oplog_checkpoint (
    source           text NOT NULL,
    aggregate_name   text NOT NULL,
    seq              bigint NOT NULL CHECK (seq > 0),
    chain            bytea NOT NULL CHECK (length(chain) = 32),
    entry_id         bigint NOT NULL,
    entry_created_at timestamptz NOT NULL,
    applied_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (source, aggregate_name)
);

-- The entries the operator chose to pass over (the replica lacks their
-- changes), each with why.
CREATE TABLE IF NOT EXISTS oplog_skipped (
    source         text NOT NULL,
    aggregate_name text NOT NULL,
    seq            bigint NOT NULL CHECK (seq > 0),
    entry_id       bigint NOT NULL,
    chain          bytea NOT NULL CHECK (length(chain) = 32),
    reason         text NOT NULL CHECK (length(reason) > 0),
    error          text NOT NULL,
    skipped_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (source, aggregate_name, seq)
);

-- Where each aggregate last stopped: the one entry a skip may pass over.
CREATE TABLE IF NOT EXISTS oplog_stopped (
    source         text NOT NULL,
    aggregate_name text NOT NULL,
    seq            bigint NOT NULL CHECK (seq > 0),
    error          text NOT NULL,
    stopped_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (source, aggregate_name)
);
