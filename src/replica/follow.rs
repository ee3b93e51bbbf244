//! Follow: keep a replica continuously up to date with its source.
//!
//! A [`Follower`] runs [`Replayer`] passes in a loop: each pass applies what
//! the source has committed since the replica's checkpoints, in the same
//! transactions as the checkpoints, so that stopping or being killed at any
//! moment loses and repeats nothing. Between passes it waits for a
//! notification on the source (`LISTEN oplog_entry`, sent by writers that
//! opt in with [`Oplog::with_notify`]) or for its polling interval, whichever
//! comes first: notifications are a hint, polling is the truth. It listens
//! before its first pass, so no wake-up is lost.
//!
//! One follower applies to a replica at a time: it holds a session-level
//! advisory lock on the very connection that writes to the replica, so a
//! follower whose session dies loses the lock and its ability to write in
//! the same instant, and no two followers ever write at once. A second
//! follower waits for the lock, or gives up with a message naming the
//! holder.
//!
//! The follower registers on the source as a consumer and reports how far
//! it has applied each aggregate, so that trimming keeps what it still
//! needs. Lost connections (either database restarting, a terminated
//! backend) are retried with bounded exponential backoff.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use postgres::fallible_iterator::FallibleIterator;
use postgres::Client;

use crate::error::{Error, Result};
use crate::replica::replay::{Progress, ReplayOptions, Replayer, Skip};
use crate::replica::Target;
use crate::source::consumer::{self, AggregateLag};
use crate::source::write::Oplog;
use crate::store;
use crate::store::connect::Database;

/// The channel writers notify on and followers listen to.
pub const NOTIFY_CHANNEL: &str = "oplog_entry";

/// How often an idle follower tells the source it is alive.
const ALIVE_EVERY: Duration = Duration::from_secs(1);

/// How a follower runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FollowOptions {
    /// Consumer name on the source; by default the replica's database, host
    /// and port.
    pub name: Option<String>,
    /// Longest wait between passes without a notification.
    pub poll_interval: Duration,
    /// Return once a pass finds nothing to apply.
    pub until_caught_up: bool,
    /// Wait for another follower's lock instead of failing.
    pub wait_for_lock: bool,
    /// Most entries applied in one replica transaction.
    pub batch_size: usize,
    /// Warn when an aggregate's oldest unapplied entry has been waiting this
    /// long.
    pub lag_warning: Duration,
    /// Longest pause between reconnection attempts.
    pub max_backoff: Duration,
    /// Entries to pass over instead of applying (see [`Skip`]).
    pub skip: Vec<Skip>,
}

impl Default for FollowOptions {
    /// Polling every 50 ms, waiting for the lock, batches of 1,000, a
    /// warning past 10 s of lag, reconnecting at most every 5 s.
    fn default() -> Self {
        FollowOptions {
            name: None,
            poll_interval: Duration::from_millis(50),
            until_caught_up: false,
            wait_for_lock: true,
            batch_size: 1000,
            lag_warning: Duration::from_secs(10),
            max_backoff: Duration::from_secs(5),
            skip: Vec::new(),
        }
    }
}

/// What a follower tells its caller as it goes.
#[derive(Debug)]
#[non_exhaustive]
pub enum FollowEvent<'a> {
    /// Another follower holds the replica's lock (its replica backend pid,
    /// when known); waiting for it.
    WaitingForLock {
        /// The holder's backend pid on the replica.
        holder: Option<i32>,
    },
    /// Holding the lock and registered as `consumer`; following.
    Following {
        /// The consumer name on the source.
        consumer: &'a str,
    },
    /// A batch was committed on the replica.
    Applied(&'a Progress),
    /// A pass found nothing to apply.
    CaughtUp,
    /// A connection was lost or refused; trying again after `retry_in`.
    Reconnecting {
        /// What failed.
        error: &'a Error,
        /// The pause before the next attempt.
        retry_in: Duration,
        /// Attempts since the last working session.
        attempt: u32,
    },
    /// An aggregate's oldest unapplied entry has waited longer than the
    /// warning threshold.
    LagWarning(&'a AggregateLag),
}

/// What a follower did before it stopped.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct FollowReport {
    /// Consumer name on the source.
    pub consumer: String,
    /// Entries applied.
    pub entries_applied: u64,
    /// Passes run.
    pub passes: u64,
    /// Sessions started again after a lost connection.
    pub reconnects: u64,
    /// How long it ran.
    pub elapsed: Duration,
}

