-- A subscription whose handler keeps failing on an entry parks that
-- aggregate there: the entry's seq, why, and since when, on the
-- consumer's position of the aggregate, until it is resumed. Nullable
-- columns: earlier releases read and write positions as before.
ALTER TABLE oplog_consumer_position
    ADD COLUMN parked_seq bigint,
    ADD COLUMN parked_reason text,
    ADD COLUMN parked_at timestamptz;
