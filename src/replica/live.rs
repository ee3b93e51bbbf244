//! The live loop every consumer of the log runs: first what is there, then
//! what comes.
//!
//! [`Live`] drives a [`LogConsumer`] (a replica [`Follower`], a
//! [`Subscription`], the NATS relay, or a consumer of the caller's own)
//! through passes over the log. Between passes it waits for a notification
//! on the source (`LISTEN oplog_entry`, sent by writers that opt in with
//! [`Oplog::with_notify`] and by [`resume`]) or for its polling interval,
//! whichever comes first: notifications are a hint, polling is the truth.
//! It listens before the first pass, so no wake-up is lost. While polling
//! finds the tickets unchanged, it reads one row instead of running a pass.
//!
//! It keeps the consumer's registration alive on the source (at most once
//! a second while idle), warns when an aggregate's oldest entry not yet
//! acknowledged has waited too long, and when a connection is lost (either
//! database restarting, a terminated backend, a broker the consumer
//! counts as retryable) it says so and starts a new session after a
//! bounded exponential backoff: the consumer starts again from the
//! positions it stored, so that nothing is lost or repeated beyond what its
//! delivery mode allows.
//!
//! [`Follower`]: crate::Follower
//! [`Subscription`]: crate::Subscription
//! [`Oplog::with_notify`]: crate::Oplog::with_notify
//! [`resume`]: crate::source::consumer::resume

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use postgres::fallible_iterator::FallibleIterator;
use postgres::Client;

use crate::error::{Error, Result};
use crate::source::consumer::{self, AggregateLag};
use crate::store;
use crate::store::connect::Database;

pub use crate::store::NOTIFY_CHANNEL;

/// How often an idle consumer tells the source it is alive.
const ALIVE_EVERY: Duration = Duration::from_secs(1);

/// How the live loop runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveOptions {
    /// Longest wait between passes without a notification.
    pub poll_interval: Duration,
    /// Return once a pass finds nothing to hand over.
    pub until_caught_up: bool,
    /// Longest pause between reconnection attempts.
    pub max_backoff: Duration,
    /// Warn when an aggregate's oldest entry not yet acknowledged has
    /// waited this long (`None`: never).
    pub lag_warning: Option<Duration>,
}

impl Default for LiveOptions {
    /// Polling every 50 ms, reconnecting at most every 5 s, a warning past
    /// 10 s of lag.
    fn default() -> Self {
        LiveOptions {
            poll_interval: Duration::from_millis(50),
            until_caught_up: false,
            max_backoff: Duration::from_secs(5),
            lag_warning: Some(Duration::from_secs(10)),
        }
    }
}

/// What the live loop tells its consumer as it goes.
#[derive(Debug)]
#[non_exhaustive]
pub enum LiveEvent<'a> {
    /// A connection was lost or refused; trying again after `retry_in`.
    Reconnecting {
        /// What failed.
        error: &'a Error,
        /// The pause before the next attempt.
        retry_in: Duration,
        /// Attempts since the last working session.
        attempt: u32,
    },
    /// A pass handed over `delivered` entries.
    Passed {
        /// Entries handed over by the pass.
        delivered: u64,
    },
    /// A pass found nothing to hand over.
    CaughtUp,
    /// An aggregate's oldest entry not yet acknowledged has waited longer
    /// than the warning threshold.
    LagWarning(&'a AggregateLag),
}

