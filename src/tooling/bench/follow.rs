//! The follow benchmark: a follower keeping a replica up to date while
//! writers commit, next to PostgreSQL's built-in logical replication of the
//! same table, fed by the same transactions, in the same run.
//!
//! One source database gets the writers: each transaction inserts a
//! `demo_user` row and the oplog entry that records it. A publication on
//! `demo_user` feeds a subscriber database (the baseline); a [`Follower`]
//! feeds a replica database. Both target tables have an extra column,
//! `arrived_at DEFAULT clock_timestamp()`, filled when the row is applied;
//! each writer notes the wall-clock time its commit returned. Lag is the
//! difference, measured the same way for both.
//!
//! Two phases: a steady one at a fixed rate (lag percentiles), then a burst
//! at the fastest rate the writers reach (throughput, and how long each
//! side takes to catch up once the writers stop).
//!
//! The baseline needs `wal_level = logical` on the server; without it the
//! report says so and measures the follower alone.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use postgres::Client;
use serde::Serialize;
use uuid::Uuid;

use super::{check_failed, invalid, user, Scratch};
use crate::codec::crypto::Keyring;
use crate::codec::entry::NewEntry;
use crate::error::{Error, Result};
use crate::replica::follow::{FollowOptions, Follower};
use crate::replica::Target;
use crate::source::retry::RetryPolicy;
use crate::source::write::Oplog;

/// Lag p99 aimed for at the steady rate, in milliseconds.
pub const FOLLOW_TARGET_P99_MS: f64 = 100.0;

/// The most catch-up time aimed for, as a multiple of the baseline's.
pub const FOLLOW_TARGET_CATCH_UP_RATIO: f64 = 2.0;

/// What to run.
#[derive(Debug, Clone)]
pub struct FollowBenchConfig {
    /// URL of the server, for administrative connections.
    pub url: String,
    /// Entries per second in the steady phase, over all writers.
    pub steady_rate: f64,
    /// Seconds of each phase.
    pub seconds: f64,
    /// Concurrent writers.
    pub writers: usize,
    /// Aggregates the writers spread over.
    pub aggregates: usize,
    /// The follower's settings.
    pub follow: FollowOptions,
    /// Writers notify followers at commit ([`Oplog::with_notify`]).
    pub notify: bool,
}

impl Default for FollowBenchConfig {
    /// 1,000 entries/s steady, 10 s per phase, 4 writers over 4 aggregates,
    /// the follower's defaults, no notifications (polling only).
    fn default() -> Self {
        FollowBenchConfig {
            url: super::DEFAULT_URL.to_string(),
            steady_rate: 1000.0,
            seconds: 10.0,
            writers: 4,
            aggregates: 4,
            follow: FollowOptions::default(),
            notify: false,
        }
    }
}

impl FollowBenchConfig {
    /// The defaults, with the URL taken from `DATABASE_URL` when it is set.
    pub fn from_env() -> Self {
        FollowBenchConfig {
            url: std::env::var("DATABASE_URL").unwrap_or_else(|_| super::DEFAULT_URL.to_string()),
            ..FollowBenchConfig::default()
        }
    }
}

/// Lag and catch-up of one replication method.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Replication {
    /// `"oplog follow"` or `"logical replication"`.
    pub method: &'static str,
    /// Median lag from commit on the source to the row on the target, in
    /// the steady phase, in milliseconds.
    pub lag_p50_ms: f64,
    /// 99th percentile of the same.
    pub lag_p99_ms: f64,
    /// Largest lag seen in the steady phase.
    pub lag_max_ms: f64,
    /// Seconds from the end of the burst until the target had every row.
    pub catch_up_s: f64,
    /// Rows per second the target received during the burst and its
    /// catch-up.
    pub apply_rate_per_s: f64,
}

/// What [`follow`] measured.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FollowBenchReport {
    /// Always `"follow"`.
    pub scenario: &'static str,
    /// Entries per second the follower applied in the burst.
    pub rate_per_s: f64,
    /// Rows per second logical replication applied in the burst, when
    /// measured.
    pub baseline_per_s: Option<f64>,
    /// `rate_per_s / baseline_per_s`, when measured.
    pub ratio: Option<f64>,
    /// Steady rate asked for, entries per second.
    pub steady_rate: f64,
    /// Whether writers notified followers at commit.
    pub notify: bool,
    /// Steady rate the writers reached.
    pub steady_achieved: f64,
    /// Commits per second the writers reached in the burst.
    pub burst_rate: f64,
    /// Entries written in all.
    pub entries: u64,
    /// The follower.
    pub follower: Replication,
    /// Logical replication, when the server allows it.
    pub logical: Option<Replication>,
    /// Why logical replication was not measured.
    pub logical_unavailable: Option<String>,
    /// Follower catch-up over logical replication's, when measured.
    pub catch_up_ratio: Option<f64>,
}

