//! Gathering a [`Status`] from the source (agents, runs, consumers), the
//! configuration (jobs' schedules, workers) and, on an agent, what it
//! holds.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use postgres::Client;
use uuid::Uuid;

use super::config::Config;
use super::records;
use super::status::{
    AgentStatus, ConsumerStatus, JobStatus, LagStatus, RunStatus, Status, WorkerStatus,
};
use super::Shared;

/// Runs shown per job.
const RUNS_SHOWN: i64 = 10;
/// Lagging aggregates shown per consumer (worst first).
const LAG_SHOWN: usize = 100;
/// A consumer behind and not advancing for this long is stalled.
const STALLED_AFTER: Duration = Duration::from_secs(300);

/// RFC 3339 in UTC, to the millisecond.
pub fn time(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// On an agent: which one it is and what it knows.
pub struct Local<'a> {
    /// Its id in the registry.
    pub id: Uuid,
    /// Its workers and session.
    pub shared: &'a Shared,
}

/// The status of everything on the source, as `config` (when given)
/// describes it and `local` (on an agent) holds it.
pub fn status(
    c: &mut Client,
    config: Option<&Config>,
    local: Option<&Local<'_>>,
) -> oplog::Result<Status> {
    let now = SystemTime::now();
    let lost_after = config.map_or(Duration::from_secs(10), |c| c.agent.lost_after);
    let mut not_ready = Vec::new();
    let mut status = Status {
        generated_at: time(now),
        ..Status::default()
    };
    let agents = records::agents(c).map_err(records::missing_tables)?;
    for a in &agents {
        let state = if a.stopped {
            "stopped"
        } else if a.heartbeat_age > lost_after {
            "lost"
        } else {
            "running"
        };
        status.agents.push(AgentStatus {
            id: a.id.to_string(),
            name: a.name.clone(),
            host: a.host.clone(),
            pid: a.pid,
            version: a.version.clone(),
            started_at: time(a.started_at),
            heartbeat_at: time(a.heartbeat_at),
            heartbeat_age_s: a.heartbeat_age.as_secs_f64(),
            state: state.into(),
            holds: if state == "running" {
                a.holds.clone()
            } else {
                Vec::new()
            },
            this_agent: local.is_some_and(|l| l.id == a.id),
        });
    }
    let holder = |name: &str| {
        status
            .agents
            .iter()
            .find(|a| a.state == "running" && a.holds.iter().any(|h| h == name))
            .map(|a| a.name.clone())
    };
    if let Some(config) = config {
        let mine: BTreeMap<String, super::WorkerState> = local
            .and_then(|l| l.shared.workers.lock().ok().map(|w| w.clone()))
            .unwrap_or_default();
        let mut workers = Vec::new();
        for worker in super::serve::workers(config) {
            let name = worker.name();
            let here = mine.get(name);
            workers.push(WorkerStatus {
                held_by: holder(name),
                entries: here.map_or(0, |w| w.entries),
                last_error: here.and_then(|w| w.last_error.clone()),
                name: name.to_string(),
                kind: worker.kind().into(),
            });
        }
        for w in &workers {
            if let Some(e) = &w.last_error {
                not_ready.push(format!("{} {} failed: {e}", w.kind, w.name));
            }
        }
        status.workers = workers;
    }
    let jobs: Vec<(String, String, String, f64, Option<String>)> = match config {
        Some(config) => config
            .jobs
            .iter()
            .map(|j| {
                (
                    j.name.clone(),
                    j.kind.name().to_string(),
                    j.schedule.describe(),
                    j.window.as_secs_f64(),
                    j.schedule.next_after(now).map(time),
                )
            })
            .collect(),
        None => records::jobs(c)?
            .into_iter()
            .map(|name| (name, String::new(), String::new(), 0.0, None))
            .collect(),
    };
    for (name, kind, schedule, window_s, next_due) in jobs {
        let runs: Vec<RunStatus> = records::runs(c, &name, RUNS_SHOWN)?
            .into_iter()
            .map(|r| RunStatus {
                id: r.id,
                job: r.job,
                agent: r.agent,
                expected_at: time(r.expected_at),
                triggered_at: r.triggered_at.map(time),
                started_at: r.started_at.map(time),
                ended_at: r.ended_at.map(time),
                state: r.state,
                detail: r.detail,
            })
            .collect();
        let run_counts = records::run_counts(c, &name)?
            .into_iter()
            .map(|(state, n)| (state, u64::try_from(n).unwrap_or(0)))
            .collect();
        status.jobs.push(JobStatus {
            name,
            kind,
            schedule,
            window_s,
            next_due,
            runs,
            run_counts,
        });
    }
    for info in oplog::consumers(c, STALLED_AFTER)? {
        let mut lag: Vec<LagStatus> = oplog::lag(c, &info.name)?
            .into_iter()
            .filter(|l| l.entries > 0)
            .map(|l| LagStatus {
                aggregate: l.aggregate,
                entries: l.entries,
                seconds: l.seconds,
            })
            .collect();
        lag.sort_by(|a, b| {
            b.seconds
                .total_cmp(&a.seconds)
                .then(b.entries.cmp(&a.entries))
        });
        lag.truncate(LAG_SHOWN);
        status.consumers.push(ConsumerStatus {
            name: info.name,
            stalled: info.stalled,
            parked: info.parked,
            aggregates_behind: info.aggregates_behind,
            entries_behind: info.entries_behind,
            oldest_seconds: info.lag_s,
            lag,
        });
    }
    if let Some(local) = local {
        if let Ok(problem) = local.shared.session_problem.lock() {
            if let Some(p) = problem.as_ref() {
                not_ready.insert(0, format!("no session to the source: {p}"));
            }
        }
        if !status
            .agents
            .iter()
            .any(|a| a.this_agent && a.state == "running")
        {
            not_ready.insert(0, "this agent is not registered as running".into());
        }
    }
    status.ready = not_ready.is_empty();
    status.not_ready = not_ready;
    Ok(status)
}
