//! The demo runner: write a realistic load with many writers, replay it into
//! a replica, verify both, report.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Barrier;
use std::time::{Duration, Instant};

use postgres::Client;
use serde::Serialize;

use super::writer::{Action, Tenant, Writer, INDEXES};
use crate::codec::crypto::Keyring;
use crate::error::{Error, Result};
use crate::replica::replay::{ReplayOptions, Replayer};
use crate::replica::verify::{verify, FindingKind, VerifyOptions};
use crate::replica::Target;
use crate::source::retry::RetryPolicy;
use crate::source::write::{LockMode, Oplog};
use crate::sql::ident;
use crate::store::connect::{check_url, connect};
use crate::tooling::bench::with_database;
use crate::tooling::cleanup::{register, Registered, Task};
use crate::tooling::cluster::{Cluster, ClusterOptions};

/// Default number of concurrent writers.
pub const DEFAULT_WRITERS: usize = 8;

/// Default number of transactions (entries) per writer.
pub const DEFAULT_ENTRIES: usize = 200;

/// Default number of aggregates (tenants).
pub const DEFAULT_AGGREGATES: usize = 4;

/// Names of the databases the demo creates in an embedded cluster.
const EMBEDDED_SOURCE: &str = "oplog_demo";
const EMBEDDED_REPLICA: &str = "oplog_demo_replica";

/// How often progress is reported while writing.
const TICK: Duration = Duration::from_millis(100);

/// What the demo runs, and where.
#[derive(Debug)]
pub struct DemoConfig {
    /// The source database (migrated, and given the demo tables when they
    /// are missing). `None` starts a private [`Cluster`] for the run.
    pub database_url: Option<String>,
    /// Where the embedded cluster's binaries are, when one is started.
    pub cluster: ClusterOptions,
    /// The replica database (which must exist); `None` creates one beside
    /// the source, on the same server.
    pub into: Option<String>,
    /// Concurrent writers, each with its own connection.
    pub writers: usize,
    /// Transactions per writer; each writes exactly one entry.
    pub entries: usize,
    /// Aggregates: one per tenant, and every tenant's rows are written only
    /// in entries of its aggregate.
    pub aggregates: usize,
    /// Replay into the replica and verify; `false` stops after writing.
    pub replay: bool,
    /// Keep the databases the demo created (and the embedded cluster,
    /// stopped) instead of removing them at the end.
    pub keep: bool,
    /// The keyring to encrypt with; `None` generates a throwaway one, which
    /// is refused when the database already holds a log (its readers could
    /// not decrypt the entries this run adds). A keyring must hold the key
    /// of the log's newest entry.
    pub keyring: Option<Keyring>,
    /// How writers redeem tickets.
    pub lock_mode: LockMode,
    /// How lost ticket races and serialization failures are retried.
    pub retry: RetryPolicy,
}

impl Default for DemoConfig {
    /// An embedded cluster, [`DEFAULT_WRITERS`] writers doing
    /// [`DEFAULT_ENTRIES`] transactions each over [`DEFAULT_AGGREGATES`]
    /// tenants, pessimistic locking, replay and verification, nothing kept.
    fn default() -> Self {
        DemoConfig {
            database_url: None,
            cluster: ClusterOptions::default(),
            into: None,
            writers: DEFAULT_WRITERS,
            entries: DEFAULT_ENTRIES,
            aggregates: DEFAULT_AGGREGATES,
            replay: true,
            keep: false,
            keyring: None,
            lock_mode: LockMode::Pessimistic,
            retry: RetryPolicy::attempts(1000),
        }
    }
}

impl DemoConfig {
    fn check(&self) -> Result<()> {
        for (name, value) in [
            ("writers", self.writers),
            ("entries", self.entries),
            ("aggregates", self.aggregates),
        ] {
            if value == 0 {
                return Err(Error::Config(format!("{name} must be at least 1")));
            }
        }
        Ok(())
    }
}

