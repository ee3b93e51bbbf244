//! What agents keep on the source: the registry of agents (`oplog_agent`)
//! and the run log of scheduled jobs (`oplog_job_run`), with the one
//! statement each step needs.

use std::time::{Duration, SystemTime};

use oplog::{Error, Result};
use postgres::types::Type;
use postgres::Client;
use uuid::Uuid;

/// A run that ended well.
pub const SUCCESS: &str = "success";
/// A run that failed, found something, or whose agent died.
pub const FAILED: &str = "failed";

/// An agent as the registry holds it.
#[derive(Debug, Clone)]
pub struct AgentRow {
    pub id: Uuid,
    pub name: String,
    pub host: String,
    pub pid: i32,
    pub version: String,
    pub started_at: SystemTime,
    pub heartbeat_at: SystemTime,
    pub heartbeat_age: Duration,
    pub stopped: bool,
    pub holds: Vec<String>,
}

/// A run of a job.
#[derive(Debug, Clone)]
pub struct RunRow {
    pub id: i64,
    pub job: String,
    pub agent: Option<String>,
    pub expected_at: SystemTime,
    pub triggered_at: Option<SystemTime>,
    pub started_at: Option<SystemTime>,
    pub ended_at: Option<SystemTime>,
    pub state: String,
    pub detail: serde_json::Value,
}

/// Registers (or registers again, after a lost session) the agent `id`.
pub fn register(
    c: &mut Client,
    id: Uuid,
    name: &str,
    host: &str,
    pid: i32,
    version: &str,
) -> Result<()> {
    c.execute_typed(
        "INSERT INTO oplog_agent (id, name, host, pid, version, backend_pid, backend_start) \
         SELECT $1, $2, $3, $4, $5, pg_backend_pid(), \
                (SELECT backend_start FROM pg_stat_activity WHERE pid = pg_backend_pid()) \
         ON CONFLICT (id) DO UPDATE SET heartbeat_at = now(), stopped_at = NULL, holds = '{}', \
             backend_pid = excluded.backend_pid, backend_start = excluded.backend_start",
        &[
            (&id, Type::UUID),
            (&name, Type::TEXT),
            (&host, Type::TEXT),
            (&pid, Type::INT4),
            (&version, Type::TEXT),
        ],
    )?;
    Ok(())
}

/// The agent is alive and holds `holds`.
pub fn heartbeat(c: &mut Client, id: Uuid, holds: &[String]) -> Result<()> {
    c.execute_typed(
        "UPDATE oplog_agent SET heartbeat_at = now(), holds = $2 WHERE id = $1",
        &[(&id, Type::UUID), (&holds, Type::TEXT_ARRAY)],
    )?;
    Ok(())
}

/// The agent stopped and holds nothing.
pub fn stopped(c: &mut Client, id: Uuid) -> Result<()> {
    c.execute_typed(
        "UPDATE oplog_agent SET stopped_at = now(), holds = '{}' WHERE id = $1",
        &[(&id, Type::UUID)],
    )?;
    Ok(())
}

/// The advisory lock's name of the worker `name`.
fn lock_key(name: &str) -> String {
    format!("oplog-serve/{name}")
}

/// Takes a session-level advisory lock on `name` for this session; false
/// when another session holds it.
pub fn try_hold(c: &mut Client, name: &str) -> Result<bool> {
    let key = lock_key(name);
    Ok(c.query_typed_one(
        "SELECT pg_try_advisory_lock(hashtextextended($1, 0))",
        &[(&key, Type::TEXT)],
    )?
    .get(0))
}

/// Lets go of `name`'s lock.
pub fn release(c: &mut Client, name: &str) -> Result<()> {
    let key = lock_key(name);
    c.query_typed_one(
        "SELECT pg_advisory_unlock(hashtextextended($1, 0))",
        &[(&key, Type::TEXT)],
    )?;
    Ok(())
}