/// A consumer of the log, driven by [`Live`].
///
/// A session begins with [`start`](LogConsumer::start) on a fresh source
/// connection (at first, and again after a lost connection), then runs
/// [`pass`](LogConsumer::pass)es until stopped, caught up or failed.
///
/// ```
/// use std::sync::atomic::AtomicBool;
/// use oplog::{LiveEvent, LogConsumer, Result};
///
/// /// Counts the tickets moved since the last pass, as a stand-in for real
/// /// work.
/// struct Counter { seen: i64 }
///
/// impl LogConsumer for Counter {
///     fn start(&mut self, _: &mut postgres::Client, _: &AtomicBool) -> Result<Option<String>> {
///         Ok(Some("counter".into()))
///     }
///     fn pass(&mut self, source: &mut postgres::Client) -> Result<u64> {
///         let total: i64 = source
///             .query_one("SELECT coalesce(sum(version), 0)::bigint FROM oplog_ticket", &[])?
///             .get(0);
///         let new = u64::try_from(total - self.seen).unwrap_or(0);
///         self.seen = total;
///         Ok(new)
///     }
///     fn event(&mut self, event: &LiveEvent<'_>) {
///         eprintln!("{event:?}");
///     }
/// }
/// ```
pub trait LogConsumer {
    /// Starts a session on `control`, a new connection to the source that
    /// listens for notifications: opens what the consumer needs, takes its
    /// locks (checking `stop` while it waits for them), registers it, and
    /// returns its name in the source's consumer registry. `None` when
    /// asked to stop while waiting.
    fn start(&mut self, control: &mut Client, stop: &AtomicBool) -> Result<Option<String>>;

    /// Hands over what the source has committed that the consumer has not
    /// had, storing its positions as its delivery mode says; the number of
    /// entries handed over. An error the consumer counts as
    /// [`retryable`](LogConsumer::retryable) starts a new session; any
    /// other ends the loop.
    fn pass(&mut self, control: &mut Client) -> Result<u64>;

    /// What the live loop has to say.
    fn event(&mut self, event: &LiveEvent<'_>);

    /// Whether `error` is worth a new session after a pause: by default,
    /// a lost or refused database connection.
    fn retryable(&self, error: &Error) -> bool {
        error.is_connection()
    }
}

/// What the live loop did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LiveReport {
    /// The consumer's name in the registry (of its last session).
    pub consumer: String,
    /// Entries handed over.
    pub delivered: u64,
    /// Passes run.
    pub passes: u64,
    /// Sessions started again after a lost connection.
    pub reconnects: u64,
    /// How long it ran.
    pub elapsed: Duration,
}

/// Drives a [`LogConsumer`] over a source: catch-up, then live tail.
#[derive(Debug, Clone)]
pub struct Live {
    source: Database,
    options: LiveOptions,
    stop: Arc<AtomicBool>,
}