/// A phase of the demo, for progress reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DemoPhase {
    /// Starting the embedded cluster.
    Starting,
    /// Creating the schema and the tickets.
    Preparing,
    /// Writers at work: `done` of `total` entries written.
    Writing,
    /// Replaying into the replica: `done` of `total` entries applied.
    Replaying,
    /// Verifying the log and the replica.
    Verifying,
    /// Removing what the demo created.
    CleaningUp,
}

/// Where the demo is.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DemoProgress {
    /// The phase.
    pub phase: DemoPhase,
    /// Entries written or applied so far in the phase.
    pub done: u64,
    /// Entries the phase will write or apply (0 when it does not count).
    pub total: u64,
    /// Retries so far (writing only).
    pub retries: u64,
    /// Time since the phase started.
    pub elapsed: Duration,
}

/// The server the demo ran against.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DemoServer {
    /// True for a private cluster started for the run.
    pub embedded: bool,
    /// The server's version (`SHOW server_version`).
    pub version: String,
    /// The embedded cluster's directory.
    pub cluster_dir: Option<PathBuf>,
    /// The operating-system user the embedded server ran as, when not this
    /// process's.
    pub os_user: Option<String>,
    /// True when the embedded cluster was kept (stopped) rather than
    /// removed.
    pub kept: bool,
    /// With a kept cluster: the command that starts it again.
    pub start_command: Option<String>,
    /// With a kept cluster: the URL of its `postgres` database once started.
    pub url: Option<String>,
}

/// One table of the replica compared with the source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DemoTable {
    /// The table.
    pub table: String,
    /// Rows in the source.
    pub source_rows: u64,
    /// Rows in the replica.
    pub replica_rows: u64,
    /// Rows missing, extra or different in the replica.
    pub differences: u64,
}

/// What the demo did and found.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DemoReport {
    /// Concurrent writers.
    pub writers: usize,
    /// Transactions per writer.
    pub entries_per_writer: usize,
    /// Aggregates (tenants).
    pub aggregates: usize,
    /// `"pessimistic"` or `"optimistic"`.
    pub lock_mode: &'static str,
    /// Entries written, one per committed transaction.
    pub entries_written: u64,
    /// Operations in those entries.
    pub operations_written: u64,
    /// Attempts that failed retryably (lost ticket race, serialization
    /// failure, deadlock) and ran again.
    pub retries: u64,
    /// Seconds the writers took.
    pub write_s: f64,
    /// Entries (committed transactions) per second.
    pub write_rate_per_s: f64,
    /// Committed transactions by action (`signup`, `update_profile`, ...).
    pub actions: BTreeMap<&'static str, u64>,
    /// The source database's name.
    pub source_database: String,
    /// The replica database's name; `None` without replay.
    pub replica_database: Option<String>,
    /// Entries applied to the replica.
    pub replayed: u64,
    /// Seconds the replay took.
    pub replay_s: f64,
    /// Entries applied per second.
    pub replay_rate_per_s: f64,
    /// Aggregates whose replay stopped at an entry, with why.
    pub replay_stopped: Vec<String>,
    /// Problems `verify` found in the log and the replica's checkpoints;
    /// `None` without replay.
    pub verify_findings: Option<u64>,
    /// The first findings, in words.
    pub findings: Vec<String>,
    /// Entries `verify` checked.
    pub entries_verified: u64,
    /// True when the replica holds exactly the source's rows and has
    /// applied the whole log; `None` without replay.
    pub replica_matches: Option<bool>,
    /// The tables compared.
    pub tables: Vec<DemoTable>,
    /// The server.
    pub server: DemoServer,
    /// Databases the demo created and left in place (`--keep`).
    pub kept_databases: Vec<String>,
    /// Databases the demo created and dropped at the end.
    pub dropped_databases: Vec<String>,
    /// Seconds the whole run took, the server's start included.
    pub elapsed_s: f64,
}