/// Claims the slot `expected_at` of `job` for the agent `id`: the run's id
/// when this agent is the one to run it, `None` when another agent claimed
/// it first (the unique slot makes sure one run per slot).
pub fn claim(c: &mut Client, job: &str, id: Uuid, expected_at: SystemTime) -> Result<Option<i64>> {
    let row = c.query_typed_opt(
        "INSERT INTO oplog_job_run (job, agent, expected_at, triggered_at, started_at, state) \
         VALUES ($1, $2, $3, now(), now(), 'in_progress') \
         ON CONFLICT (job, expected_at) DO NOTHING RETURNING id",
        &[
            (&job, Type::TEXT),
            (&id, Type::UUID),
            (&expected_at, Type::TIMESTAMPTZ),
        ],
    )?;
    Ok(row.map(|r| r.get(0)))
}

/// Records the slot `expected_at` of `job` as dropped: no agent started it
/// within `window`. False when the slot already has a run.
pub fn drop_slot(
    c: &mut Client,
    job: &str,
    id: Uuid,
    expected_at: SystemTime,
    window: Duration,
) -> Result<bool> {
    let detail = serde_json::json!({
        "reason": format!(
            "no agent could start it within its window of {}",
            humantime::format_duration(window)
        ),
    });
    let n = c.execute_typed(
        "INSERT INTO oplog_job_run (job, agent, expected_at, state, detail) \
         VALUES ($1, $2, $3, 'dropped_out_of_window', $4) \
         ON CONFLICT (job, expected_at) DO NOTHING",
        &[
            (&job, Type::TEXT),
            (&id, Type::UUID),
            (&expected_at, Type::TIMESTAMPTZ),
            (&detail, Type::JSONB),
        ],
    )?;
    Ok(n > 0)
}

/// The newest slot of `job` in the run log, if it has any run.
pub fn last_slot(c: &mut Client, job: &str) -> Result<Option<SystemTime>> {
    Ok(c.query_typed_one(
        "SELECT max(expected_at) FROM oplog_job_run WHERE job = $1",
        &[(&job, Type::TEXT)],
    )?
    .get(0))
}

/// Ends the run `id` in `state` with `detail`.
pub fn finish(c: &mut Client, id: i64, state: &str, detail: &serde_json::Value) -> Result<()> {
    c.execute_typed(
        "UPDATE oplog_job_run SET ended_at = now(), state = $2, detail = $3 \
         WHERE id = $1 AND state = 'in_progress'",
        &[
            (&id, Type::INT8),
            (&state, Type::TEXT),
            (detail, Type::JSONB),
        ],
    )?;
    Ok(())
}

