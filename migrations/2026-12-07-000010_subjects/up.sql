-- Crypto-shredding: a data subject's entries are encrypted under the
-- subject's own data key, stored here wrapped (encrypted) by the keyring.
-- Shredding destroys the wrapped key (wrapped becomes NULL) and records who
-- did it and when; the subject's entries stay, unreadable by anyone. Rows
-- change only through the functions in sql/functions/subjects.sql: writers
-- create a key, the keys role re-wraps one, a shredder destroys one.
CREATE TABLE oplog_subject_key (
    subject         text PRIMARY KEY CHECK (length(subject) BETWEEN 1 AND 256),
    key_id          text NOT NULL UNIQUE CHECK (length(key_id) BETWEEN 1 AND 64),
    wrapped         bytea,
    wrapping_key_id text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    shredded_at     timestamptz,
    shredded_by     text,
    CHECK ((wrapped IS NULL) = (shredded_at IS NOT NULL)),
    CHECK ((wrapped IS NULL) = (wrapping_key_id IS NULL))
);

-- The entries of one subject key, in id order: what a shred reads to find
-- the rows to delete on replicas. Only entries under a subject's key
-- (format 2) are indexed.
CREATE INDEX oplog_entry_subject ON oplog_entry (key_id, id) WHERE format = 2;

-- The functions (sql/functions/subjects.sql, and the append's check of a
-- subject's key in append.sql) come with the function set.