impl DemoReport {
    /// True unless replay or verification found a problem.
    pub fn is_clean(&self) -> bool {
        self.replay_stopped.is_empty()
            && self.verify_findings.unwrap_or(0) == 0
            && self.replica_matches != Some(false)
    }
}

/// Most findings listed in the report.
const LISTED_FINDINGS: usize = 10;

/// A database the demo created on a server that outlives it: dropped when
/// the demo ends (or is interrupted) unless kept.
struct Created {
    name: String,
    task: Registered,
}

impl Created {
    fn on(admin_url: &str, name: &str) -> Result<Created> {
        let mut admin = connect(admin_url)?;
        admin
            .batch_execute(&format!("CREATE DATABASE {}", ident(name)))
            .map_err(|e| {
                Error::Config(format!(
                    "cannot create the replica database {name} beside the source ({}); pass --into with the URL of an existing database",
                    Error::from(e)
                ))
            })?;
        Ok(Created {
            name: name.to_string(),
            task: register(Task::Database {
                admin_url: admin_url.to_string(),
                name: name.to_string(),
            }),
        })
    }

    /// Leaves the database in place.
    fn keep(self) -> String {
        self.task.finish(|_| ());
        self.name
    }

    /// Drops the database now.
    fn drop_now(self) -> String {
        drop(self.task);
        self.name
    }
}

