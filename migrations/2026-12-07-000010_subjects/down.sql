-- Back to the previous migration: no subject keys. (oplog_append keeps its
-- check of format-2 entries, which no earlier release writes.)
DROP FUNCTION IF EXISTS oplog_subject_key(text, text, bytea, text);
DROP FUNCTION IF EXISTS oplog_rewrap_subject_key(text, text, text, text, bytea);
DROP FUNCTION IF EXISTS oplog_shred(text);
DROP INDEX oplog_entry_subject;
DROP TABLE oplog_subject_key;
