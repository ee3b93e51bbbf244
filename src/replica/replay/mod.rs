//! Replay: apply the log to a target, exactly once.
//!
//! A [`Replayer`] reads entries from the source database, checks each one
//! (seq is the checkpoint's plus one, the chain follows from the previous
//! entry, the ciphertext authenticates), and applies their operations to the
//! target ([`Target`]): suffixed tables in the source database, or a
//! separate replica database. Tables missing on the target are created from
//! the source's definitions the first time they are needed.
//!
//! Entries are applied in batches. One target transaction holds a batch's
//! rows *and* the checkpoints of the aggregates it advances, so a crash at
//! any point leaves the target exactly at a checkpoint: running the replay
//! again continues from there and applies nothing twice. Within a batch,
//! consecutive operations of one kind on one table become one statement
//! (`json_populate_recordset`), so a log of many small entries replays at
//! close to the speed of bulk inserts.
//!
//! An aggregate whose next entry is missing (trimmed or deleted), does not
//! follow the chain, does not decrypt, or does not apply (an UPDATE or
//! DELETE that matches no row, a CREATE whose row exists, a value the
//! column refuses) stops at that entry with an error naming it; everything
//! before it is applied and the other aggregates carry on.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use postgres::types::Type;
use postgres::{Client, Transaction};

use crate::codec::catalog::TypeCatalog;
use crate::codec::entry::{Entry, GENESIS_CHAIN};
use crate::codec::mapping;
use crate::error::{Error, Result};
use crate::replica::chain::ChainCursor;
use crate::replica::{self, Checkpoint, SkippedEntry, Target};
use crate::source::write::Oplog;
use crate::sql::TableName;
use crate::store;
use crate::store::connect::Database;

mod apply;
mod reader;

use apply::{Group, Run, RunKind, TablePlan};
use reader::{InFlight, Position, Reader};

/// How a replay runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayOptions {
    /// Replay only this aggregate.
    pub aggregate: Option<String>,
    /// Most entries applied in one target transaction.
    pub batch_size: usize,
    /// Most bytes of entries (ciphertext and metadata) read for one
    /// transaction; a batch always holds at least one entry, so an entry
    /// larger than this is applied alone.
    pub max_batch_bytes: usize,
    /// Entries to pass over instead of applying, each only when its
    /// aggregate stops at it.
    pub skip: Vec<Skip>,
}

impl Default for ReplayOptions {
    /// Every aggregate, 1,000 entries or 16 MiB per transaction, nothing
    /// skipped.
    fn default() -> Self {
        ReplayOptions {
            aggregate: None,
            batch_size: 1000,
            max_batch_bytes: 16 << 20,
            skip: Vec::new(),
        }
    }
}

/// The operator's decision to pass over one entry that can never apply
/// (`oplog replay|follow --skip AGGREGATE:SEQ --reason TEXT`).
///
/// A skip is refused unless the aggregate's replay stops at exactly that
/// entry, and the entry exists in the log. The replica then moves past it
/// without its changes, and records the skip, with the reason and the
/// error that stopped the aggregate, next to its checkpoints, in the same
/// transaction; verification against the replica reports every skipped
/// entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skip {
    /// The aggregate.
    pub aggregate: String,
    /// The seq of the entry to pass over.
    pub seq: i64,
    /// Why; recorded with the skip. Must not be empty.
    pub reason: String,
}

impl Skip {
    /// Parses `AGGREGATE:SEQ` (the last colon separates, so aggregate names
    /// may hold colons) with the reason for the skip.
    pub fn parse(spec: &str, reason: &str) -> Result<Skip> {
        let bad = |why: &str| Error::Config(format!("skip {spec:?}: {why}"));
        let (aggregate, seq) = spec
            .rsplit_once(':')
            .ok_or_else(|| bad("expected AGGREGATE:SEQ"))?;
        if aggregate.is_empty() || aggregate.len() > crate::codec::entry::MAX_AGGREGATE {
            return Err(bad("the aggregate name must be 1 to 256 bytes"));
        }
        let seq: i64 = seq
            .parse()
            .ok()
            .filter(|s| *s > 0)
            .ok_or_else(|| bad("SEQ must be a positive whole number"))?;
        if reason.trim().is_empty() {
            return Err(bad("a reason is required"));
        }
        Ok(Skip {
            aggregate: aggregate.to_string(),
            seq,
            reason: reason.to_string(),
        })
    }
}

/// How far a replay has come, reported after every committed batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    /// Entries applied so far in this run.
    pub applied: u64,
    /// Entries known to be waiting when the run started, still to apply.
    pub remaining: u64,
    /// Time since the run started.
    pub elapsed: Duration,
    /// The entries the batch just committed.
    pub batch: Vec<AppliedEntry>,
}

