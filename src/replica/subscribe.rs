//! Subscriptions: any code as a consumer of the log. A named subscription
//! hands the decrypted, decoded entries of the aggregates it selects (all,
//! a list, or a name prefix) to a handler, in batches, in seq order per
//! aggregate, from where it stands: first what is there, then what comes
//! (woken by writers' notifications, polling otherwise).
//!
//! # Delivery
//!
//! - **At least once** ([`Subscription::run`]): the position is stored in
//!   the source's consumer registry after the handler returned. A handler
//!   that ran but whose process died before that sees the batch again: the
//!   entry UUID is the idempotency key.
//! - **Exactly-once effect** ([`Subscription::run_in`]): the handler gets a
//!   transaction in a database of the caller's (any database), and the
//!   position is stored in that transaction (table `oplog_subscription`
//!   there), as replicas do: the handler's effects and the position commit
//!   together or not at all. The registry on the source follows after the
//!   commit.
//!
//! A subscription is one consumer driven by the live loop
//! ([`Live`](crate::Live)) that also drives the replica follower and the
//! relay: after a lost connection to the source it says so
//! ([`Subscription::on_event`]) and starts again from its stored positions.
//!
//! Either way the subscription is a registered consumer: trimming never
//! deletes what it has not acknowledged, and `oplog consumers` and
//! [`lag`](crate::source::consumer::lag) show how far behind it is.
//!
//! # A handler that fails
//!
//! A failing handler is called again with the same batch after a pause
//! (the subscription's [`RetryPolicy`] bounds the attempts and the
//! backoff). When the attempts run out, that aggregate is parked at the
//! batch's first entry, with the handler's error as the reason, visible in
//! `oplog consumers` and in the lag; the other aggregates go on. Resuming
//! is explicit: [`resume`](crate::source::consumer::resume) (`oplog
//! consumers resume NAME AGGREGATE`).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use postgres::types::Type;
use postgres::Client;
use serde::Serialize;

use crate::codec::entry::Entry;
use crate::error::{Error, Result};
use crate::replica::live::{pause_unless, Live, LiveEvent, LiveOptions, LogConsumer};
use crate::source::consumer;
use crate::source::retry::RetryPolicy;
use crate::source::write::Oplog;
use crate::store::connect::Database;

/// Which aggregates a subscription delivers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    /// Every aggregate.
    All,
    /// These aggregates.
    Aggregates(Vec<String>),
    /// The aggregates whose name starts with this.
    Prefix(String),
}

/// How a subscription runs.
#[derive(Debug, Clone)]
pub struct SubscribeOptions {
    /// Its name in the source's consumer registry (1 to 256 bytes).
    pub name: String,
    /// What it delivers.
    pub selection: Selection,
    /// Most entries of one aggregate handed over at once.
    pub batch_entries: u64,
    /// Longest wait between passes without a notification.
    pub poll_interval: Duration,
    /// Attempts and backoff of a failing handler before its aggregate is
    /// parked.
    pub retry: RetryPolicy,
    /// Return once a pass finds nothing to deliver.
    pub until_caught_up: bool,
    /// Longest pause between reconnection attempts after a lost
    /// connection to the source.
    pub max_backoff: Duration,
}

impl SubscribeOptions {
    /// A subscription named `name` to every aggregate: batches of up to
    /// 100 entries, a poll every 200 ms, 5 attempts before parking.
    pub fn new(name: impl Into<String>) -> Self {
        SubscribeOptions {
            name: name.into(),
            selection: Selection::All,
            batch_entries: 100,
            poll_interval: Duration::from_millis(200),
            retry: RetryPolicy {
                max_attempts: 5,
                base_delay: Duration::from_millis(20),
                max_delay: Duration::from_secs(2),
            },
            until_caught_up: false,
            max_backoff: Duration::from_secs(5),
        }
    }
}