impl FollowBenchReport {
    /// True when the lag target holds and, when measured, the catch-up
    /// target too.
    pub fn meets_target(&self) -> bool {
        self.follower.lag_p99_ms <= FOLLOW_TARGET_P99_MS
            && self
                .catch_up_ratio
                .is_none_or(|r| r <= FOLLOW_TARGET_CATCH_UP_RATIO)
    }
}

impl fmt::Display for FollowBenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "follow: steady {:.0}/s asked, {:.0}/s written; burst {:.0} commits/s; {} entries; {}",
            self.steady_rate,
            self.steady_achieved,
            self.burst_rate,
            self.entries,
            if self.notify {
                "writers notify"
            } else {
                "follower polls"
            }
        )?;
        writeln!(
            f,
            "  method                 lag p50 ms  lag p99 ms  lag max ms  catch-up s  applied/s"
        )?;
        for r in std::iter::once(&self.follower).chain(self.logical.as_ref()) {
            writeln!(
                f,
                "  {:<22} {:>10.1}  {:>10.1}  {:>10.1}  {:>10.2}  {:>9.0}",
                r.method,
                r.lag_p50_ms,
                r.lag_p99_ms,
                r.lag_max_ms,
                r.catch_up_s,
                r.apply_rate_per_s
            )?;
        }
        if let Some(why) = &self.logical_unavailable {
            writeln!(f, "  logical replication not measured: {why}")?;
        }
        writeln!(
            f,
            "  lag p99 {:.1} ms (target <= {FOLLOW_TARGET_P99_MS:.0} ms: {}); catch-up ratio {} (target <= {FOLLOW_TARGET_CATCH_UP_RATIO:.1}x)",
            self.follower.lag_p99_ms,
            super::verdict(self.follower.lag_p99_ms <= FOLLOW_TARGET_P99_MS),
            self.catch_up_ratio
                .map_or("n/a".to_string(), |r| format!("{r:.2}x: {}", super::verdict(r <= FOLLOW_TARGET_CATCH_UP_RATIO)))
        )
    }
}

/// The replica and subscriber tables: the demo table plus the arrival time.
pub(super) const TARGET_SCHEMA: &str =
    "ALTER TABLE demo_user ADD COLUMN arrived_at timestamptz DEFAULT clock_timestamp()";