/// An entry a batch applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppliedEntry {
    /// Database id on the source.
    pub id: i64,
    /// Aggregate.
    pub aggregate: String,
    /// Seq.
    pub seq: i64,
    /// When the entry was written on the source, in microseconds since the
    /// Unix epoch (the source's clock).
    pub created_at_micros: i64,
}

/// How one aggregate advanced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AggregateReplay {
    /// The aggregate.
    pub aggregate: String,
    /// The checkpoint before the run.
    pub from_seq: i64,
    /// The checkpoint after the run.
    pub to_seq: i64,
}

/// An aggregate whose replay stopped at an entry, and why.
#[derive(Debug)]
pub struct Stopped {
    /// The aggregate.
    pub aggregate: String,
    /// The seq it stopped at: the first one not applied.
    pub seq: i64,
    /// What stopped it; it names the entry.
    pub error: Error,
}

/// What a replay did.
#[derive(Debug, Default)]
pub struct ReplayReport {
    /// Entries applied.
    pub entries_applied: u64,
    /// Operations (rows) applied.
    pub operations_applied: u64,
    /// Target transactions committed.
    pub transactions: u64,
    /// Tables created on the target.
    pub tables_created: Vec<String>,
    /// Aggregates that advanced.
    pub aggregates: Vec<AggregateReplay>,
    /// Aggregates that stopped at an entry; empty when everything applied.
    pub stopped: Vec<Stopped>,
    /// Entries passed over at the operator's request ([`Skip`]), recorded
    /// on the replica.
    pub skipped: Vec<SkippedEntry>,
    /// Skips asked for that were not needed: the entry applied after all.
    pub unused_skips: Vec<Skip>,
    /// How long the run took.
    pub elapsed: Duration,
}

impl ReplayReport {
    /// True when no aggregate stopped.
    pub fn is_complete(&self) -> bool {
        self.stopped.is_empty()
    }
}

/// Applies a source database's oplog to a [`Target`].
///
/// ```no_run
/// use oplog::{Keyring, Oplog, ReplayOptions, Replayer, Target, TypeCatalog};
///
/// // Any catalog and the keys: each entry names the catalog stored with it.
/// let oplog = Oplog::new(TypeCatalog::new(), Keyring::load("keys.json".as_ref())?);
/// let mut replayer = Replayer::connect(
///     &oplog,
///     "postgres://postgres@127.0.0.1/app",
///     Target::database("postgres://postgres@127.0.0.1/app_replica"),
///     ReplayOptions::default(),
/// )?;
/// let report = replayer.run(&mut |p| eprintln!("{} applied, {} to go", p.applied, p.remaining))?;
/// assert!(report.is_complete(), "{:?}", report.stopped);
/// # Ok::<(), oplog::Error>(())
/// ```
pub struct Replayer {
    oplog: Oplog,
    target: Target,
    options: ReplayOptions,
    /// The source connection that reads entries; lent to the reading thread
    /// during a run.
    source: Option<Client>,
    /// A second source connection, for tickets and table definitions.
    meta: Client,
    dest: Client,
    key: String,
    plans: HashMap<(Option<Vec<u8>>, String), Arc<TablePlan>>,
    last_plan: Option<(Option<Vec<u8>>, String, Arc<TablePlan>)>,
    stop: Option<Arc<AtomicBool>>,
    /// Aggregates with a stop recorded on the replica, once read.
    recorded_stops: Option<HashSet<String>>,
}

impl std::fmt::Debug for Replayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replayer")
            .field("target", &self.target.table_suffix())
            .field("checkpoint_key", &self.key)
            .field("options", &self.options)
            .finish()
    }
}

/// Where one aggregate stands during a run.
#[derive(Debug, Clone)]
struct AggState {
    applied: Checkpoint,
    from: i64,
    upto: i64,
}

/// An entry checked and opened, ready to apply.
pub(super) struct Item {
    pub(super) entry: Entry,
    pub(super) catalog: Option<Vec<u8>>,
}

/// Why a batch did not apply.
pub(super) enum ApplyError {
    /// An entry of the batch cannot be applied; the error names it.
    Entry(Error),
    /// Another replayer moved the checkpoints, or the target asked for a
    /// retry; reload and go on.
    Moved,
    /// The target or source failed; the run stops.
    Fatal(Error),
}

impl From<postgres::Error> for ApplyError {
    fn from(e: postgres::Error) -> Self {
        ApplyError::Fatal(e.into())
    }
}

impl Replayer {
    /// Connects to the source (a connection string or a [`Database`]) and
    /// the target and makes sure the target has its checkpoint table.
    pub fn connect(
        oplog: &Oplog,
        source: impl Into<Database>,
        target: Target,
        options: ReplayOptions,
    ) -> Result<Replayer> {
        let source_db = source.into();
        target.validate()?;
        if options.batch_size == 0 {
            return Err(Error::Config("batch size must be at least 1".into()));
        }
        let source = source_db.connect()?;
        let mut meta = source_db.connect()?;
        let source_id = store::source_id(&mut meta)?;
        let (target, mut dest) = target.open(&mut meta, &source_db)?;
        replica::set_up(&mut dest)?;
        let key = target.checkpoint_key(&source_id);
        Ok(Replayer {
            oplog: oplog.clone(),
            target,
            options,
            source: Some(source),
            meta,
            dest,
            key,
            plans: HashMap::new(),
            last_plan: None,
            stop: None,
            recorded_stops: None,
        })
    }