/// Entries of one aggregate, in seq order, handed to a handler.
#[derive(Debug)]
pub struct Batch {
    /// The aggregate.
    pub aggregate: String,
    /// Its entries, consecutive seqs.
    pub entries: Vec<Entry>,
}

/// What a subscription did.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SubscribeReport {
    /// Entries handed to the handler and acknowledged.
    pub delivered: u64,
    /// Batches handed over.
    pub batches: u64,
    /// Handler calls that failed and were tried again.
    pub retries: u64,
    /// Aggregates parked by this run.
    pub parked: Vec<String>,
    /// Passes over the log.
    pub passes: u64,
    /// Sessions started again after a lost connection.
    pub reconnects: u64,
}

/// Where a subscription's live-loop events go.
type EventSink<'o> = Box<dyn FnMut(&LiveEvent<'_>) + Send + 'o>;

/// A named subscription on a source.
pub struct Subscription<'o> {
    oplog: &'o Oplog,
    source: Database,
    opts: SubscribeOptions,
    stop: Arc<AtomicBool>,
    events: Option<EventSink<'o>>,
}

impl std::fmt::Debug for Subscription<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("name", &self.opts.name)
            .field("selection", &self.opts.selection)
            .finish()
    }
}

/// The table of positions in a target database (exactly-once mode).
const TARGET_TABLE: &str = "CREATE TABLE IF NOT EXISTS oplog_subscription (
    name text NOT NULL,
    aggregate_name text NOT NULL,
    seq bigint NOT NULL CHECK (seq >= 0),
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (name, aggregate_name)
)";

impl<'o> Subscription<'o> {
    /// A subscription reading `source` with `oplog`'s keys.
    pub fn new(oplog: &'o Oplog, source: impl Into<Database>, opts: SubscribeOptions) -> Self {
        Subscription {
            oplog,
            source: source.into(),
            opts,
            stop: Arc::default(),
            events: None,
        }
    }

