-- The log's Merkle tree (RFC 9162), for signed checkpoints and proofs.
-- Leaves are appended by `oplog checkpoint`, never by writers (appending
-- an entry stays one statement): each checkpoint adds the entries that
-- are not leaves yet, aggregate by aggregate in seq order, and signs the
-- new size and root. A leaf commits to its entry's aggregate, seq and
-- chain value (which covers the entry's content); leaves stay when their
-- entries are trimmed, so that proofs and consistency still hold.
CREATE TABLE oplog_tree_leaf (
    idx bigint PRIMARY KEY CHECK (idx >= 0),
    aggregate_name text NOT NULL,
    seq bigint NOT NULL,
    chain bytea NOT NULL,
    UNIQUE (aggregate_name, seq)
);

-- Each checkpoint: its size and root, the tree's right edge to append
-- the next leaves without reading these, and the signed note.
CREATE TABLE oplog_tree_head (
    size bigint PRIMARY KEY CHECK (size >= 0),
    root bytea NOT NULL,
    frontier bytea[] NOT NULL,
    note text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- Roots of complete aligned blocks of the tree, at every 8th level: the
-- root of leaves [idx * 2^level, (idx + 1) * 2^level). Written as a
-- checkpoint appends leaves, so that a proof reads O(log n) rows, never
-- every leaf.
CREATE TABLE oplog_tree_node (
    level smallint NOT NULL CHECK (level > 0 AND level % 8 = 0),
    idx bigint NOT NULL CHECK (idx >= 0),
    hash bytea NOT NULL,
    PRIMARY KEY (level, idx)
);