/// Runs the demo: writes `writers × entries` entries with their domain
/// rows, then (unless `replay` is off) replays the log into the replica and
/// verifies the log and the replica, reporting progress as it goes.
///
/// Fails (`Err`) when something prevents the run; problems that replay or
/// verification find are in the report ([`DemoReport::is_clean`]).
///
/// ```no_run
/// use oplog::demo::{self, DemoConfig};
///
/// let report = demo::run(
///     DemoConfig { writers: 2, entries: 50, ..DemoConfig::default() },
///     &mut |p| eprintln!("{:?} {}/{}", p.phase, p.done, p.total),
/// )?;
/// assert_eq!(report.replica_matches, Some(true));
/// # Ok::<(), oplog::Error>(())
/// ```
pub fn run(mut cfg: DemoConfig, progress: &mut dyn FnMut(&DemoProgress)) -> Result<DemoReport> {
    cfg.check()?;
    // Every URL is checked before anything starts, so that a wrong replica
    // URL is not found only after the writers have run.
    for url in cfg.database_url.iter().chain(&cfg.into) {
        check_url(url)?;
    }
    let keyring = cfg.keyring.take();
    let started = Instant::now();
    let phase = |progress: &mut dyn FnMut(&DemoProgress), phase, since: Instant| {
        progress(&DemoProgress {
            phase,
            done: 0,
            total: 0,
            retries: 0,
            elapsed: since.elapsed(),
        })
    };

    // The source, and where a replica can be created.
    let mut cluster = None;
    let source_url = match &cfg.database_url {
        Some(url) => url.clone(),
        None => {
            phase(progress, DemoPhase::Starting, started);
            let c = Cluster::start(&cfg.cluster)?;
            let mut admin = connect(c.url())?;
            admin.batch_execute(&format!("CREATE DATABASE {EMBEDDED_SOURCE}"))?;
            let url = with_database(&c.url(), EMBEDDED_SOURCE);
            cluster = Some(c);
            url
        }
    };

    phase(progress, DemoPhase::Preparing, Instant::now());
    let mut client = connect(&source_url)?;
    let (source_database, version): (String, String) = {
        let row = client.query_one(
            "SELECT current_database()::text, current_setting('server_version')",
            &[],
        )?;
        let version: String = row.get(1);
        // `15.8 (Debian 15.8-1)`: the number is enough.
        let short = version.split_whitespace().next().unwrap_or("").to_string();
        (row.get(0), short)
    };
    // Before anything is created or written: entries under a key the log's
    // readers do not hold would stay unreadable for good.
    check_existing_log(&mut client, &source_database, keyring.as_ref())?;
    let oplog = Oplog::new(super::catalog(), keyring.unwrap_or_else(Keyring::generate));
    crate::store::migrate::migrate_url(&source_url)?;
    prepare_schema(&mut client)?;

    // Tenants unique to this run, so that its writers only touch rows its
    // own entries created.
    let run_id = &uuid::Uuid::new_v4().simple().to_string()[..8];
    let tenants: Vec<Tenant> = (0..cfg.aggregates)
        .map(|k| {
            let id = format!("t{run_id}-{k}");
            Tenant {
                aggregate: format!("tenant-{id}"),
                id,
            }
        })
        .collect();
    for t in &tenants {
        oplog.ensure_ticket(&mut client, &t.aggregate)?;
    }
    drop(client);

    let written = write(&cfg, &source_url, &oplog, &tenants, progress)?;

    let mut report = DemoReport {
        writers: cfg.writers,
        entries_per_writer: cfg.entries,
        aggregates: cfg.aggregates,
        lock_mode: match cfg.lock_mode {
            LockMode::Pessimistic => "pessimistic",
            LockMode::Optimistic => "optimistic",
        },
        entries_written: written.entries,
        operations_written: written.operations,
        retries: written.retries,
        write_s: written.elapsed.as_secs_f64(),
        write_rate_per_s: per_second(written.entries, written.elapsed),
        actions: written.actions,
        source_database,
        replica_database: None,
        replayed: 0,
        replay_s: 0.0,
        replay_rate_per_s: 0.0,
        replay_stopped: Vec::new(),
        verify_findings: None,
        findings: Vec::new(),
        entries_verified: 0,
        replica_matches: None,
        tables: Vec::new(),
        server: DemoServer {
            embedded: cluster.is_some(),
            version,
            cluster_dir: cluster.as_ref().map(|c| c.dir().to_path_buf()),
            os_user: cluster
                .as_ref()
                .and_then(|c| c.os_user().map(str::to_string)),
            kept: false,
            start_command: None,
            url: None,
        },
        kept_databases: Vec::new(),
        dropped_databases: Vec::new(),
        elapsed_s: 0.0,
    };

    let mut created = None;
    if cfg.replay {
        let replica_url = match (&cfg.into, &cluster) {
            (Some(url), _) => url.clone(),
            (None, Some(c)) => {
                connect(c.url())?.batch_execute(&format!("CREATE DATABASE {EMBEDDED_REPLICA}"))?;
                with_database(&c.url(), EMBEDDED_REPLICA)
            }
            (None, None) => {
                let name = format!(
                    "oplog_demo_replica_{}",
                    &uuid::Uuid::new_v4().simple().to_string()[..12]
                );
                let db = Created::on(&source_url, &name)?;
                let url = with_database(&source_url, &db.name);
                created = Some(db);
                url
            }
        };
        replay_and_verify(&oplog, &source_url, &replica_url, &mut report, progress)?;
    }

    phase(progress, DemoPhase::CleaningUp, Instant::now());
    if let Some(db) = created {
        if cfg.keep {
            report.kept_databases.push(db.keep());
        } else {
            report.dropped_databases.push(db.drop_now());
        }
    }
    if let Some(c) = cluster {
        if cfg.keep {
            let kept = c.keep();
            report.server.kept = true;
            report.server.start_command = Some(kept.start_command);
            report.server.url = Some(kept.url);
        } else {
            c.remove();
        }
    }
    report.elapsed_s = started.elapsed().as_secs_f64();
    Ok(report)
}

