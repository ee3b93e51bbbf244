//! The agent's loop: its registration and heartbeat, the workers it holds
//! (each under a session-level advisory lock on the source, so that one
//! agent at a time runs it and another takes over as soon as the holder's
//! session ends), and the scheduled jobs it claims slot by slot.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use oplog::relay::{NatsTls, RelayOptions};
use oplog::{
    Database, FollowOptions, Follower, Keyring, LiveEvent, LiveOptions, Oplog, Selection,
    SubscribeOptions, Subscription, Target, TypeCatalog,
};
use postgres::Client;
use tracing::{error, info, info_span, warn};
use uuid::Uuid;

use super::config::{Config, FollowerConfig, JobConfig, RelayConfig, SubscriptionConfig};
use super::records::{self, FAILED};
use super::{jobs, Shared, WorkerState};

/// How long a stopping agent waits for its jobs in progress.
const JOB_GRACE: Duration = Duration::from_secs(30);

/// The pause before a worker that failed runs again.
const WORKER_RETRY: Duration = Duration::from_secs(2);

/// One agent of `oplog serve`.
pub struct Agent {
    config: Arc<Config>,
    source: Database,
    /// Reads entries with the keyring, when there is one.
    reader: Option<Oplog>,
    id: Uuid,
    name: String,
    host: String,
    stop: Arc<AtomicBool>,
    shared: Arc<Shared>,
}

/// A worker this agent runs on a thread of its own.
struct Running {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<()>,
}

/// A job run in progress on this agent.
struct JobRun {
    id: i64,
    job: String,
    handle: JoinHandle<()>,
}

/// What a worker is.
#[derive(Clone)]
pub(super) enum Worker {
    Follower(FollowerConfig),
    Relay(RelayConfig),
    Subscription(SubscriptionConfig),
}

impl Worker {
    pub(super) fn name(&self) -> &str {
        match self {
            Worker::Follower(c) => &c.name,
            Worker::Relay(c) => &c.name,
            Worker::Subscription(c) => &c.name,
        }
    }

    pub(super) fn kind(&self) -> &'static str {
        match self {
            Worker::Follower(_) => "follower",
            Worker::Relay(_) => "relay",
            Worker::Subscription(_) => "subscription",
        }
    }
}

/// The followers, relays and subscriptions of `config`, in that order.
pub(super) fn workers(config: &Config) -> Vec<Worker> {
    config
        .followers
        .iter()
        .cloned()
        .map(Worker::Follower)
        .chain(config.relays.iter().cloned().map(Worker::Relay))
        .chain(
            config
                .subscriptions
                .iter()
                .cloned()
                .map(Worker::Subscription),
        )
        .collect()
}

impl Agent {
    /// An agent for `config` on `source`. Nothing connects until
    /// [`Agent::run`].
    pub fn new(config: Config, source: Database, keyring: Option<Keyring>) -> Agent {
        let host = hostname();
        let name = config.agent.name.clone().unwrap_or_else(|| host.clone());
        let shared = Arc::new(Shared::default());
        if let Ok(mut w) = shared.workers.lock() {
            for worker in workers(&config) {
                w.insert(worker.name().to_string(), WorkerState::default());
            }
        }
        Agent {
            config: Arc::new(config),
            source,
            reader: keyring.map(|k| Oplog::new(TypeCatalog::new(), k)),
            id: Uuid::new_v4(),
            name,
            host,
            stop: Arc::new(AtomicBool::new(false)),
            shared,
        }
    }

    /// Set it to stop: workers finish their batch, locks are released,
    /// the agent is marked stopped.
    pub fn stop_flag(&self) -> Arc<AtomicBool> {
        self.stop.clone()
    }

