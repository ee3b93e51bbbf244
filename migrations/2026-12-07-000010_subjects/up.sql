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
-- (format 2) are indexed, but building the index reads the whole table
-- while writers wait: on a large log, create it beforehand with
--   CREATE INDEX CONCURRENTLY oplog_entry_subject ON oplog_entry (key_id, id) WHERE format = 2;
-- and this migration leaves it as it is.
CREATE INDEX IF NOT EXISTS oplog_entry_subject ON oplog_entry (key_id, id) WHERE format = 2;

-- The functions (sql/functions/subjects.sql, and the append's check of a
-- subject's key in append.sql) come with the function set.

-- Entries are read together with their subject's wrapped key, so every
-- role that may read entries may read the subject keys (they are wrapped:
-- reading them needs the keyring, as reading entries does).
DO $grants$
DECLARE
    r text;
BEGIN
    FOR r IN
        SELECT DISTINCT a.grantee::regrole::text
          FROM pg_catalog.pg_class c, pg_catalog.aclexplode(c.relacl) a
         WHERE c.oid = 'oplog_entry'::regclass
           AND a.privilege_type = 'SELECT' AND a.grantee <> c.relowner AND a.grantee <> 0
    LOOP
        EXECUTE pg_catalog.format('GRANT SELECT ON oplog_subject_key TO %s', r);
    END LOOP;
END
$grants$;
