-- `oplog serve`: the registry of agents and the run log of scheduled
-- jobs. One row per agent (it heartbeats, and says what it holds); one
-- row per run of a job, unique on the job and its slot, so that the
-- agents that race for a slot run it once between them.
CREATE TABLE oplog_agent (
    id uuid PRIMARY KEY,
    name text NOT NULL,
    host text NOT NULL,
    pid integer NOT NULL,
    version text NOT NULL,
    started_at timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz NOT NULL DEFAULT now(),
    stopped_at timestamptz,
    holds text[] NOT NULL DEFAULT '{}',
    -- The session it holds its workers in: an agent that stops
    -- heartbeating while that session lives (hung, stopped) has it ended
    -- by the agent that notices, so that its locks are released.
    backend_pid integer,
    backend_start timestamptz
);

CREATE TABLE oplog_job_run (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job text NOT NULL,
    agent uuid,
    expected_at timestamptz NOT NULL,
    triggered_at timestamptz,
    started_at timestamptz,
    ended_at timestamptz,
    state text NOT NULL CHECK (state IN ('in_progress', 'success', 'failed', 'dropped_out_of_window')),
    detail jsonb NOT NULL DEFAULT '{}',
    UNIQUE (job, expected_at)
);

-- Runs in progress are few and looked for at every heartbeat.
CREATE INDEX oplog_job_run_in_progress ON oplog_job_run (agent) WHERE state = 'in_progress';
-- Retention deletes by age.
CREATE INDEX oplog_job_run_expected_at ON oplog_job_run (expected_at);