    /// The key of this replica's rows in `oplog_checkpoint`.
    pub fn checkpoint_key(&self) -> &str {
        &self.key
    }

    /// A flag that, once set, ends a run after the batch being applied
    /// (everything applied stays checkpointed).
    pub fn set_stop(&mut self, stop: Arc<AtomicBool>) {
        self.stop = Some(stop);
    }

    /// Takes the follower's lock on the replica: a session-level advisory
    /// lock on the connection that applies, so it lasts exactly as long as
    /// the session that writes. Returns false when another session holds it.
    pub(crate) fn try_lock_follower(&mut self) -> Result<bool> {
        let key = format!("oplog-follow/{}", self.key);
        let row = self.dest.query_typed_one(
            "SELECT pg_try_advisory_lock(hashtextextended($1, 0))",
            &[(&key, Type::TEXT)],
        )?;
        Ok(row.get(0))
    }

    /// The replica backend (pid) holding the follower's lock, if any.
    pub(crate) fn follower_lock_holder(&mut self) -> Result<Option<i32>> {
        let key = format!("oplog-follow/{}", self.key);
        let row = self.dest.query_typed_opt(
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 1 \
             AND ((classid::bigint << 32) | objid::bigint) = hashtextextended($1, 0) LIMIT 1",
            &[(&key, Type::TEXT)],
        )?;
        Ok(row.map(|r| r.get(0)))
    }

    /// A name for this replica when none is given: its database, host and
    /// port as the replica sees them, and the table suffix if any.
    pub(crate) fn replica_name(&mut self) -> Result<String> {
        let row = self.dest.query_typed_one(
            "SELECT current_database()::text, coalesce(host(inet_server_addr()), 'local'), \
             coalesce(inet_server_port(), 0)",
            &[],
        )?;
        let (db, host, port): (String, String, i32) = (row.get(0), row.get(1), row.get(2));
        Ok(match self.target.table_suffix() {
            "" => format!("{db}@{host}:{port}"),
            suffix => format!("{db}@{host}:{port}/{suffix}"),
        })
    }

    /// The replica's checkpoints, by aggregate.
    pub fn checkpoints(&mut self) -> Result<HashMap<String, Checkpoint>> {
        // `connect` created the table.
        replica::read_checkpoints(&mut self.dest, &self.key)
    }

    /// Applies every entry committed on the source when the run starts that
    /// the target does not have yet, reporting progress after each batch.
    ///
    /// A reading thread fetches, checks and decrypts the next batch while
    /// the current one is applied.
    pub fn run(&mut self, progress: &mut dyn FnMut(&Progress)) -> Result<ReplayReport> {
        let started = Instant::now();
        let mut report = ReplayReport::default();
        let aggregate = self.options.aggregate.clone();
        let tickets = store::tickets(&mut self.meta, aggregate.as_deref())?;
        let mut skips = self.check_skips()?;
        let mut states = self.load_states(&tickets, &mut report)?;
        let total: u64 = states.values().map(|s| gap(s.upto, s.from)).sum();
        let mut restarts = 0;
        loop {
            match self.pipeline(&mut states, &mut report, started, total, progress)? {
                Flow::Done => {
                    // Aggregates that stopped at an entry the operator asked
                    // to pass over: record the skip, and go on with them.
                    let mut resumed = HashSet::new();
                    let mut i = 0;
                    while i < report.stopped.len() {
                        let s = &report.stopped[i];
                        let Some(at) = skips
                            .iter()
                            .position(|k| k.aggregate == s.aggregate && k.seq == s.seq)
                        else {
                            i += 1;
                            continue;
                        };
                        let skip = skips.remove(at);
                        let stopped = report.stopped.remove(i);
                        report.skipped.push(self.skip_entry(&skip, &stopped.error)?);
                        resumed.insert(skip.aggregate);
                    }
                    if resumed.is_empty() {
                        break;
                    }
                    states = self.load_states(&tickets, &mut ReplayReport::default())?;
                    states.retain(|name, _| resumed.contains(name));
                }
                Flow::Moved if restarts < MAX_RESTARTS => {
                    // Another replayer moved this replica's checkpoints:
                    // start again from where they are now.
                    restarts += 1;
                    states = self.load_states(&tickets, &mut ReplayReport::default())?;
                }
                Flow::Moved => {
                    return Err(Error::ReplicaBusy(
                        "other replayers keep moving this replica's checkpoints; run one replayer per replica".into(),
                    ))
                }
            }
        }
        if !report.aggregates.is_empty() {
            let after = self.checkpoints()?;
            for a in &mut report.aggregates {
                a.to_seq = after.get(&a.aggregate).map_or(a.from_seq, |c| c.seq);
            }
        }
        report.aggregates.retain(|a| a.to_seq != a.from_seq);
        report.unused_skips = skips;
        self.record_stops(&report)?;
        report.tables_created.sort();
        report.elapsed = started.elapsed();
        Ok(report)
    }