/// Refuses to add to a log that `keyring` cannot continue: without a
/// keyring (a throwaway key would encrypt this run's entries, which no
/// reader of the log could then decrypt, and this run could not replay the
/// earlier ones), or with one that lacks the key of the log's newest entry
/// (a different key file).
fn check_existing_log(
    client: &mut Client,
    database: &str,
    keyring: Option<&Keyring>,
) -> Result<()> {
    let migrated: bool = client
        .query_one("SELECT to_regclass('oplog_entry') IS NOT NULL", &[])?
        .get(0);
    if !migrated {
        return Ok(());
    }
    // The newest entry by id, through the primary key's index: no scan of
    // the log, however long.
    let Some(newest) = client.query_opt(
        "SELECT id, key_id FROM oplog_entry ORDER BY id DESC LIMIT 1",
        &[],
    )?
    else {
        return Ok(());
    };
    let (id, key_id): (i64, String) = (newest.get(0), newest.get(1));
    match keyring {
        None => Err(Error::Config(format!(
            "database {database} already holds an oplog (its newest entry, id {id}, is under key {key_id}); without its key file this run would write under a throwaway key that the log's readers do not hold: pass the key file that wrote the log (--key-file), or use an empty database"
        ))),
        Some(ring) if !ring.key_ids().any(|k| k == key_id) => Err(Error::Config(format!(
            "database {database} already holds an oplog whose newest entry (id {id}) is under key {key_id}, which the key file does not hold; pass the key file that wrote the log (--key-file), or use an empty database"
        ))),
        Some(_) => Ok(()),
    }
}

/// Creates the demo tables and indexes when missing, one process at a time.
fn prepare_schema(client: &mut Client) -> Result<()> {
    // CREATE TYPE and CREATE TABLE IF NOT EXISTS can still collide when two
    // demos prepare one database at once; the lock makes them take turns.
    client.batch_execute("SELECT pg_advisory_lock(hashtext('oplog_demo_schema'))")?;
    let created = client
        .batch_execute(super::SCHEMA)
        .and_then(|()| client.batch_execute(INDEXES));
    client.batch_execute("SELECT pg_advisory_unlock(hashtext('oplog_demo_schema'))")?;
    Ok(created?)
}

fn per_second(n: u64, elapsed: Duration) -> f64 {
    let secs = elapsed.as_secs_f64();
    if secs > 0.0 {
        n as f64 / secs
    } else {
        0.0
    }
}

/// What the writers did together.
struct Written {
    entries: u64,
    operations: u64,
    retries: u64,
    elapsed: Duration,
    actions: BTreeMap<&'static str, u64>,
}

/// Runs the writers until each has committed `cfg.entries` transactions,
/// or one fails (the others then stop after their current transaction).
fn write(
    cfg: &DemoConfig,
    url: &str,
    oplog: &Oplog,
    tenants: &[Tenant],
    progress: &mut dyn FnMut(&DemoProgress),
) -> Result<Written> {
    let entries = AtomicU64::new(0);
    let retries = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    // The writers connect and prepare first; the clock starts when all are
    // ready.
    let ready = Barrier::new(cfg.writers + 1);
    let total = (cfg.writers as u64).saturating_mul(cfg.entries as u64);
    let (results, elapsed) = std::thread::scope(|s| {
        let handles: Vec<_> = (0..cfg.writers)
            .map(|index| {
                let (entries, retries, stop, ready) = (&entries, &retries, &stop, &ready);
                s.spawn(move || {
                    let writer =
                        Writer::connect(url, oplog, tenants, index, cfg.lock_mode, cfg.retry);
                    ready.wait();
                    let result = (|| {
                        let mut writer = writer?;
                        let mut actions: BTreeMap<Action, u64> = BTreeMap::new();
                        let mut operations = 0u64;
                        for n in 0..cfg.entries {
                            if stop.load(Ordering::Relaxed) {
                                break;
                            }
                            let done = writer.step(n)?;
                            *actions.entry(done.action).or_default() += 1;
                            operations += done.operations as u64;
                            entries.fetch_add(1, Ordering::Relaxed);
                            retries.fetch_add(
                                u64::from(done.attempts.saturating_sub(1)),
                                Ordering::Relaxed,
                            );
                        }
                        Ok((actions, operations))
                    })();
                    if result.is_err() {
                        stop.store(true, Ordering::Relaxed);
                    }
                    result
                })
            })
            .collect();
        ready.wait();
        let begun = Instant::now();
        while !handles.iter().all(|h| h.is_finished()) {
            progress(&DemoProgress {
                phase: DemoPhase::Writing,
                done: entries.load(Ordering::Relaxed),
                total,
                retries: retries.load(Ordering::Relaxed),
                elapsed: begun.elapsed(),
            });
            std::thread::sleep(TICK);
        }
        let elapsed = begun.elapsed();
        let results: Vec<Result<(BTreeMap<Action, u64>, u64)>> = handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|payload| Err(Error::panicked("a demo writer", &*payload)))
            })
            .collect();
        (results, elapsed)
    });
    let mut written = Written {
        entries: entries.load(Ordering::Relaxed),
        operations: 0,
        retries: retries.load(Ordering::Relaxed),
        elapsed,
        actions: BTreeMap::new(),
    };
    for result in results {
        let (actions, operations) = result?;
        written.operations += operations;
        for (action, n) in actions {
            *written.actions.entry(action.name()).or_default() += n;
        }
    }
    progress(&DemoProgress {
        phase: DemoPhase::Writing,
        done: written.entries,
        total,
        retries: written.retries,
        elapsed,
    });
    Ok(written)
}