/// Marks failed the runs in progress of agents that stopped or whose
/// heartbeat is older than `lost_after`: they died while running them.
/// The runs so marked.
pub fn fail_orphans(c: &mut Client, lost_after: Duration) -> Result<Vec<(i64, String)>> {
    let secs = lost_after.as_secs_f64();
    let rows = c.query_typed(
        "UPDATE oplog_job_run r SET state = 'failed', ended_at = now(), \
             detail = r.detail || jsonb_build_object('error', \
                 format('agent %s (%s pid %s) %s while running it', a.name, a.host, a.pid, \
                     CASE WHEN a.stopped_at IS NOT NULL THEN 'stopped' \
                          ELSE 'was lost (no heartbeat)' END)) \
         FROM oplog_agent a \
         WHERE r.state = 'in_progress' AND r.agent = a.id \
           AND (a.stopped_at IS NOT NULL OR a.heartbeat_at < now() - make_interval(secs => $1)) \
         RETURNING r.id, r.job",
        &[(&secs, Type::FLOAT8)],
    )?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// Ends the sessions of agents that stopped heartbeating more than
/// `lost_after` ago while their session lives on (a hung or stopped
/// process): their locks go with it, so that others take their workers
/// over. The names of the agents whose session was ended.
pub fn end_lost_sessions(c: &mut Client, lost_after: Duration) -> Result<Vec<String>> {
    let secs = lost_after.as_secs_f64();
    // The call is in the select list, evaluated for the rows the joins and
    // filters keep: in WHERE, the planner may push it down to every row
    // of pg_stat_activity.
    let rows = c.query_typed(
        "SELECT a.name, pg_terminate_backend(s.pid) FROM oplog_agent a \
         JOIN pg_stat_activity s ON s.pid = a.backend_pid AND s.backend_start = a.backend_start \
         WHERE a.stopped_at IS NULL AND a.heartbeat_at < now() - make_interval(secs => $1) \
           AND s.pid <> pg_backend_pid()",
        &[(&secs, Type::FLOAT8)],
    )?;
    rows.iter()
        .filter(|r| r.try_get::<_, bool>(1).unwrap_or(false))
        .map(|r| Ok(r.try_get(0)?))
        .collect()
}

/// Deletes runs, and agents stopped or lost, older than `retention`.
pub fn prune(c: &mut Client, retention: Duration) -> Result<u64> {
    let secs = retention.as_secs_f64();
    let runs = c.execute_typed(
        "DELETE FROM oplog_job_run WHERE expected_at < now() - make_interval(secs => $1) \
         AND state <> 'in_progress'",
        &[(&secs, Type::FLOAT8)],
    )?;
    c.execute_typed(
        "DELETE FROM oplog_agent WHERE heartbeat_at < now() - make_interval(secs => $1)",
        &[(&secs, Type::FLOAT8)],
    )?;
    Ok(runs)
}

/// Every agent in the registry, running ones first.
pub fn agents(c: &mut Client) -> Result<Vec<AgentRow>> {
    let rows = c.query_typed(
        "SELECT id, name, host, pid, version, started_at, heartbeat_at, \
                extract(epoch FROM now() - heartbeat_at)::float8, stopped_at IS NOT NULL, holds \
         FROM oplog_agent ORDER BY stopped_at IS NOT NULL, heartbeat_at DESC LIMIT 1000",
        &[],
    )?;
    rows.iter()
        .map(|r| {
            Ok(AgentRow {
                id: r.try_get(0)?,
                name: r.try_get(1)?,
                host: r.try_get(2)?,
                pid: r.try_get(3)?,
                version: r.try_get(4)?,
                started_at: r.try_get(5)?,
                heartbeat_at: r.try_get(6)?,
                heartbeat_age: Duration::from_secs_f64(r.try_get::<_, f64>(7)?.max(0.0)),
                stopped: r.try_get(8)?,
                holds: r.try_get(9)?,
            })
        })
        .collect()
}

/// The newest `limit` runs of `job`, newest first, with their agent's name.
pub fn runs(c: &mut Client, job: &str, limit: i64) -> Result<Vec<RunRow>> {
    let rows = c.query_typed(
        "SELECT r.id, r.job, a.name, r.expected_at, r.triggered_at, r.started_at, r.ended_at, \
                r.state, r.detail \
         FROM oplog_job_run r LEFT JOIN oplog_agent a ON a.id = r.agent \
         WHERE r.job = $1 ORDER BY r.expected_at DESC, r.id DESC LIMIT $2",
        &[(&job, Type::TEXT), (&limit, Type::INT8)],
    )?;
    rows.iter()
        .map(|r| {
            Ok(RunRow {
                id: r.try_get(0)?,
                job: r.try_get(1)?,
                agent: r.try_get(2)?,
                expected_at: r.try_get(3)?,
                triggered_at: r.try_get(4)?,
                started_at: r.try_get(5)?,
                ended_at: r.try_get(6)?,
                state: r.try_get(7)?,
                detail: r.try_get(8)?,
            })
        })
        .collect()
}

/// How many runs of `job` the run log holds, by state.
pub fn run_counts(c: &mut Client, job: &str) -> Result<Vec<(String, i64)>> {
    let rows = c.query_typed(
        "SELECT state, count(*) FROM oplog_job_run WHERE job = $1 GROUP BY state",
        &[(&job, Type::TEXT)],
    )?;
    rows.iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
        .collect()
}

/// The jobs the run log knows, by name.
pub fn jobs(c: &mut Client) -> Result<Vec<String>> {
    let rows = c.query_typed(
        "SELECT DISTINCT job FROM oplog_job_run ORDER BY job LIMIT 1000",
        &[],
    )?;
    rows.iter().map(|r| Ok(r.try_get(0)?)).collect()
}

/// An error for a registry or run log that is not there.
pub fn missing_tables(e: Error) -> Error {
    match &e {
        Error::Postgres(p) if p.code() == Some(&postgres::error::SqlState::UNDEFINED_TABLE) => {
            Error::Config(format!(
                "the agents' tables are missing ({e}); run `oplog migrate` on the source first"
            ))
        }
        _ => e,
    }
}
