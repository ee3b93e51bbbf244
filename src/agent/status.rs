//! What an agent shows about itself and the agents it shares a source
//! database with: plain data, filled from the database by the agent and
//! rendered by [`render`](super::render) as JSON, Prometheus metrics and an
//! HTML page.
//!
//! Every type here is data only: no connection, no clock. Timestamps are
//! RFC 3339 strings in UTC, as the database reported them, so that a status
//! serialised by one agent reads back unchanged on another.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The states of a scheduled job's run, in the order a run goes through
/// them (a run ends in exactly one of the last three).
pub const RUN_STATES: [&str; 4] = ["in_progress", "success", "failed", "dropped_out_of_window"];

/// The states of an agent.
pub const AGENT_STATES: [&str; 3] = ["running", "lost", "stopped"];

/// Everything one agent knows at one moment: the agents sharing its source,
/// the workers and scheduled jobs they run, and the consumers' lag.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Status {
    /// When this status was read, RFC 3339 in UTC.
    pub generated_at: String,
    /// Whether this agent is ready: connected to its source and running
    /// what its configuration asks for.
    pub ready: bool,
    /// Why this agent is not ready, one reason each (empty when ready).
    pub not_ready: Vec<String>,
    /// The agents registered on the source, this one included.
    pub agents: Vec<AgentStatus>,
    /// The followers, relays and subscriptions the configuration names.
    pub workers: Vec<WorkerStatus>,
    /// The scheduled jobs the configuration names.
    pub jobs: Vec<JobStatus>,
    /// The consumers registered on the source, with their lag.
    pub consumers: Vec<ConsumerStatus>,
}

/// One agent registered on the source.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct AgentStatus {
    /// The agent's unique id, new each time it starts.
    pub id: String,
    /// The agent's name from its configuration.
    pub name: String,
    /// The host the agent runs on.
    pub host: String,
    /// The agent's process id on its host.
    pub pid: i32,
    /// The oplog version the agent runs.
    pub version: String,
    /// When the agent started, RFC 3339 in UTC.
    pub started_at: String,
    /// When the agent last reported itself alive, RFC 3339 in UTC.
    pub heartbeat_at: String,
    /// Seconds between the last heartbeat and [`Status::generated_at`].
    pub heartbeat_age_s: f64,
    /// `"running"`, `"lost"` (no heartbeat for too long) or `"stopped"`
    /// (it said it stopped); see [`AGENT_STATES`].
    pub state: String,
    /// The names of the workers and jobs this agent holds.
    pub holds: Vec<String>,
    /// Whether this is the agent that produced the status.
    pub this_agent: bool,
}

/// One follower, relay or subscription that some agent runs.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct WorkerStatus {
    /// The worker's name from the configuration.
    pub name: String,
    /// `"follower"`, `"relay"` or `"subscription"`.
    pub kind: String,
    /// The name of the agent that holds the worker, if any does.
    pub held_by: Option<String>,
    /// Entries the worker handed over in this agent since it started.
    pub entries: u64,
    /// The last error the worker reported in this agent, if any.
    pub last_error: Option<String>,
}

/// One scheduled job and its recent runs.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct JobStatus {
    /// The job's name from the configuration.
    pub name: String,
    /// What the job does (for example `"verify"` or `"trim"`).
    pub kind: String,
    /// The job's schedule as the configuration wrote it.
    pub schedule: String,
    /// Seconds after a run's expected time within which it may still
    /// start; a run that has not started by then is dropped.
    pub window_s: f64,
    /// When the next run is expected, RFC 3339 in UTC (`None`: never).
    pub next_due: Option<String>,
    /// The job's recent runs, newest first.
    pub runs: Vec<RunStatus>,
    /// How many runs the run log holds for this job, by state (see
    /// [`RUN_STATES`]); states without runs may be absent.
    pub run_counts: BTreeMap<String, u64>,
}

impl JobStatus {
    /// The newest run, whatever its state.
    pub fn last_run(&self) -> Option<&RunStatus> {
        self.runs.first()
    }

    /// The newest run that ran to its end, successfully or not.
    pub fn last_finished_run(&self) -> Option<&RunStatus> {
        self.runs.iter().find(|run| run.is_finished())
    }
}