/// Replays the log into the replica and verifies the log and the replica.
fn replay_and_verify(
    oplog: &Oplog,
    source_url: &str,
    replica_url: &str,
    report: &mut DemoReport,
    progress: &mut dyn FnMut(&DemoProgress),
) -> Result<()> {
    report.replica_database = Some(
        connect(replica_url)?
            .query_one("SELECT current_database()::text", &[])?
            .get(0),
    );
    let mut replayer = Replayer::connect(
        oplog,
        source_url,
        Target::database(replica_url),
        ReplayOptions::default(),
    )?;
    let replayed = replayer.run(&mut |p| {
        progress(&DemoProgress {
            phase: DemoPhase::Replaying,
            done: p.applied,
            total: p.applied + p.remaining,
            retries: 0,
            elapsed: p.elapsed,
        })
    })?;
    drop(replayer);
    report.replayed = replayed.entries_applied;
    report.replay_s = replayed.elapsed.as_secs_f64();
    report.replay_rate_per_s = per_second(replayed.entries_applied, replayed.elapsed);
    report.replay_stopped = replayed
        .stopped
        .iter()
        .map(|s| format!("{} at seq {}: {}", s.aggregate, s.seq, s.error))
        .collect();

    let begun = Instant::now();
    progress(&DemoProgress {
        phase: DemoPhase::Verifying,
        done: 0,
        total: 0,
        retries: 0,
        elapsed: Duration::ZERO,
    });
    let verified = verify(
        oplog,
        source_url,
        &VerifyOptions {
            against: Some(Target::database(replica_url)),
            ..VerifyOptions::default()
        },
    )?;
    progress(&DemoProgress {
        phase: DemoPhase::Verifying,
        done: verified.entries_checked,
        total: verified.entries_checked,
        retries: 0,
        elapsed: begun.elapsed(),
    });
    let replica_findings = verified.findings.iter().any(|f| {
        matches!(
            f.kind,
            FindingKind::ReplicaBehind
                | FindingKind::ReplicaAhead
                | FindingKind::CheckpointMismatch
        )
    });
    report.verify_findings = Some(verified.findings.len() as u64);
    report.findings = verified
        .findings
        .iter()
        .take(LISTED_FINDINGS)
        .map(ToString::to_string)
        .collect();
    report.entries_verified = verified.entries_checked;
    report.tables = verified
        .tables
        .iter()
        .map(|t| DemoTable {
            table: t.table.clone(),
            source_rows: t.source_rows,
            replica_rows: t.replica_rows,
            differences: t.differences,
        })
        .collect();
    report.replica_matches = Some(
        replayed.is_complete() && !replica_findings && verified.tables.iter().all(|t| t.is_clean()),
    );
    Ok(())
}