    /// What the status page needs of this agent.
    pub fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }

    /// This agent's id in the registry.
    pub fn id(&self) -> Uuid {
        self.id
    }

    /// The configuration it runs.
    pub fn config(&self) -> Arc<Config> {
        self.config.clone()
    }

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// Runs until stopped. Lost sessions to the source are retried: while
    /// the agent has none it holds nothing (its workers are stopped), so
    /// that other agents take over.
    pub fn run(&self) -> oplog::Result<()> {
        let _span = info_span!("agent", agent = %self.name, id = %self.id).entered();
        info!(host = %self.host, pid = std::process::id(), "agent starting");
        let mut running: BTreeMap<String, Running> = BTreeMap::new();
        let mut jobs_running: Vec<JobRun> = Vec::new();
        let mut handled: BTreeMap<String, SystemTime> = BTreeMap::new();
        let mut backoff = Duration::from_millis(200);
        while !self.stopping() {
            match self.session(&mut running, &mut jobs_running, &mut handled) {
                Ok(()) => break,
                Err(e) => {
                    self.set_session(Some(e.to_string()));
                    error!(error = %e, "lost the session to the source; letting go of every worker");
                    self.stop_workers(&mut running);
                    oplog::pause_unless(&self.stop, backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
        self.stop_workers(&mut running);
        self.end_jobs(jobs_running);
        if let Ok(mut c) = self.source.connect() {
            let _ = records::stopped(&mut c, self.id);
        }
        info!("agent stopped");
        Ok(())
    }

    fn set_session(&self, problem: Option<String>) {
        if let Ok(mut s) = self.shared.session_problem.lock() {
            *s = problem;
        }
    }

    /// One session to the source: register, then heartbeat, take over,
    /// schedule, until stopped or the session fails.
    fn session(
        &self,
        running: &mut BTreeMap<String, Running>,
        jobs_running: &mut Vec<JobRun>,
        handled: &mut BTreeMap<String, SystemTime>,
    ) -> oplog::Result<()> {
        let mut c = self.source.connect()?;
        records::register(
            &mut c,
            self.id,
            &self.name,
            &self.host,
            i32::try_from(std::process::id()).unwrap_or(i32::MAX),
            env!("CARGO_PKG_VERSION"),
        )
        .map_err(records::missing_tables)?;
        self.set_session(None);
        info!("registered on the source");
        let agent = &self.config.agent;
        let mut beat = Instant::now() - agent.heartbeat;
        let mut polled = Instant::now() - agent.takeover_poll;
        let mut pruned: Option<Instant> = None;
        let all = workers(&self.config);
        while !self.stopping() {
            // Workers whose thread ended (an error they could not get
            // past): let go of them, so that they start again here or
            // elsewhere.
            let ended: Vec<String> = running
                .iter()
                .filter(|(_, r)| r.handle.is_finished())
                .map(|(n, _)| n.clone())
                .collect();
            for name in ended {
                if let Some(r) = running.remove(&name) {
                    let _ = r.handle.join();
                }
                records::release(&mut c, &name)?;
                self.mark(&name, |w| w.held = false);
            }
            if polled.elapsed() >= agent.takeover_poll {
                polled = Instant::now();
                for worker in &all {
                    if running.contains_key(worker.name()) || self.stopping() {
                        continue;
                    }
                    if records::try_hold(&mut c, worker.name())? {
                        info!(worker = worker.name(), kind = worker.kind(), "took over");
                        self.mark(worker.name(), |w| w.held = true);
                        running.insert(worker.name().to_string(), self.start_worker(worker));
                    }
                }
            }
            jobs_running.retain(|j| !j.handle.is_finished());
            self.schedule(&mut c, jobs_running, handled)?;
            if beat.elapsed() >= agent.heartbeat {
                beat = Instant::now();
                let mut holds: Vec<String> = running.keys().cloned().collect();
                holds.extend(jobs_running.iter().map(|j| format!("job:{}", j.job)));
                records::heartbeat(&mut c, self.id, &holds)?;
                for (id, job) in records::fail_orphans(&mut c, agent.lost_after)? {
                    warn!(run = id, job = %job, "a run whose agent died is marked failed");
                }
                for lost in records::end_lost_sessions(&mut c, agent.lost_after)? {
                    warn!(agent = %lost, "ended the session of an agent that stopped heartbeating");
                }
            }
            if pruned.is_none_or(|p| p.elapsed() >= Duration::from_secs(3600)) {
                pruned = Some(Instant::now());
                let n = records::prune(&mut c, agent.run_log_retention)?;
                if n > 0 {
                    info!(runs = n, "pruned the run log");
                }
            }
            oplog::pause_unless(&self.stop, Duration::from_millis(100));
        }
        Ok(())
    }

    fn mark(&self, worker: &str, f: impl FnOnce(&mut WorkerState)) {
        if let Ok(mut w) = self.shared.workers.lock() {
            if let Some(state) = w.get_mut(worker) {
                f(state);
            }
        }
    }

    /// Claims each job's due slot, or records it as dropped once its
    /// window has passed.
    fn schedule(
        &self,
        c: &mut Client,
        jobs_running: &mut Vec<JobRun>,
        handled: &mut BTreeMap<String, SystemTime>,
    ) -> oplog::Result<()> {
        let now = SystemTime::now();
        for job in &self.config.jobs {
            let Some(slot) = job.schedule.slot_at_or_before(now) else {
                continue;
            };
            if handled.get(&job.name).is_some_and(|h| *h >= slot) {
                continue;
            }
            let late = now.duration_since(slot).unwrap_or_default();
            if late <= job.window {
                if let Some(id) = records::claim(c, &job.name, self.id, slot)? {
                    info!(job = %job.name, run = id, "claimed its slot");
                    jobs_running.push(self.start_job(job, id));
                }
            } else if records::last_slot(c, &job.name)?.is_some_and(|last| last < slot)
                && records::drop_slot(c, &job.name, self.id, slot, job.window)?
            {
                // A job that has never run has missed nothing yet.
                warn!(job = %job.name, "slot dropped: not started within its window");
            }
            handled.insert(job.name.clone(), slot);
        }
        Ok(())
    }

    fn start_job(&self, job: &JobConfig, id: i64) -> JobRun {
        let (kind, source, reader, name) = (
            job.kind.clone(),
            self.source.clone(),
            self.reader.clone(),
            job.name.clone(),
        );
        let handle = std::thread::spawn(move || {
            let _span = info_span!("run", job = %name, run = id).entered();
            info!(kind = kind.name(), "run started");
            let (state, detail) = jobs::run(&kind, &source, reader.as_ref());
            if state == FAILED {
                warn!(detail = %detail, "run failed");
            } else {
                info!(detail = %detail, "run ended");
            }
            for attempt in 0..5u32 {
                match source
                    .connect()
                    .and_then(|mut c| records::finish(&mut c, id, state, &detail))
                {
                    Ok(()) => return,
                    Err(e) => {
                        warn!(error = %e, attempt, "cannot record the run's end; trying again");
                        std::thread::sleep(Duration::from_secs(1) * (attempt + 1));
                    }
                }
            }
        });
        JobRun {
            id,
            job: job.name.clone(),
            handle,
        }
    }

    /// Waits a while for jobs in progress; those still running are marked
    /// failed (their run stays recorded as started by this agent).
    fn end_jobs(&self, jobs_running: Vec<JobRun>) {
        let deadline = Instant::now() + JOB_GRACE;
        while Instant::now() < deadline && jobs_running.iter().any(|j| !j.handle.is_finished()) {
            std::thread::sleep(Duration::from_millis(50));
        }
        let unfinished: Vec<&JobRun> = jobs_running
            .iter()
            .filter(|j| !j.handle.is_finished())
            .collect();
        if unfinished.is_empty() {
            return;
        }
        if let Ok(mut c) = self.source.connect() {
            for j in unfinished {
                let detail = serde_json::json!({"error": "the agent stopped before the run ended"});
                let _ = records::finish(&mut c, j.id, FAILED, &detail);
            }
        }
    }

    fn stop_workers(&self, running: &mut BTreeMap<String, Running>) {
        for r in running.values() {
            r.stop.store(true, Ordering::Relaxed);
        }
        for (name, r) in std::mem::take(running) {
            let _ = r.handle.join();
            self.mark(&name, |w| w.held = false);
            info!(worker = %name, "let go");
        }
    }

    fn start_worker(&self, worker: &Worker) -> Running {
        let stop = Arc::new(AtomicBool::new(false));
        let (flag, agent_stop) = (stop.clone(), self.stop.clone());
        let (worker, source, shared) = (worker.clone(), self.source.clone(), self.shared.clone());
        // A relay reads no payload: without a keyring it gets one that
        // opens nothing.
        let oplog = self
            .reader
            .clone()
            .unwrap_or_else(|| Oplog::new(TypeCatalog::new(), Keyring::generate()));
        let handle = std::thread::spawn(move || {
            let name = worker.name().to_string();
            let _span = info_span!("worker", worker = %name, kind = worker.kind()).entered();
            let count = |n: u64| {
                if let Ok(mut w) = shared.workers.lock() {
                    if let Some(state) = w.get_mut(&name) {
                        state.entries += n;
                    }
                }
            };
            let stopped = || flag.load(Ordering::Relaxed) || agent_stop.load(Ordering::Relaxed);
            let result = run_worker(&worker, &oplog, &source, &flag, &count);
            if let Err(e) = &result {
                if !stopped() {
                    error!(error = %e, "worker failed; letting go of it");
                }
            }
            if let Ok(mut w) = shared.workers.lock() {
                if let Some(state) = w.get_mut(&name) {
                    state.last_error = result.err().map(|e| e.to_string());
                }
            }
            if !stopped() {
                // Give another agent a chance before this one takes it
                // again.
                oplog::pause_unless(&flag, WORKER_RETRY);
            }
        });
        Running { stop, handle }
    }
}

/// Runs one worker until `stop` is set or it fails.
fn run_worker(
    worker: &Worker,
    oplog: &Oplog,
    source: &Database,
    stop: &Arc<AtomicBool>,
    count: &(dyn Fn(u64) + Sync),
) -> oplog::Result<()> {
    let events = |event: &LiveEvent<'_>| match event {
        LiveEvent::Reconnecting {
            error, retry_in, ..
        } => {
            warn!(error = %error, retry_in = ?retry_in, "waiting");
        }
        LiveEvent::Passed { delivered } => count(*delivered),
        LiveEvent::LagWarning(lag) => {
            warn!(aggregate = %lag.aggregate, seconds = lag.seconds, "lagging");
        }
        _ => {}
    };
    match worker {
        Worker::Follower(c) => {
            let mut follower = Follower::new(
                oplog,
                source.clone(),
                Target::database(&c.into),
                FollowOptions {
                    poll_interval: c.poll,
                    batch_size: c.batch_size,
                    ..FollowOptions::default()
                },
            )
            .with_stop(stop.clone());
            follower.run(&mut |event| match event {
                oplog::FollowEvent::Applied(p) => count(p.batch.len() as u64),
                oplog::FollowEvent::Reconnecting { error, .. } => {
                    warn!(error = %error, "waiting");
                }
                oplog::FollowEvent::WaitingForLock { holder } => {
                    info!(holder = ?holder, "waiting for the replica's lock");
                }
                _ => {}
            })?;
        }
        Worker::Relay(c) => {
            let opts = relay_options(c)?;
            let mut events = events;
            oplog::relay::run(
                source.clone(),
                opts,
                LiveOptions {
                    poll_interval: c.poll,
                    ..LiveOptions::default()
                },
                stop.clone(),
                &mut events,
            )?;
        }
        Worker::Subscription(c) => {
            let selection = match (&c.prefix, c.aggregates.is_empty()) {
                (Some(p), _) => Selection::Prefix(p.clone()),
                (None, false) => Selection::Aggregates(c.aggregates.clone()),
                (None, true) => Selection::All,
            };
            let target = Database::parse(&c.into)?;
            let mut client = target.connect()?;
            client.batch_execute(crate::cli::subscribe::DELIVERED)?;
            // One subscription writes to its target at a time, whatever
            // the agents believe they hold.
            let key = format!("oplog-subscribe/{}", c.name);
            while !client
                .query_one(
                    "SELECT pg_try_advisory_lock(hashtextextended($1, 0))",
                    &[&key],
                )?
                .get::<_, bool>(0)
            {
                if stop.load(Ordering::Relaxed) {
                    return Ok(());
                }
                oplog::pause_unless(stop, Duration::from_secs(1));
            }
            Subscription::new(
                oplog,
                source.clone(),
                SubscribeOptions {
                    selection,
                    poll_interval: c.poll,
                    ..SubscribeOptions::new(c.name.clone())
                },
            )
            .with_stop(stop.clone())
            .on_event(events)
            .run_in(&mut client, crate::cli::subscribe::record)?;
        }
    }
    Ok(())
}

/// The relay's options: NATS credentials read from their files.
fn relay_options(c: &RelayConfig) -> oplog::Result<RelayOptions> {
    let auth = crate::cli::relay::nats_auth(
        c.creds_file.clone(),
        c.token_file.as_deref(),
        c.user.clone(),
        c.password_file.as_deref(),
    )
    .map_err(|f| oplog::Error::Config(format!("relay {}: {}", c.name, f.message())))?;
    Ok(RelayOptions {
        nats_url: c.nats.clone(),
        auth,
        tls: NatsTls {
            root_certificates: c.ca.clone(),
            client_certificate: c.cert.clone().zip(c.key.clone()),
            required: c.tls,
        },
        stream: c.stream.clone(),
        subject_prefix: c.subject_prefix.clone(),
        aggregates: c.aggregates.clone(),
        ..RelayOptions::default()
    })
}

/// This host's name, as the kernel has it.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".into())
}