    /// Calls `events` with what the live loop has to say: a lost
    /// connection and the pause before the next attempt, being caught up.
    pub fn on_event(mut self, events: impl FnMut(&LiveEvent<'_>) + Send + 'o) -> Self {
        self.events = Some(Box::new(events));
        self
    }

    /// Set it to stop after the batch in hand (e.g. from a signal
    /// handler).
    pub fn stop_flag(&self) -> Arc<AtomicBool> {
        self.stop.clone()
    }

    /// Uses `stop` as the stop flag (shared with whoever sets it).
    pub fn with_stop(mut self, stop: Arc<AtomicBool>) -> Self {
        self.stop = stop;
        self
    }

    /// Delivers at least once: `handler` gets each batch; the position
    /// moves on in the source's registry once it returned `Ok`.
    ///
    /// ```no_run
    /// # fn f(oplog: &oplog::Oplog) -> oplog::Result<()> {
    /// use oplog::{Selection, SubscribeOptions, Subscription};
    ///
    /// let options = SubscribeOptions {
    ///     selection: Selection::Prefix("tenant-".into()),
    ///     ..SubscribeOptions::new("cache-invalidation")
    /// };
    /// Subscription::new(oplog, "postgres://app@db/app", options).run(|batch| {
    ///     for entry in &batch.entries {
    ///         println!("{} seq {}: drop what it changed ({})", batch.aggregate, entry.seq, entry.uuid);
    ///     }
    ///     Ok::<_, std::io::Error>(())
    /// })?;
    /// # Ok(()) }
    /// ```
    pub fn run<E: std::fmt::Display>(
        &mut self,
        handler: impl FnMut(&Batch) -> std::result::Result<(), E>,
    ) -> Result<SubscribeReport> {
        self.drive(AtLeastOnce(handler))
    }

    /// Delivers with exactly-once effect: `handler` gets each batch with a
    /// transaction on `target` (a database of the caller's), in which the
    /// position is stored too; both commit together.
    pub fn run_in<E: std::fmt::Display>(
        &mut self,
        target: &mut Client,
        handler: impl FnMut(&mut postgres::Transaction<'_>, &Batch) -> std::result::Result<(), E>,
    ) -> Result<SubscribeReport> {
        target.batch_execute(TARGET_TABLE)?;
        self.drive(InTarget { target, handler })
    }

    fn drive(&mut self, mode: impl Acknowledge) -> Result<SubscribeReport> {
        consumer::validate_name(&self.opts.name)?;
        if self.opts.batch_entries == 0 {
            return Err(Error::Config("batch_entries must be at least 1".into()));
        }
        let live = Live::new(
            self.source.clone(),
            LiveOptions {
                poll_interval: self.opts.poll_interval,
                until_caught_up: self.opts.until_caught_up,
                max_backoff: self.opts.max_backoff,
                lag_warning: None,
            },
        )
        .with_stop(self.stop.clone());
        let mut delivery = Delivery {
            subscription: self,
            mode,
            positions: HashMap::new(),
            report: SubscribeReport::default(),
        };
        let done = live.run(&mut delivery)?;
        let mut report = delivery.report;
        report.passes = done.passes;
        report.reconnects = done.reconnects;
        Ok(report)
    }

    /// The next entries of `aggregate` after `at`, consecutive from
    /// `at + 1` (or from where a trimmed prefix ends, for a subscription
    /// that has had nothing of it yet), and where reading stopped short: the
    /// seq of an entry that is missing or does not open, and why.
    fn read(
        &self,
        source: &mut Client,
        aggregate: &str,
        at: i64,
    ) -> Result<(Vec<Entry>, Option<Broken>)> {
        let mut entries = Vec::new();
        let mut expected = at.saturating_add(1);
        let listing = self
            .oplog
            .entries(source, Some(aggregate), at)
            .limit(self.opts.batch_entries);
        let mut broken = None;
        for entry in listing {
            let entry = match entry {
                Ok(entry) => entry,
                Err(e @ Error::Postgres(_)) => return Err(e),
                Err(e) => {
                    broken = Some((expected, e.to_string()));
                    break;
                }
            };
            if entries.is_empty() && at == 0 && entry.seq > 1 {
                // Nothing of it delivered yet: it may start after a prefix
                // trimmed before the subscription existed.
                expected = entry.seq;
            }
            if entry.seq != expected {
                broken = Some((
                    expected,
                    format!(
                        "seq {expected} is missing from the log (seq {} follows); trimming never deletes what a registered consumer has not had",
                        entry.seq
                    ),
                ));
                break;
            }
            expected += 1;
            entries.push(entry);
        }
        if at == 0 {
            if let Some(e) = entries.first().filter(|e| e.seq > 1) {
                let trimmed = crate::store::trim_points(source, Some(aggregate))?
                    .remove(aggregate)
                    .map_or(0, |t| t.0);
                if trimmed < e.seq - 1 {
                    let missing = trimmed + 1;
                    return Ok((
                        Vec::new(),
                        Some((
                            missing,
                            format!(
                                "seq {missing} is missing from the log (seq {} follows, trimmed through {trimmed})",
                                e.seq
                            ),
                        )),
                    ));
                }
            }
        }
        Ok((entries, broken))
    }

    /// Hands `batch` over until the handler succeeds or its attempts run
    /// out; the handler's last error when they did.
    fn deliver(
        &self,
        mode: &mut impl Acknowledge,
        batch: &Batch,
        report: &mut SubscribeReport,
    ) -> Result<std::result::Result<(), String>> {
        let policy = &self.opts.retry;
        let attempts = policy.max_attempts.max(1);
        let mut n = 1;
        loop {
            match mode.hand_over(&self.opts.name, batch)? {
                Ok(()) => return Ok(Ok(())),
                Err(reason) if n >= attempts => {
                    return Ok(Err(format!("handler failed {n} times; last: {reason}")))
                }
                Err(_) => {
                    report.retries += 1;
                    pause_unless(&self.stop, policy.backoff(n));
                    n += 1;
                }
            }
        }
    }
}

/// A subscription as a consumer of the log, in one delivery mode.
struct Delivery<'s, 'o, M> {
    subscription: &'s mut Subscription<'o>,
    mode: M,
    /// Where each aggregate stands, as the mode stored it.
    positions: HashMap<String, i64>,
    report: SubscribeReport,
}

impl<M: Acknowledge> LogConsumer for Delivery<'_, '_, M> {
    fn start(&mut self, control: &mut Client, _: &AtomicBool) -> Result<Option<String>> {
        let name = self.subscription.opts.name.clone();
        self.positions = self.mode.positions(control, &name)?;
        Ok(Some(name))
    }

    fn pass(&mut self, source: &mut Client) -> Result<u64> {
        let sub = &*self.subscription;
        let name = &sub.opts.name;
        let report = &mut self.report;
        let parked: HashSet<String> = consumer::parked(source, name)?.into_iter().collect();
        let mut delivered = 0;
        let mut after = String::new();
        loop {
            let page = tickets_after(source, &sub.opts.selection, None, &after)?;
            let Some((last, _)) = page.last() else { break };
            after.clone_from(last);
            for (aggregate, version) in page {
                if sub.stop.load(Ordering::Relaxed) {
                    return Ok(delivered);
                }
                let at = self.positions.get(&aggregate).copied().unwrap_or(0);
                if version <= at || parked.contains(&aggregate) {
                    continue;
                }
                let (entries, broken) = sub.read(source, &aggregate, at)?;
                let Some(last_seq) = entries.last().map(|e| e.seq) else {
                    if let Some((seq, reason)) = broken {
                        consumer::park(source, name, &aggregate, at, seq, &reason)?;
                        report.parked.push(aggregate);
                    }
                    continue;
                };
                let batch = Batch {
                    aggregate: aggregate.clone(),
                    entries,
                };
                match sub.deliver(&mut self.mode, &batch, report)? {
                    Ok(()) => {
                        consumer::report(source, name, &[(aggregate.clone(), last_seq)], true)?;
                        self.positions.insert(aggregate, last_seq);
                        let n = batch.entries.len() as u64;
                        report.delivered += n;
                        report.batches += 1;
                        delivered += n;
                    }
                    Err(reason) => {
                        let first = batch.entries.first().map_or(at + 1, |e| e.seq);
                        consumer::park(source, name, &aggregate, at, first, &reason)?;
                        report.parked.push(aggregate);
                    }
                }
            }
        }
        Ok(delivered)
    }

    fn event(&mut self, event: &LiveEvent<'_>) {
        if let Some(events) = self.subscription.events.as_mut() {
            events(event);
        }
    }

    fn retryable(&self, error: &Error) -> bool {
        error.is_connection() && self.mode.can_resume()
    }
}

/// Where reading an aggregate stopped short: the seq of the entry that is
/// missing or does not open, and why.
type Broken = (i64, String);

/// A delivery mode: where its positions live, and how a batch is handed
/// over and acknowledged.
trait Acknowledge {
    /// Where each aggregate stands for the subscription `name` (registered
    /// on the source as it goes).
    fn positions(&mut self, source: &mut Client, name: &str) -> Result<HashMap<String, i64>>;
    /// The handler's outcome for `batch`, the position acknowledged with
    /// it when it succeeded; database errors of a target are errors.
    fn hand_over(&mut self, name: &str, batch: &Batch) -> Result<std::result::Result<(), String>>;
    /// Whether a new session can go on after a lost connection (a target
    /// connection of the caller's, once closed, cannot).
    fn can_resume(&self) -> bool {
        true
    }
}

/// At least once: the registry holds the positions, moved on by the
/// caller once the handler returned.
struct AtLeastOnce<H>(H);

impl<E: std::fmt::Display, H: FnMut(&Batch) -> std::result::Result<(), E>> Acknowledge
    for AtLeastOnce<H>
{
    fn positions(&mut self, source: &mut Client, name: &str) -> Result<HashMap<String, i64>> {
        consumer::register_unless_known(source, name)?;
        registry_positions(source, name)
    }

    fn hand_over(&mut self, _: &str, batch: &Batch) -> Result<std::result::Result<(), String>> {
        Ok((self.0)(batch).map_err(|e| e.to_string()))
    }
}

/// Exactly-once effect: the target holds the positions, stored in the
/// handler's transaction; the registry is set to them.
struct InTarget<'t, H> {
    target: &'t mut Client,
    handler: H,
}

impl<E, H> Acknowledge for InTarget<'_, H>
where
    E: std::fmt::Display,
    H: FnMut(&mut postgres::Transaction<'_>, &Batch) -> std::result::Result<(), E>,
{
    fn positions(&mut self, source: &mut Client, name: &str) -> Result<HashMap<String, i64>> {
        let rows = self.target.query(
            "SELECT aggregate_name, seq FROM oplog_subscription WHERE name = $1",
            &[&name],
        )?;
        let positions: Vec<(String, i64)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        consumer::register(source, name, &positions)?;
        Ok(positions.into_iter().collect())
    }

    fn hand_over(&mut self, name: &str, batch: &Batch) -> Result<std::result::Result<(), String>> {
        let Some(last) = batch.entries.last().map(|e| e.seq) else {
            return Ok(Ok(()));
        };
        let mut tx = self.target.transaction()?;
        if let Err(e) = (self.handler)(&mut tx, batch) {
            return Ok(Err(e.to_string()));
        }
        tx.execute(
            "INSERT INTO oplog_subscription (name, aggregate_name, seq) VALUES ($1, $2, $3) \
             ON CONFLICT (name, aggregate_name) DO UPDATE SET seq = excluded.seq, updated_at = now()",
            &[&name, &batch.aggregate, &last],
        )?;
        tx.commit()?;
        Ok(Ok(()))
    }

    fn can_resume(&self) -> bool {
        !self.target.is_closed()
    }
}

/// The registry's positions of `name`.
fn registry_positions(c: &mut Client, name: &str) -> Result<HashMap<String, i64>> {
    let rows = c.query_typed(
        "SELECT aggregate_name, seq FROM oplog_consumer_position WHERE consumer = $1",
        &[(&name, Type::TEXT)],
    )?;
    rows.iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
        .collect()
}

/// Up to 1,000 selected tickets after `after` by name, with their
/// versions; with `behind`, only those ahead of that consumer's registered
/// position.
pub(crate) fn tickets_after(
    c: &mut Client,
    selection: &Selection,
    behind: Option<&str>,
    after: &str,
) -> Result<Vec<(String, i64)>> {
    let (list, prefix): (Vec<String>, Option<&str>) = match selection {
        Selection::All => (Vec::new(), None),
        Selection::Aggregates(list) => (list.clone(), None),
        Selection::Prefix(p) => (Vec::new(), Some(p.as_str())),
    };
    let only = matches!(selection, Selection::Aggregates(_));
    let rows = c.query_typed(
        "SELECT t.name, t.version FROM oplog_ticket t \
         LEFT JOIN oplog_consumer_position p ON p.consumer = $5 AND p.aggregate_name = t.name \
         WHERE t.name > $1 AND t.version > coalesce(p.seq, 0) \
           AND (NOT $2 OR t.name = ANY($3::text[])) \
           AND ($4::text IS NULL OR (t.name >= $4 AND left(t.name, length($4)) = $4)) \
         ORDER BY t.name LIMIT 1000",
        &[
            (&after, Type::TEXT),
            (&only, Type::BOOL),
            (&list, Type::TEXT_ARRAY),
            (&prefix, Type::TEXT),
            (&behind, Type::TEXT),
        ],
    )?;
    rows.iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
        .collect()
}
