//! `oplog serve`: an agent that keeps followers, relays and subscriptions
//! running and runs scheduled jobs (trim, verify, anchor, checkpoint,
//! rewrap), on as
//! many hosts as wanted with the same configuration.
//!
//! - Each worker (follower, relay, subscription) runs on one agent at a
//!   time: the agent holds a session-level advisory lock on the source
//!   named after it, on the one connection it registers and heartbeats on.
//!   When that session ends (the agent dies, is killed, or loses its
//!   connection) the lock goes with it, and every other agent tries to take
//!   what nobody holds every `takeover_poll`. An agent that loses its
//!   session stops its workers at once (followers also hold the replica's
//!   lock, subscriptions a lock on their target, and the relay publishes
//!   exactly once whatever runs it).
//! - Each job's slots (an interval aligned on the epoch, or a cron
//!   expression in UTC) are claimed in the run log (`oplog_job_run`,
//!   unique on job and slot), so a slot runs once across all agents; a
//!   slot no agent could start within its window is recorded as
//!   `dropped_out_of_window`, not run late. A run whose agent stopped
//!   heartbeating is marked `failed` by the agent that notices.
//! - Agents register in `oplog_agent` (host, pid, version, heartbeat, what
//!   they hold); one whose heartbeat is older than `lost_after` is shown as
//!   lost.
//! - `--listen` serves `/healthz`, `/status` (JSON), `/metrics`
//!   (Prometheus) and `/` (a page that refreshes itself).

use std::collections::BTreeMap;
use std::sync::Mutex;

pub mod config;
pub mod gather;
pub mod http;
pub mod jobs;
pub mod records;
pub mod render;
pub mod schedule;
pub mod serve;
pub mod status;

/// What this agent knows of its workers and session, shared with its
/// status page.
#[derive(Debug, Default)]
pub struct Shared {
    /// Workers by name.
    pub workers: Mutex<BTreeMap<String, WorkerState>>,
    /// Why the agent has no session to the source, when it has none.
    pub session_problem: Mutex<Option<String>>,
}

/// One worker as this agent sees it.
#[derive(Debug, Default, Clone)]
pub struct WorkerState {
    /// Whether this agent runs it now.
    pub held: bool,
    /// Entries it handed over on this agent since it started.
    pub entries: u64,
    /// Why it last stopped, when it failed.
    pub last_error: Option<String>,
}