/// Runs both phases and reports.
pub fn follow(cfg: &FollowBenchConfig) -> Result<FollowBenchReport> {
    let seconds = Duration::try_from_secs_f64(cfg.seconds)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| invalid(format!("seconds must be positive, not {}", cfg.seconds)))?;
    if cfg.writers == 0 || cfg.aggregates == 0 || cfg.steady_rate.is_nan() || cfg.steady_rate <= 0.0
    {
        return Err(invalid(
            "writers, aggregates and the steady rate must be positive".into(),
        ));
    }
    let source = Scratch::create(&cfg.url)?;
    let replica = Scratch::empty(&cfg.url)?;
    replica
        .connect()?
        .batch_execute(crate::tooling::demo::SCHEMA)?;
    replica.connect()?.batch_execute(TARGET_SCHEMA)?;
    let logical = Logical::start(&cfg.url, &source);
    let (subscriber, logical_unavailable) = match logical {
        Ok(l) => (Some(l), None),
        Err(why) => (None, Some(why)),
    };

    let oplog = Oplog::new(crate::tooling::demo::user_catalog(), Keyring::generate())
        .with_notify(cfg.notify);
    let commits: Arc<Mutex<HashMap<String, f64>>> = Arc::default();
    let mut follower = Follower::new(
        &oplog,
        &source.url,
        Target::database(&replica.url),
        cfg.follow.clone(),
    );
    let stop = follower.stop_flag();
    let following = std::thread::spawn(move || follower.run(&mut |_| {}));

    let run = |phase: &str, rate: Option<f64>| {
        write_phase(cfg, &source.url, &oplog, &commits, phase, rate, seconds)
    };
    let steady = run("steady", Some(cfg.steady_rate));
    let burst_started = Instant::now();
    let burst = steady.and_then(|s| run("burst", None).map(|b| (s, b)));
    let burst_ended = Instant::now();
    let outcome = burst.and_then(|(steady, burst)| {
        let total = steady + burst;
        let follower_caught = caught_up(&replica, total, burst_ended)?;
        let logical_caught = match &subscriber {
            Some(l) => Some(caught_up(&l.db, total, burst_ended)?),
            None => None,
        };
        Ok((steady, burst, total, follower_caught, logical_caught))
    });
    stop.store(true, Ordering::Relaxed);
    let followed = following.join();
    let (steady, burst, total, follower_caught, logical_caught) = outcome?;
    match followed {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => return Err(e),
        Err(payload) => return Err(Error::panicked("the benchmark's follower", &*payload)),
    }
    let commits = commits.lock().map(|m| m.clone()).unwrap_or_default();
    let burst_window = burst_ended.duration_since(burst_started);
    let measure = |method, db: &Scratch, caught: Duration| -> Result<Replication> {
        let lags = lags(db, &commits)?;
        Ok(Replication {
            method,
            lag_p50_ms: super::percentile(&lags, 50),
            lag_p99_ms: super::percentile(&lags, 99),
            lag_max_ms: lags.last().copied().unwrap_or(0.0),
            catch_up_s: caught.as_secs_f64(),
            apply_rate_per_s: burst as f64 / (burst_window + caught).as_secs_f64(),
        })
    };
    let follower = measure("oplog follow", &replica, follower_caught)?;
    let logical = match (&subscriber, logical_caught) {
        (Some(l), Some(caught)) => Some(measure("logical replication", &l.db, caught)?),
        _ => None,
    };
    drop(subscriber);
    let baseline_per_s = logical.as_ref().map(|l| l.apply_rate_per_s);
    Ok(FollowBenchReport {
        scenario: "follow",
        rate_per_s: follower.apply_rate_per_s,
        baseline_per_s,
        ratio: baseline_per_s.map(|b| super::per(follower.apply_rate_per_s, b)),
        steady_rate: cfg.steady_rate,
        notify: cfg.notify,
        steady_achieved: steady as f64 / seconds.as_secs_f64(),
        burst_rate: burst as f64 / seconds.as_secs_f64(),
        entries: total,
        catch_up_ratio: logical
            .as_ref()
            .map(|l| super::per(follower.catch_up_s, l.catch_up_s.max(1e-3))),
        follower,
        logical,
        logical_unavailable,
    })
}

/// Writers insert a user and its entry per transaction for `seconds`, at
/// `rate` entries per second over all of them, or as fast as they can.
/// Returns the commits; records each row's commit time (seconds since the
/// epoch).
fn write_phase(
    cfg: &FollowBenchConfig,
    url: &str,
    oplog: &Oplog,
    commits: &Mutex<HashMap<String, f64>>,
    phase: &str,
    rate: Option<f64>,
    seconds: Duration,
) -> Result<u64> {
    let failed = AtomicBool::new(false);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..cfg.writers)
            .map(|w| {
                let failed = &failed;
                s.spawn(move || -> Result<u64> {
                    let mut client = crate::store::connect::connect(url)?;
                    let retry = RetryPolicy::attempts(1000);
                    let aggregate = format!("bench-{}", w % cfg.aggregates);
                    let interval = rate.map(|r| Duration::from_secs_f64(cfg.writers as f64 / r));
                    let started = Instant::now();
                    let mut n = 0u64;
                    while started.elapsed() < seconds && !failed.load(Ordering::Relaxed) {
                        if let Some(interval) = interval {
                            let due = started + interval.mul_f64(n as f64);
                            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                                std::thread::sleep(wait);
                            }
                        }
                        let mut u = user(&[7; 64]);
                        u.id = format!("{phase}-{}", Uuid::new_v4().simple());
                        retry.postgres(&mut client, |tx| {
                            tx.execute(
                                "INSERT INTO demo_user (id, tenant_id, account_id, email, display_name, active, avatar) \
                                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
                                &[&u.id, &u.tenant_id, &u.account_id, &u.email, &u.display_name, &u.active, &u.avatar],
                            )?;
                            let mut entry = NewEntry::new(aggregate.as_str());
                            entry.create(&u)?;
                            oplog.write(tx, &entry)?;
                            Ok::<_, Error>(())
                        })?;
                        let at = SystemTime::now()
                            .duration_since(UNIX_EPOCH)
                            .map(|d| d.as_secs_f64())
                            .unwrap_or(0.0);
                        if let Ok(mut map) = commits.lock() {
                            map.insert(u.id.clone(), at);
                        }
                        n += 1;
                    }
                    Ok(n)
                })
            })
            .collect();
        let mut total = 0;
        let mut failure = None;
        for h in handles {
            match h.join() {
                Ok(Ok(n)) => total += n,
                Ok(Err(e)) => {
                    failed.store(true, Ordering::Relaxed);
                    failure.get_or_insert(e);
                }
                Err(payload) => {
                    failure.get_or_insert(Error::panicked("a benchmark writer", &*payload));
                }
            }
        }
        match failure {
            Some(e) => Err(e),
            None => Ok(total),
        }
    })
}