    /// The skips asked for that are still to do, each checked: the replica
    /// has recorded its aggregate as stopped at exactly that entry, its
    /// checkpoint is right before it, and the entry exists in the log.
    /// Skips already recorded on the replica are done and left out (a
    /// follower given the same skip again on every pass). Anything else is
    /// refused before a single entry is applied.
    fn check_skips(&mut self) -> Result<Vec<Skip>> {
        if self.options.skip.is_empty() {
            return Ok(Vec::new());
        }
        let checkpoints = self.checkpoints()?;
        let done = replica::skipped_entries(&mut self.dest, &self.key)?.unwrap_or_default();
        let stops = replica::stops(&mut self.dest, &self.key)?;
        let mut todo = Vec::new();
        for skip in &self.options.skip {
            let refuse = |why: String| {
                Err(Error::Config(format!(
                    "refusing to skip entry {}:{}: {why}",
                    skip.aggregate, skip.seq
                )))
            };
            if self
                .options
                .aggregate
                .as_ref()
                .is_some_and(|a| *a != skip.aggregate)
            {
                return refuse("this replay is of another aggregate".into());
            }
            if done
                .iter()
                .any(|d| d.aggregate == skip.aggregate && d.seq == skip.seq)
            {
                continue;
            }
            let applied = checkpoints.get(&skip.aggregate).map_or(0, |c| c.seq);
            match stops.get(&skip.aggregate) {
                Some((seq, _)) if *seq == skip.seq && applied + 1 == skip.seq => {}
                Some((seq, _)) => {
                    return refuse(format!(
                        "the replica has applied the aggregate up to seq {applied} and stopped at seq {seq}; only the entry an aggregate stopped at can be skipped"
                    ))
                }
                None => {
                    return refuse(format!(
                        "the replica has not stopped at it (it has applied the aggregate up to seq {applied}); a skip passes over the entry an aggregate stopped at, so run without it first"
                    ))
                }
            }
            if store::next_seq(&mut self.meta, &skip.aggregate, skip.seq)? != Some(skip.seq) {
                return refuse(
                    "the entry is missing from the log (trimmed or deleted); a skip passes over an entry that exists"
                        .into(),
                );
            }
            todo.push(skip.clone());
        }
        Ok(todo)
    }

    /// Passes over `skip`'s entry, which stopped its aggregate with `error`:
    /// moves the checkpoint past it (to its seq and chain value) and records
    /// the skip, in one replica transaction.
    fn skip_entry(&mut self, skip: &Skip, error: &Error) -> Result<SkippedEntry> {
        let at = store::entry_position(&mut self.meta, &skip.aggregate, skip.seq)?.ok_or_else(|| {
            Error::Config(format!(
                "refusing to skip entry {}:{}: the entry is missing from the log (trimmed or deleted)",
                skip.aggregate, skip.seq
            ))
        })?;
        let skipped = SkippedEntry {
            aggregate: skip.aggregate.clone(),
            seq: skip.seq,
            entry_id: at.id,
            reason: skip.reason.clone(),
            error: error.to_string(),
        };
        let key = self.key.clone();
        let mut tx = locked(&mut self.dest, &key)?;
        let applied: Option<i64> = tx
            .query_typed_opt(
                "SELECT seq FROM oplog_checkpoint WHERE source = $1 AND aggregate_name = $2",
                &[(&key, Type::TEXT), (&skip.aggregate, Type::TEXT)],
            )?
            .map(|r| r.get(0));
        if applied.unwrap_or(0) + 1 != skip.seq {
            return Err(Error::ReplicaBusy(format!(
                "another replayer moved this replica's checkpoint of aggregate {:?} while entry {} was being skipped; run one replayer per replica",
                skip.aggregate, skip.seq
            )));
        }
        upsert_checkpoints(
            &mut tx,
            &key,
            &[CheckpointRow {
                aggregate: &skip.aggregate,
                seq: skip.seq,
                chain: &at.chain,
                entry_id: at.id,
                created_us: at.created_us,
            }],
        )?;
        tx.execute_typed(
            "INSERT INTO oplog_skipped (source, aggregate_name, seq, entry_id, chain, reason, error) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
            &[
                (&key, Type::TEXT),
                (&skip.aggregate, Type::TEXT),
                (&skip.seq, Type::INT8),
                (&at.id, Type::INT8),
                (&at.chain, Type::BYTEA),
                (&skipped.reason, Type::TEXT),
                (&skipped.error, Type::TEXT),
            ],
        )?;
        tx.execute_typed(
            "DELETE FROM oplog_stopped WHERE source = $1 AND aggregate_name = $2",
            &[(&key, Type::TEXT), (&skip.aggregate, Type::TEXT)],
        )?;
        tx.commit()?;
        Ok(skipped)
    }