/// One run of a scheduled job.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct RunStatus {
    /// The run's id in the run log.
    pub id: i64,
    /// The name of the job the run belongs to.
    pub job: String,
    /// The name of the agent that took the run, if one did.
    pub agent: Option<String>,
    /// When the schedule said the run was due, RFC 3339 in UTC.
    pub expected_at: String,
    /// When an agent took the run, RFC 3339 in UTC.
    pub triggered_at: Option<String>,
    /// When the run started, RFC 3339 in UTC.
    pub started_at: Option<String>,
    /// When the run ended, RFC 3339 in UTC.
    pub ended_at: Option<String>,
    /// `"in_progress"`, `"success"`, `"failed"` or
    /// `"dropped_out_of_window"`; see [`RUN_STATES`].
    pub state: String,
    /// What the run reported, as the job wrote it (for a verify run, its
    /// `"findings"`; for a failed run, its error).
    pub detail: serde_json::Value,
}

impl RunStatus {
    /// Whether the run ran to its end: it succeeded or failed (a dropped
    /// run never ran, and one in progress has not ended).
    pub fn is_finished(&self) -> bool {
        self.state == "success" || self.state == "failed"
    }

    /// The number of findings a verify run reported (`"findings": N` in its
    /// detail), if its detail holds a non-negative integer there.
    pub fn findings(&self) -> Option<u64> {
        self.detail.get("findings")?.as_u64()
    }
}

/// One consumer of the log registered on the source.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ConsumerStatus {
    /// The consumer's name.
    pub name: String,
    /// Whether the consumer has not reported itself alive for too long.
    pub stalled: bool,
    /// Aggregates parked for this consumer (waiting for `resume`).
    pub parked: i64,
    /// Aggregates with entries the consumer has not acknowledged.
    pub aggregates_behind: i64,
    /// Entries the consumer has not acknowledged, over all aggregates.
    pub entries_behind: i64,
    /// Seconds the oldest entry not yet acknowledged has waited.
    pub oldest_seconds: f64,
    /// The aggregates furthest behind, worst first.
    pub lag: Vec<LagStatus>,
}

/// How far one consumer is behind on one aggregate.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct LagStatus {
    /// The aggregate.
    pub aggregate: String,
    /// Entries of the aggregate not yet acknowledged.
    pub entries: i64,
    /// Seconds the aggregate's oldest entry not yet acknowledged has waited.
    pub seconds: f64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run(state: &str, detail: serde_json::Value) -> RunStatus {
        RunStatus {
            job: "verify".into(),
            state: state.into(),
            detail,
            ..RunStatus::default()
        }
    }

    #[test]
    fn findings_are_read_from_a_runs_detail_when_they_are_a_count() {
        for (detail, findings) in [
            (json!({"findings": 3}), Some(3)),
            (json!({"findings": 0, "checked": 10}), Some(0)),
            (json!({"findings": -1}), None),
            (json!({"findings": 1.5}), None),
            (json!({"findings": "3"}), None),
            (json!({"error": "connection refused"}), None),
            (json!([1, 2]), None),
            (serde_json::Value::Null, None),
        ] {
            assert_eq!(
                run("success", detail.clone()).findings(),
                findings,
                "{detail}"
            );
        }
    }

    #[test]
    fn the_last_finished_run_skips_runs_in_progress_and_dropped() {
        let job = JobStatus {
            runs: vec![
                run("in_progress", json!({})),
                run("dropped_out_of_window", json!({})),
                run("failed", json!({"findings": 2})),
                run("success", json!({"findings": 0})),
            ],
            ..JobStatus::default()
        };
        assert_eq!(
            job.last_run().map(|r| r.state.as_str()),
            Some("in_progress")
        );
        assert_eq!(
            job.last_finished_run().and_then(RunStatus::findings),
            Some(2)
        );
        assert_eq!(JobStatus::default().last_finished_run(), None);
    }

    #[test]
    fn a_status_reads_back_from_its_json() {
        let status = Status {
            generated_at: "2026-01-01T00:00:00Z".into(),
            ready: true,
            jobs: vec![JobStatus {
                name: "verify".into(),
                runs: vec![run("success", json!({"findings": 0}))],
                run_counts: BTreeMap::from([("success".to_string(), 1)]),
                ..JobStatus::default()
            }],
            ..Status::default()
        };
        let json = serde_json::to_string(&status).unwrap();
        assert_eq!(serde_json::from_str::<Status>(&json).unwrap(), status);
    }
}