/// Waits until `db` holds `total` rows; returns the time since `since`.
fn caught_up(db: &Scratch, total: u64, since: Instant) -> Result<Duration> {
    let mut client = db.connect()?;
    let want = i64::try_from(total).unwrap_or(i64::MAX);
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let rows: i64 = client
            .query_one("SELECT count(*) FROM demo_user", &[])?
            .get(0);
        if rows >= want {
            return Ok(since.elapsed());
        }
        if Instant::now() > deadline {
            return Err(check_failed(format!(
                "the target holds {rows} of {want} rows after 300 s"
            )));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Lags of the steady phase's rows, in milliseconds, sorted.
pub(super) fn lags(db: &Scratch, commits: &HashMap<String, f64>) -> Result<Vec<f64>> {
    let rows = db.connect()?.query(
        "SELECT id, extract(epoch FROM arrived_at)::float8 FROM demo_user WHERE id LIKE 'steady-%'",
        &[],
    )?;
    let mut lags: Vec<f64> = rows
        .iter()
        .filter_map(|r| {
            let id: String = r.get(0);
            let arrived: f64 = r.get(1);
            commits.get(&id).map(|c| ((arrived - c) * 1e3).max(0.0))
        })
        .collect();
    lags.sort_by(f64::total_cmp);
    Ok(lags)
}

/// Built-in logical replication of `demo_user` from the source into a
/// subscriber database on the same server.
struct Logical {
    db: Scratch,
    slot: String,
    source_url: String,
}

impl Logical {
    /// Publication, slot and subscription; the reason when the server
    /// cannot do it.
    fn start(admin_url: &str, source: &Scratch) -> Result<Logical, String> {
        let mut src = source.connect().map_err(|e| e.to_string())?;
        let level: String = src
            .query_one("SHOW wal_level", &[])
            .map_err(|e| e.to_string())?
            .get(0);
        if level != "logical" {
            return Err(format!(
                "wal_level is {level}; set wal_level = logical and restart the server to compare"
            ));
        }
        let slot = format!("oplog_bench_{}", &Uuid::new_v4().simple().to_string()[..12]);
        let db = Scratch::empty(admin_url).map_err(|e| e.to_string())?;
        // Built before the setup, so that whatever the setup did is undone
        // when it fails.
        let logical = Logical {
            db,
            slot: slot.clone(),
            source_url: source.url.clone(),
        };
        let setup = |src: &mut Client| -> Result<()> {
            src.batch_execute("CREATE PUBLICATION oplog_bench FOR TABLE demo_user")?;
            src.execute(
                "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
                &[&slot],
            )?;
            let mut sub = logical.db.connect()?;
            sub.batch_execute(crate::tooling::demo::SCHEMA)?;
            sub.batch_execute(TARGET_SCHEMA)?;
            // Subscribing to a database of the same server works when the
            // slot already exists (create_slot = false).
            sub.batch_execute(&format!(
                "CREATE SUBSCRIPTION {slot} CONNECTION {} PUBLICATION oplog_bench \
                 WITH (create_slot = false, slot_name = {}, copy_data = false)",
                crate::sql::literal(&source.url),
                crate::sql::literal(&slot)
            ))?;
            Ok(())
        };
        match setup(&mut src) {
            Ok(()) => Ok(logical),
            Err(e) => Err(format!("cannot set up logical replication: {e}")),
        }
    }
}

impl Drop for Logical {
    /// Drops the subscription and the slot, so that the databases can go.
    fn drop(&mut self) {
        if let Ok(mut sub) = self.db.connect() {
            let _ = sub.batch_execute(&format!(
                "ALTER SUBSCRIPTION {0} DISABLE; ALTER SUBSCRIPTION {0} SET (slot_name = NONE); DROP SUBSCRIPTION {0}",
                self.slot
            ));
        }
        if let Ok(mut src) = crate::store::connect::connect(&self.source_url) {
            for _ in 0..50 {
                if src
                    .execute("SELECT pg_drop_replication_slot($1)", &[&self.slot])
                    .is_ok()
                    || src
                        .query_one(
                            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1",
                            &[&self.slot],
                        )
                        .map(|r| r.get::<_, i64>(0) == 0)
                        .unwrap_or(true)
                {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}