    /// Records on the replica where aggregates stopped (the entries a later
    /// [`Skip`] may pass over), and forgets the stops of aggregates that
    /// advanced past them.
    fn record_stops(&mut self, report: &ReplayReport) -> Result<()> {
        let stopped: Vec<&Stopped> = report
            .stopped
            .iter()
            .filter(|s| !matches!(s.error, Error::ReplicaAhead { .. }))
            .collect();
        // Which aggregates have a stop recorded, read once per replayer:
        // a pass that only advances aggregates that never stopped writes
        // nothing more.
        if self.recorded_stops.is_none() {
            let found = replica::stops(&mut self.dest, &self.key)?;
            self.recorded_stops = Some(found.into_keys().collect());
        }
        let recorded = self.recorded_stops.get_or_insert_with(HashSet::new);
        let cleared: Vec<&str> = report
            .aggregates
            .iter()
            .map(|a| a.aggregate.as_str())
            .chain(report.skipped.iter().map(|s| s.aggregate.as_str()))
            .chain(report.unused_skips.iter().map(|s| s.aggregate.as_str()))
            .chain(stopped.iter().map(|s| s.aggregate.as_str()))
            .filter(|name| recorded.contains(*name))
            .collect();
        if cleared.is_empty() && stopped.is_empty() {
            return Ok(());
        }
        for name in &cleared {
            recorded.remove(*name);
        }
        recorded.extend(stopped.iter().map(|s| s.aggregate.clone()));
        let names: Vec<&str> = stopped.iter().map(|s| s.aggregate.as_str()).collect();
        let seqs: Vec<i64> = stopped.iter().map(|s| s.seq).collect();
        let errors: Vec<String> = stopped.iter().map(|s| s.error.to_string()).collect();
        let key = self.key.clone();
        let mut tx = self.dest.transaction()?;
        tx.execute_typed(
            "DELETE FROM oplog_stopped WHERE source = $1 AND aggregate_name = ANY($2)",
            &[(&key, Type::TEXT), (&cleared, Type::TEXT_ARRAY)],
        )?;
        if !names.is_empty() {
            tx.execute_typed(
                "INSERT INTO oplog_stopped (source, aggregate_name, seq, error) \
                 SELECT $1, u.a, u.s, u.e FROM unnest($2::text[], $3::bigint[], $4::text[]) AS u(a, s, e)",
                &[
                    (&key, Type::TEXT),
                    (&names, Type::TEXT_ARRAY),
                    (&seqs, Type::INT8_ARRAY),
                    (&errors, Type::TEXT_ARRAY),
                ],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Applies batches as the reading thread delivers them, until every
    /// aggregate is done or stopped.
    fn pipeline(
        &mut self,
        states: &mut BTreeMap<String, AggState>,
        report: &mut ReplayReport,
        started: Instant,
        total: u64,
        progress: &mut dyn FnMut(&Progress),
    ) -> Result<Flow> {
        if states.is_empty() {
            return Ok(Flow::Done);
        }
        let source = self.source.take().ok_or_else(|| Error::Panicked {
            thread: "the reading thread of an earlier run of this replayer".into(),
            message: "its source connection was lost with it; connect a new replayer".into(),
        })?;
        let dropped = Arc::new(Mutex::new(HashSet::new()));
        let in_flight = Arc::new(InFlight::default());
        let reader = Reader::new(
            self.oplog.clone(),
            source,
            states
                .iter()
                .map(|(name, s)| {
                    (
                        name.clone(),
                        Position {
                            chain: ChainCursor::after(0, s.applied.seq, s.applied.chain.clone()),
                            upto: s.upto,
                        },
                    )
                })
                .collect(),
            self.options.batch_size,
            u64::try_from(self.options.max_batch_bytes).unwrap_or(u64::MAX),
            dropped.clone(),
            in_flight.clone(),
        );
        let (sender, batches) = mpsc::sync_channel(PREFETCH);
        let handle = thread::spawn(move || reader.produce(sender));
        let mut flow = Ok(Flow::Done);
        for batch in batches.iter() {
            let (items, stopped, bytes) = match batch {
                Ok(batch) => batch,
                Err(e) => {
                    flow = Err(e);
                    break;
                }
            };
            // Counted as applied once this batch is dropped, whichever way
            // the loop goes on.
            let _applied = Applied(&in_flight, bytes);
            let items: Vec<Item> = items
                .into_iter()
                .filter(|i| states.contains_key(&i.entry.aggregate))
                .collect();
            let before = report.stopped.len();
            let mut batch = Vec::with_capacity(items.len());
            let applied = match self.apply(&items, states) {
                Ok(()) => {
                    self.advance(&items, states, report, &mut batch);
                    Ok(())
                }
                Err(ApplyError::Fatal(e)) => Err(e),
                Err(ApplyError::Moved) => {
                    flow = Ok(Flow::Moved);
                    break;
                }
                Err(ApplyError::Entry(_)) => {
                    self.apply_one_by_one(&items, states, report, &mut batch)
                }
            };
            if let Err(e) = applied {
                flow = Err(e);
                break;
            }
            // The reader's stops come after this batch's entries.
            for s in stopped {
                states.remove(&s.aggregate);
                report.stopped.push(s);
            }
            if let Ok(mut set) = dropped.lock() {
                set.extend(report.stopped[before..].iter().map(|s| s.aggregate.clone()));
            }
            states.retain(|_, s| s.applied.seq < s.upto);
            progress(&Progress {
                applied: report.entries_applied,
                remaining: total.saturating_sub(report.entries_applied),
                elapsed: started.elapsed(),
                batch,
            });
            if self
                .stop
                .as_ref()
                .is_some_and(|s| s.load(Ordering::Relaxed))
            {
                // Asked to stop: what is applied is checkpointed; the rest
                // waits for the next run.
                break;
            }
        }
        // Closing stops a reader waiting to read ahead; dropping the
        // receiver stops one at its next batch.
        in_flight.close();
        drop(batches);
        match handle.join() {
            Ok(source) => self.source = Some(source),
            Err(payload) => return Err(Error::panicked("replay's reading thread", &*payload)),
        }
        flow
    }

    /// Compares the source's tickets with the target's checkpoints: the
    /// aggregates with entries to apply.
    fn load_states(
        &mut self,
        tickets: &[store::TicketInfo],
        report: &mut ReplayReport,
    ) -> Result<BTreeMap<String, AggState>> {
        let checkpoints = self.checkpoints()?;
        let mut states = BTreeMap::new();
        for t in tickets {
            let applied = checkpoints.get(&t.name).cloned().unwrap_or(Checkpoint {
                seq: 0,
                chain: GENESIS_CHAIN.to_vec(),
            });
            if t.version < applied.seq {
                report.stopped.push(Stopped {
                    aggregate: t.name.clone(),
                    seq: applied.seq,
                    error: Error::ReplicaAhead {
                        aggregate: t.name.clone(),
                        checkpoint: applied.seq,
                        ticket: t.version,
                    },
                });
                continue;
            }
            if t.version > applied.seq {
                if !report.aggregates.iter().any(|a| a.aggregate == t.name) {
                    report.aggregates.push(AggregateReplay {
                        aggregate: t.name.clone(),
                        from_seq: applied.seq,
                        to_seq: applied.seq,
                    });
                }
                states.insert(
                    t.name.clone(),
                    AggState {
                        from: applied.seq,
                        upto: t.version,
                        applied,
                    },
                );
            }
        }
        Ok(states)
    }

    /// Applies items one per transaction, after a batch failed, so that
    /// everything before the failing entry is kept and the failing entry is
    /// named.
    fn apply_one_by_one(
        &mut self,
        items: &[Item],
        states: &mut BTreeMap<String, AggState>,
        report: &mut ReplayReport,
        applied: &mut Vec<AppliedEntry>,
    ) -> Result<()> {
        for item in items {
            if !states.contains_key(&item.entry.aggregate) {
                continue;
            }
            let one = std::slice::from_ref(item);
            match self.apply(one, states) {
                Ok(()) => self.advance(one, states, report, applied),
                Err(ApplyError::Fatal(e)) => return Err(e),
                Err(ApplyError::Moved) => {
                    return Err(Error::ReplicaBusy(format!(
                        "another replayer moved this replica's checkpoints while {} was applied; run one replayer per replica",
                        item.entry.entry_ref()
                    )))
                }
                Err(ApplyError::Entry(error)) => {
                    let aggregate = item.entry.aggregate.clone();
                    states.remove(&aggregate);
                    report.stopped.push(Stopped {
                        aggregate,
                        seq: item.entry.seq,
                        error,
                    });
                }
            }
        }
        Ok(())
    }

    /// Records that `items` committed.
    fn advance(
        &self,
        items: &[Item],
        states: &mut BTreeMap<String, AggState>,
        report: &mut ReplayReport,
        applied: &mut Vec<AppliedEntry>,
    ) {
        for item in items {
            applied.push(AppliedEntry {
                id: item.entry.id,
                aggregate: item.entry.aggregate.clone(),
                seq: item.entry.seq,
                created_at_micros: item.entry.created_at_micros,
            });
            if let Some(state) = states.get_mut(&item.entry.aggregate) {
                state.applied = Checkpoint {
                    seq: item.entry.seq,
                    chain: item.entry.chain.clone(),
                };
            }
            report.entries_applied += 1;
            report.operations_applied += item.entry.operations.len() as u64;
        }
        report.transactions += 1;
        for name in self.created_tables() {
            if !report.tables_created.contains(&name) {
                report.tables_created.push(name);
            }
        }
    }

    fn created_tables(&self) -> Vec<String> {
        self.plans
            .values()
            .filter(|p| p.created)
            .map(|p| p.table.to_string())
            .collect()
    }

    /// Applies `items` and their checkpoints in one target transaction.
    fn apply(
        &mut self,
        items: &[Item],
        states: &BTreeMap<String, AggState>,
    ) -> Result<(), ApplyError> {
        if items.is_empty() {
            return Ok(());
        }
        // Runs (and so plans, which may create tables) are built before the
        // transaction starts.
        let groups = self.build_runs(items)?;
        let key = self.key.clone();
        let mut tx = locked(&mut self.dest, &key)?;
        check_checkpoints(&mut tx, &key, items, states)?;
        for group in &groups {
            for run in &group.runs {
                run.execute(&mut tx, items)?;
            }
        }
        write_checkpoints(&mut tx, &key, items)?;
        tx.commit()?;
        Ok(())
    }

    /// The plan for `type_name` from the catalog named `digest`.
    fn plan(
        &mut self,
        digest: Option<&[u8]>,
        catalog: &TypeCatalog,
        type_name: &str,
    ) -> Result<Arc<TablePlan>> {
        // Most batches are many operations of a few types: check the plan
        // used last before building a key.
        if let Some((d, t, plan)) = &self.last_plan {
            if d.as_deref() == digest && t == type_name {
                return Ok(plan.clone());
            }
        }
        let key = (digest.map(<[u8]>::to_vec), type_name.to_string());
        if let Some(plan) = self.plans.get(&key) {
            self.last_plan = Some((key.0, key.1, plan.clone()));
            return Ok(plan.clone());
        }
        let plan = Arc::new(TablePlan::build(
            catalog,
            type_name,
            &self.target,
            &mut self.meta,
            &mut self.dest,
        )?);
        self.plans.insert(key, plan.clone());
        Ok(plan)
    }

    /// Groups the operations of `items` per table, merging consecutive
    /// operations of one kind into runs (one statement each).
    fn build_runs(&mut self, items: &[Item]) -> Result<Vec<Group>, ApplyError> {
        let mut groups: Vec<Group> = Vec::new();
        let mut index: HashMap<TableName, usize> = HashMap::new();
        for (i, item) in items.iter().enumerate() {
            for (o, op) in item.entry.operations.iter().enumerate() {
                let plan = self
                    .plan(item.catalog.as_deref(), &item.entry.catalog, &op.type_name)
                    .map_err(classify)?;
                let msg = item
                    .entry
                    .catalog
                    .decode_dynamic(&op.type_name, &op.value)
                    .map_err(|e| ApplyError::Entry(at_entry(&item.entry, o, e)))?;
                let kind = plan
                    .kind(op.op, &op.field_mask, &op.null_mask)
                    .map_err(|e| ApplyError::Entry(at_entry(&item.entry, o, e)))?;
                let g = *index.entry(plan.table.clone()).or_insert_with(|| {
                    groups.push(Group { runs: Vec::new() });
                    groups.len() - 1
                });
                let runs = &mut groups[g].runs;
                let key = match kind {
                    RunKind::Insert => None,
                    _ => Some(mapping::key_text(&plan.fields, &plan.pk, &msg)),
                };
                let joinable = runs.last().is_some_and(|r| {
                    Arc::ptr_eq(&r.plan, &plan)
                        && r.kind == kind
                        && !(matches!(kind, RunKind::Update { .. })
                            && key.as_ref().is_some_and(|k| r.keys.contains(k)))
                });
                if !joinable {
                    runs.push(Run::new(plan.clone(), kind.clone()));
                }
                let Some(run) = runs.last_mut() else {
                    continue;
                };
                run.push(i, o, key, &msg).map_err(|reason| {
                    ApplyError::Entry(Error::Mapping {
                        type_name: op.type_name.clone(),
                        table: plan.table.to_string(),
                        reason: format!("{}, operation #{o}: {reason}", item.entry.entry_ref()),
                    })
                })?;
            }
        }
        Ok(groups)
    }
}

/// Marks a batch's bytes as no longer in flight when dropped.
struct Applied<'a>(&'a InFlight, u64);

impl Drop for Applied<'_> {
    fn drop(&mut self) {
        self.0.done(self.1);
    }
}

/// Batches the reading thread keeps ready ahead of the one being applied.
const PREFETCH: usize = 2;

/// How often a run starts again after other replayers moved the checkpoints.
const MAX_RESTARTS: u32 = 10;

/// How a pipeline ended.
enum Flow {
    /// Every aggregate is applied or stopped.
    Done,
    /// Another replayer moved the checkpoints; reload and go on.
    Moved,
}

/// Checked, decrypted entries, the aggregates that stopped after them, and
/// the bytes the entries took to read.
pub(super) type Batch = (Vec<Item>, Vec<Stopped>, u64);

pub(super) fn gap(upto: i64, from: i64) -> u64 {
    u64::try_from(upto.saturating_sub(from)).unwrap_or(0)
}

fn at_entry(e: &Entry, op: usize, error: Error) -> Error {
    Error::CorruptEntry {
        entry: e.entry_ref(),
        reason: format!("operation #{op}: {error}"),
    }
}

/// Connection and server failures stop the whole run; anything else
/// concerns one entry.
pub(super) fn is_fatal(e: &Error) -> bool {
    match e {
        Error::Postgres(pg) => pg.as_db_error().is_none() || pg.is_closed(),
        Error::Io { .. } => true,
        _ => false,
    }
}

fn classify(e: Error) -> ApplyError {
    if is_fatal(&e) {
        ApplyError::Fatal(e)
    } else {
        ApplyError::Entry(e)
    }
}

/// Checks, under the replica's lock, that its checkpoints are where this
/// run left them: no other replayer has moved them.
fn check_checkpoints(
    tx: &mut Transaction<'_>,
    key: &str,
    items: &[Item],
    states: &BTreeMap<String, AggState>,
) -> Result<(), ApplyError> {
    let mut names: Vec<&str> = items.iter().map(|i| i.entry.aggregate.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    let rows = tx.query_typed(
        "SELECT aggregate_name, seq FROM oplog_checkpoint WHERE source = $1 AND aggregate_name = ANY($2)",
        &[(&key, Type::TEXT), (&names, Type::TEXT_ARRAY)],
    )?;
    let found: HashMap<String, i64> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    for name in names {
        let expected = states.get(name).map_or(0, |s| s.applied.seq);
        if found.get(name).copied().unwrap_or(0) != expected {
            return Err(ApplyError::Moved);
        }
    }
    Ok(())
}

/// Moves the checkpoint of every aggregate in `items` to its last item.
fn write_checkpoints(
    tx: &mut Transaction<'_>,
    key: &str,
    items: &[Item],
) -> Result<(), ApplyError> {
    let mut last: BTreeMap<&str, &Entry> = BTreeMap::new();
    for item in items {
        last.insert(&item.entry.aggregate, &item.entry);
    }
    let rows: Vec<CheckpointRow<'_>> = last
        .values()
        .map(|e| CheckpointRow {
            aggregate: &e.aggregate,
            seq: e.seq,
            chain: &e.chain,
            entry_id: e.id,
            created_us: e.created_at_micros,
        })
        .collect();
    upsert_checkpoints(tx, key, &rows)?;
    Ok(())
}

/// A checkpoint to write: the last entry applied (or passed over) of an
/// aggregate.
struct CheckpointRow<'a> {
    aggregate: &'a str,
    seq: i64,
    chain: &'a [u8],
    entry_id: i64,
    created_us: i64,
}

/// Writes the replica's checkpoints of `rows`' aggregates.
fn upsert_checkpoints(
    tx: &mut Transaction<'_>,
    key: &str,
    rows: &[CheckpointRow<'_>],
) -> Result<(), postgres::Error> {
    let names: Vec<&str> = rows.iter().map(|r| r.aggregate).collect();
    let seqs: Vec<i64> = rows.iter().map(|r| r.seq).collect();
    let chains: Vec<&[u8]> = rows.iter().map(|r| r.chain).collect();
    let ids: Vec<i64> = rows.iter().map(|r| r.entry_id).collect();
    let created: Vec<i64> = rows.iter().map(|r| r.created_us).collect();
    tx.execute_typed(
        "INSERT INTO oplog_checkpoint (source, aggregate_name, seq, chain, entry_id, entry_created_at) \
         SELECT $1, u.a, u.s, u.c, u.i, 'epoch'::timestamptz + u.t * interval '1 microsecond' \
         FROM unnest($2::text[], $3::bigint[], $4::bytea[], $5::bigint[], $6::bigint[]) AS u(a, s, c, i, t) \
         ON CONFLICT (source, aggregate_name) DO UPDATE SET seq = excluded.seq, chain = excluded.chain, \
         entry_id = excluded.entry_id, entry_created_at = excluded.entry_created_at, applied_at = now()",
        &[
            (&key, Type::TEXT),
            (&names, Type::TEXT_ARRAY),
            (&seqs, Type::INT8_ARRAY),
            (&chains, Type::BYTEA_ARRAY),
            (&ids, Type::INT8_ARRAY),
            (&created, Type::INT8_ARRAY),
        ],
    )?;
    Ok(())
}

/// A transaction on the replica holding the lock on the replica's key
/// (source and suffix), which every writer of its checkpoints takes.
fn locked<'c>(dest: &'c mut Client, key: &str) -> Result<Transaction<'c>, postgres::Error> {
    let mut tx = dest.transaction()?;
    tx.execute_typed(
        "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
        &[(&key, Type::TEXT)],
    )?;
    Ok(tx)
}
