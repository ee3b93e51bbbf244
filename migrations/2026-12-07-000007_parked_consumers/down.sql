ALTER TABLE oplog_consumer_position
    DROP COLUMN IF EXISTS parked_seq,
    DROP COLUMN IF EXISTS parked_reason,
    DROP COLUMN IF EXISTS parked_at;
