//! Follow: keep a replica continuously up to date with its source.
//!
//! A [`Follower`] is one consumer of the log driven by the live loop that
//! drives subscriptions and the relay ([`Live`]): each pass is a
//! [`Replayer`] pass, which applies what the source has committed since the
//! replica's checkpoints in the same transactions as the checkpoints, so
//! that stopping or being killed at any moment loses and repeats nothing.
//! Between passes the live loop waits for a notification on the source
//! (`LISTEN oplog_entry`, sent by writers that opt in with
//! [`Oplog::with_notify`]) or for its polling interval, whichever comes
//! first.
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
//!
//! [`Live`]: crate::Live

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use postgres::Client;

use crate::error::{Error, Result};
use crate::replica::live::{pause_unless, Live, LiveEvent, LiveOptions, LogConsumer};
use crate::replica::replay::{Progress, ReplayOptions, Replayer, Skip};
use crate::replica::Target;
use crate::source::consumer::{self, AggregateLag};
use crate::source::write::Oplog;
use crate::store::connect::Database;

pub use crate::replica::live::NOTIFY_CHANNEL;

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

    /// Uses `stop` as the stop flag (shared with whoever sets it).
    pub fn with_stop(mut self, stop: Arc<AtomicBool>) -> Self {
        self.stop = stop;
        self
    }

    /// Follows until stopped, until caught up (with
    /// [`FollowOptions::until_caught_up`]), or until an aggregate cannot be
    /// applied (a divergence, a mapping error, coverage lost to trimming),
    /// which is returned as the error. Lost connections are retried.
    pub fn run(&mut self, events: &mut dyn FnMut(&FollowEvent<'_>)) -> Result<FollowReport> {
        if let Some(name) = &self.options.name {
            consumer::validate_name(name)?;
        }
        let live = Live::new(
            self.source.clone(),
            LiveOptions {
                poll_interval: self.options.poll_interval,
                until_caught_up: self.options.until_caught_up,
                max_backoff: self.options.max_backoff,
                lag_warning: Some(self.options.lag_warning),
            },
        )
        .with_stop(self.stop.clone());
        let mut applier = Applier {
            follower: self,
            replayer: None,
            name: String::new(),
            events,
        };
        let done = live.run(&mut applier)?;
        Ok(FollowReport {
            consumer: done.consumer,
            entries_applied: done.delivered,
            passes: done.passes,
            reconnects: done.reconnects,
            elapsed: done.elapsed,
        })
    }
}

/// The follower as a consumer of the log: each session connects a
/// [`Replayer`], takes the replica's lock and registers; each pass is a
/// replay pass, whose positions are the replica's checkpoints.
struct Applier<'f, 'e> {
    follower: &'f Follower,
    replayer: Option<Replayer>,
    name: String,
    events: &'e mut dyn FnMut(&FollowEvent<'_>),
}

impl LogConsumer for Applier<'_, '_> {
    fn start(&mut self, control: &mut Client, stop: &AtomicBool) -> Result<Option<String>> {
        let f = self.follower;
        self.replayer = None;
        let mut replayer = Replayer::connect(
            &f.oplog,
            &f.source,
            f.target.clone(),
            ReplayOptions {
                aggregate: None,
                batch_size: f.options.batch_size,
                skip: f.options.skip.clone(),
                ..ReplayOptions::default()
            },
        )?;
        replayer.set_stop(f.stop.clone());
        while !replayer.try_lock_follower()? {
            if !f.options.wait_for_lock {
                let holder = replayer.follower_lock_holder()?;
                return Err(Error::ReplicaBusy(format!(
                    "another follower is already applying to this replica ({}); stop it first, or let this one wait for it",
                    holder.map_or("holder unknown".to_string(), |pid| format!(
                        "replica backend pid {pid}"
                    ))
                )));
            }
            (self.events)(&FollowEvent::WaitingForLock {
                holder: replayer.follower_lock_holder()?,
            });
            pause_unless(stop, Duration::from_secs(1));
            if stop.load(Ordering::Relaxed) {
                return Ok(None);
            }
        }
        let name = match &f.options.name {
            Some(name) => name.clone(),
            None => replayer.replica_name()?,
        };
        let positions: Vec<(String, i64)> = replayer
            .checkpoints()?
            .into_iter()
            .map(|(a, c)| (a, c.seq))
            .collect();
        consumer::register(control, &name, &positions)?;
        (self.events)(&FollowEvent::Following { consumer: &name });
        self.name.clone_from(&name);
        self.replayer = Some(replayer);
        Ok(Some(name))
    }

    fn pass(&mut self, control: &mut Client) -> Result<u64> {
        let Some(replayer) = self.replayer.as_mut() else {
            return Ok(0);
        };
        let events = &mut *self.events;
        let pass = replayer.run(&mut |p| events(&FollowEvent::Applied(p)))?;
        if let Some(stopped) = pass.stopped.into_iter().next() {
            return Err(stopped.error);
        }
        let positions: Vec<(String, i64)> = pass
            .aggregates
            .iter()
            .map(|a| (a.aggregate.clone(), a.to_seq))
            .collect();
        if !positions.is_empty() {
            consumer::report(control, &self.name, &positions, true)?;
        }
        Ok(pass.entries_applied)
    }

    fn event(&mut self, event: &LiveEvent<'_>) {
        match event {
            LiveEvent::Reconnecting {
                error,
                retry_in,
                attempt,
            } => (self.events)(&FollowEvent::Reconnecting {
                error,
                retry_in: *retry_in,
                attempt: *attempt,
            }),
            LiveEvent::CaughtUp => (self.events)(&FollowEvent::CaughtUp),
            // Batches were reported as they were applied.
            LiveEvent::Passed { .. } => {}
            LiveEvent::LagWarning(lag) => (self.events)(&FollowEvent::LagWarning(lag)),
        }
    }
}