/// Keeps a [`Target`] up to date with a source database.
///
/// ```no_run
/// use oplog::{FollowOptions, Follower, Keyring, Oplog, Target, TypeCatalog};
///
/// // Any catalog and the keys: each entry names the catalog stored with it.
/// let oplog = Oplog::new(TypeCatalog::new(), Keyring::load("keys.json".as_ref())?);
/// let mut follower = Follower::new(
///     &oplog,
///     "postgres://postgres@127.0.0.1/app",
///     Target::database("postgres://postgres@127.0.0.1/app_replica"),
///     FollowOptions::default(),
/// );
/// let stop = follower.stop_flag(); // set it (from a signal handler) to stop cleanly
/// let report = follower.run(&mut |event| eprintln!("{event:?}"))?;
/// # Ok::<(), oplog::Error>(())
/// ```
pub struct Follower {
    oplog: Oplog,
    source: Database,
    target: Target,
    options: FollowOptions,
    stop: Arc<AtomicBool>,
}

impl std::fmt::Debug for Follower {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Follower")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

/// Why a session ended without an error.
enum SessionEnd {
    Stopped,
    CaughtUp,
}

impl Follower {
    /// A follower of the source (a connection string or a [`Database`])
    /// into `target`. Nothing connects until [`Follower::run`]; a
    /// connection string that does not parse is reported there.
    pub fn new(
        oplog: &Oplog,
        source: impl Into<Database>,
        target: Target,
        options: FollowOptions,
    ) -> Self {
        Follower {
            oplog: oplog.clone(),
            source: source.into(),
            target,
            options,
            stop: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Set this flag to make [`Follower::run`] return after the batch it is
    /// applying; everything applied stays checkpointed.
    pub fn stop_flag(&self) -> Arc<AtomicBool> {
        self.stop.clone()
    }

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// Follows until stopped, until caught up (with
    /// [`FollowOptions::until_caught_up`]), or until an aggregate cannot be
    /// applied (a divergence, a mapping error, coverage lost to trimming),
    /// which is returned as the error. Lost connections are retried.
    pub fn run(&mut self, events: &mut dyn FnMut(&FollowEvent<'_>)) -> Result<FollowReport> {
        if let Some(name) = &self.options.name {
            consumer::validate_name(name)?;
        }
        let started = Instant::now();
        let mut report = FollowReport::default();
        let mut attempt = 0u32;
        let mut backoff = Duration::from_millis(100);
        while !self.stopping() {
            let mut connected = false;
            match self.session(events, &mut report, &mut connected) {
                Ok(_) => break,
                Err(e) if e.is_connection() => {
                    if connected {
                        attempt = 0;
                        backoff = Duration::from_millis(100);
                    }
                    attempt += 1;
                    report.reconnects += 1;
                    events(&FollowEvent::Reconnecting {
                        error: &e,
                        retry_in: backoff,
                        attempt,
                    });
                    self.pause(backoff);
                    backoff = (backoff * 2).min(self.options.max_backoff);
                }
                Err(e) => return Err(e),
            }
        }
        report.elapsed = started.elapsed();
        Ok(report)
    }

    /// Sleeps up to `d`, waking early when asked to stop.
    fn pause(&self, d: Duration) {
        let until = Instant::now() + d;
        while !self.stopping() {
            let now = Instant::now();
            if now >= until {
                break;
            }
            std::thread::sleep((until - now).min(Duration::from_millis(50)));
        }
    }

    /// One session: connect, lock, register, then passes until stopped,
    /// caught up or failed. `connected` turns true once the session holds
    /// the lock, so that a later failure starts the backoff afresh.
    fn session(
        &mut self,
        events: &mut dyn FnMut(&FollowEvent<'_>),
        report: &mut FollowReport,
        connected: &mut bool,
    ) -> Result<SessionEnd> {
        // Listen before the first pass: a notification sent while the pass
        // runs is then waiting when it ends.
        let mut control = self.source.connect()?;
        control.batch_execute(&format!("LISTEN {NOTIFY_CHANNEL}"))?;
        let mut replayer = Replayer::connect(
            &self.oplog,
            &self.source,
            self.target.clone(),
            ReplayOptions {
                aggregate: None,
                batch_size: self.options.batch_size,
                skip: self.options.skip.clone(),
                ..ReplayOptions::default()
            },
        )?;
        replayer.set_stop(self.stop.clone());
        while !replayer.try_lock_follower()? {
            if !self.options.wait_for_lock {
                let holder = replayer.follower_lock_holder()?;
                return Err(Error::ReplicaBusy(format!(
                    "another follower is already applying to this replica ({}); stop it first, or let this one wait for it",
                    holder.map_or("holder unknown".to_string(), |pid| format!(
                        "replica backend pid {pid}"
                    ))
                )));
            }
            events(&FollowEvent::WaitingForLock {
                holder: replayer.follower_lock_holder()?,
            });
            self.pause(Duration::from_secs(1));
            if self.stopping() {
                return Ok(SessionEnd::Stopped);
            }
        }
        *connected = true;
        let name = match &self.options.name {
            Some(name) => name.clone(),
            None => replayer.replica_name()?,
        };
        report.consumer = name.clone();
        let positions: Vec<(String, i64)> = replayer
            .checkpoints()?
            .into_iter()
            .map(|(a, c)| (a, c.seq))
            .collect();
        consumer::register(&mut control, &name, &positions)?;
        events(&FollowEvent::Following { consumer: &name });

        let mut lag_checked = Instant::now();
        let mut reported = Instant::now();
        let mut warned: std::collections::HashSet<String> = Default::default();
        // The tickets' sum when a pass last found nothing to apply: while it
        // stays the same nothing was appended, and an idle follower reads
        // one row per poll instead of every ticket and checkpoint.
        let mut idle_at: Option<(i64, String)> = None;
        loop {
            if self.stopping() {
                return Ok(SessionEnd::Stopped);
            }
            let before = store::ticket_sum(&mut control)?;
            if idle_at.as_ref() == Some(&before) {
                if reported.elapsed() >= ALIVE_EVERY {
                    consumer::report(&mut control, &name, &[], false)?;
                    reported = Instant::now();
                }
                events(&FollowEvent::CaughtUp);
                self.wait(&mut control)?;
                continue;
            }
            let pass = replayer.run(&mut |p| events(&FollowEvent::Applied(p)))?;
            report.passes += 1;
            report.entries_applied += pass.entries_applied;
            if let Some(stopped) = pass.stopped.into_iter().next() {
                return Err(stopped.error);
            }
            idle_at = (pass.entries_applied == 0).then_some(before);
            let positions: Vec<(String, i64)> = pass
                .aggregates
                .iter()
                .map(|a| (a.aggregate.clone(), a.to_seq))
                .collect();
            // Progress is reported at once; being alive, at most once per
            // interval, so that an idle follower does not write to the
            // source at every poll.
            if !positions.is_empty() || reported.elapsed() >= ALIVE_EVERY {
                consumer::report(&mut control, &name, &positions, !positions.is_empty())?;
                reported = Instant::now();
            }
            if lag_checked.elapsed() >= self.options.lag_warning.min(Duration::from_secs(5)) {
                lag_checked = Instant::now();
                for lag in consumer::lag(&mut control, &name)? {
                    let late = lag.seconds >= self.options.lag_warning.as_secs_f64();
                    if late && warned.insert(lag.aggregate.clone()) {
                        events(&FollowEvent::LagWarning(&lag));
                    } else if !late {
                        warned.remove(&lag.aggregate);
                    }
                }
            }
            if pass.entries_applied > 0 {
                // More may have been committed meanwhile: look again now.
                continue;
            }
            events(&FollowEvent::CaughtUp);
            if self.options.until_caught_up {
                return Ok(SessionEnd::CaughtUp);
            }
            self.wait(&mut control)?;
        }
    }

    /// Waits for a notification, the polling interval, or a stop request.
    fn wait(&self, control: &mut Client) -> Result<()> {
        let deadline = Instant::now() + self.options.poll_interval;
        loop {
            let now = Instant::now();
            if now >= deadline || self.stopping() {
                return Ok(());
            }
            let slice = (deadline - now).min(Duration::from_millis(100));
            let mut notifications = control.notifications();
            let woken = notifications.timeout_iter(slice).next()?.is_some();
            if woken {
                // Take every notification already queued: one pass covers them.
                while notifications.iter().next()?.is_some() {}
                return Ok(());
            }
        }
    }
}