impl Live {
    /// The live loop over `source` (a connection string or a
    /// [`Database`]). Nothing connects until [`Live::run`].
    pub fn new(source: impl Into<Database>, options: LiveOptions) -> Self {
        Live {
            source: source.into(),
            options,
            stop: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Uses `stop` as the stop flag (shared with whoever sets it).
    pub fn with_stop(mut self, stop: Arc<AtomicBool>) -> Self {
        self.stop = stop;
        self
    }

    /// Set this flag to make [`Live::run`] return after the pass in hand
    /// (its consumer decides how far into the pass it looks at it).
    pub fn stop_flag(&self) -> Arc<AtomicBool> {
        self.stop.clone()
    }

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// Runs `consumer` until stopped, until caught up (with
    /// [`LiveOptions::until_caught_up`]), or until it fails with an error
    /// it does not count as retryable, which is returned.
    pub fn run(&self, consumer: &mut dyn LogConsumer) -> Result<LiveReport> {
        let started = Instant::now();
        let mut report = LiveReport::default();
        let mut attempt = 0u32;
        let mut backoff = Duration::from_millis(100);
        while !self.stopping() {
            let mut connected = false;
            match self.session(consumer, &mut report, &mut connected) {
                Ok(()) => break,
                Err(e) if consumer.retryable(&e) => {
                    if connected {
                        attempt = 0;
                        backoff = Duration::from_millis(100);
                    }
                    attempt += 1;
                    report.reconnects += 1;
                    consumer.event(&LiveEvent::Reconnecting {
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
    pub(crate) fn pause(&self, d: Duration) {
        pause_unless(&self.stop, d);
    }

    /// One session: connect and listen, start the consumer, then passes
    /// until stopped, caught up or failed. `connected` turns true once the
    /// consumer started, so that a later failure starts the backoff afresh.
    fn session(
        &self,
        consumer: &mut dyn LogConsumer,
        report: &mut LiveReport,
        connected: &mut bool,
    ) -> Result<()> {
        // Listen before the first pass: a notification sent while a pass
        // runs is then waiting when it ends.
        let mut control = self.source.connect()?;
        control.batch_execute(&format!("LISTEN {NOTIFY_CHANNEL}"))?;
        let Some(name) = consumer.start(&mut control, &self.stop)? else {
            return Ok(());
        };
        *connected = true;
        report.consumer.clone_from(&name);
        let mut lag = LagWatch::default();
        let mut reported = Instant::now();
        // The tickets' sum when a pass last found nothing: while it stays
        // the same and no notification came, nothing was appended or
        // resumed, and an idle consumer reads one row per poll instead of
        // running a pass.
        let mut idle_at: Option<(i64, String)> = None;
        let mut woken = true;
        loop {
            if self.stopping() {
                return Ok(());
            }
            let before = store::ticket_sum(&mut control)?;
            if woken || idle_at.as_ref() != Some(&before) {
                let delivered = consumer.pass(&mut control)?;
                report.passes += 1;
                report.delivered += delivered;
                lag.check(&mut control, &name, &self.options, consumer)?;
                if delivered > 0 {
                    consumer.event(&LiveEvent::Passed { delivered });
                    // More may have been committed meanwhile: look again.
                    idle_at = None;
                    woken = true;
                    reported = Instant::now();
                    continue;
                }
                idle_at = Some(before);
            }
            if reported.elapsed() >= ALIVE_EVERY {
                consumer::report(&mut control, &name, &[], false)?;
                reported = Instant::now();
            }
            consumer.event(&LiveEvent::CaughtUp);
            if self.options.until_caught_up {
                return Ok(());
            }
            woken = self.wait(&mut control)?;
        }
    }

    /// Waits for a notification, the polling interval, or a stop request;
    /// true when a notification came.
    fn wait(&self, control: &mut Client) -> Result<bool> {
        let deadline = Instant::now() + self.options.poll_interval;
        loop {
            let now = Instant::now();
            if now >= deadline || self.stopping() {
                return Ok(false);
            }
            let slice = (deadline - now).min(Duration::from_millis(100));
            let mut notifications = control.notifications();
            if notifications.timeout_iter(slice).next()?.is_some() {
                // Take every notification already queued: one pass covers
                // them.
                while notifications.iter().next()?.is_some() {}
                return Ok(true);
            }
        }
    }
}

/// Sleeps up to `d`, waking early once `stop` is set: for a
/// [`LogConsumer`] that waits (for a lock, before a retry) while its live
/// loop may be asked to stop.
pub fn pause_unless(stop: &AtomicBool, d: Duration) {
    let until = Instant::now() + d;
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        if now >= until {
            break;
        }
        std::thread::sleep((until - now).min(Duration::from_millis(20)));
    }
}

/// Which aggregates have been warned about, and when lag was last read.
struct LagWatch {
    checked: Instant,
    warned: HashSet<String>,
}

impl Default for LagWatch {
    fn default() -> Self {
        LagWatch {
            checked: Instant::now(),
            warned: HashSet::new(),
        }
    }
}

impl LagWatch {
    /// Reads the consumer's lag at most every few seconds and warns once
    /// per aggregate that is late (again after it caught up).
    fn check(
        &mut self,
        control: &mut Client,
        name: &str,
        options: &LiveOptions,
        consumer: &mut dyn LogConsumer,
    ) -> Result<()> {
        let Some(limit) = options.lag_warning else {
            return Ok(());
        };
        if self.checked.elapsed() < limit.min(Duration::from_secs(5)) {
            return Ok(());
        }
        self.checked = Instant::now();
        for lag in consumer::lag(control, name)? {
            let late = lag.seconds >= limit.as_secs_f64();
            if late && self.warned.insert(lag.aggregate.clone()) {
                consumer.event(&LiveEvent::LagWarning(&lag));
            } else if !late {
                self.warned.remove(&lag.aggregate);
            }
        }
        Ok(())
    }
}
