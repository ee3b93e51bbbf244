//! The relay benchmark: how fast the relay publishes a log to NATS
//! JetStream, against publishing the same messages to the same server
//! directly (one at a time, each acknowledged) in the same run; and the
//! lag from a writer's commit to a stream reader at a steady rate.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use super::{check_failed, invalid, percentile, user, Scratch};
use crate::codec::crypto::Keyring;
use crate::codec::entry::NewEntry;
use crate::error::{Error, Result};
use crate::replica::follow::{FollowOptions, Follower};
use crate::replica::live::LiveOptions;
use crate::replica::relay::{delete_stream, tail, Relay, RelayOptions, StreamItem, TailOptions};
use crate::replica::Target;
use crate::source::write::Oplog;
use crate::tooling::demo::User;

/// Entries per second the relay aims for.
pub const RELAY_TARGET_RATE: f64 = 5_000.0;

/// Lag p99 aimed for at the steady rate, in milliseconds.
pub const RELAY_TARGET_P99_MS: f64 = 50.0;

/// What to run.
#[derive(Debug, Clone)]
pub struct RelayBenchConfig {
    /// URL of the PostgreSQL server, for administrative connections.
    pub url: String,
    /// The NATS server.
    pub nats_url: String,
    /// Entries in the log relayed at full speed.
    pub entries: usize,
    /// Aggregates they are spread over.
    pub aggregates: usize,
    /// Entries per second written in the lag phase.
    pub steady_rate: f64,
    /// Seconds of the lag phase.
    pub seconds: f64,
}

impl Default for RelayBenchConfig {
    fn default() -> Self {
        RelayBenchConfig {
            url: super::DEFAULT_URL.to_string(),
            nats_url: "nats://127.0.0.1:4222".into(),
            entries: 20_000,
            aggregates: 100,
            steady_rate: 1_000.0,
            seconds: 5.0,
        }
    }
}

/// What [`relay`] measured.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RelayBenchReport {
    /// Always `"relay"`.
    pub scenario: &'static str,
    /// Entries relayed at full speed.
    pub entries: u64,
    /// Entries per second relayed (read from the database and published).
    pub rate_per_s: f64,
    /// Messages per second published directly, one at a time.
    pub baseline_per_s: f64,
    /// `rate_per_s / baseline_per_s`.
    pub ratio: f64,
    /// The rate aimed for, [`RELAY_TARGET_RATE`].
    pub target_rate_per_s: f64,
    /// Entries written in the lag phase.
    pub lag_entries: u64,
    /// The rate the lag phase's writer reached (asked: `steady_rate`).
    pub lag_rate_per_s: f64,
    /// Commit to stream reader, median, in milliseconds.
    pub lag_p50_ms: f64,
    /// The same, 99th percentile.
    pub lag_p99_ms: f64,
    /// The p99 aimed for, [`RELAY_TARGET_P99_MS`].
    pub target_p99_ms: f64,
    /// Commit to the row on a follower's replica (`oplog follow`, polling
    /// every 2 ms), median, over the same commits, in milliseconds.
    pub follower_lag_p50_ms: f64,
    /// The same, 99th percentile.
    pub follower_lag_p99_ms: f64,
}

impl RelayBenchReport {
    /// True when both targets are met.
    pub fn meets_targets(&self) -> bool {
        self.rate_per_s >= self.target_rate_per_s && self.lag_p99_ms < self.target_p99_ms
    }
}

impl fmt::Display for RelayBenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "relay: {} entries to NATS JetStream", self.entries)?;
        writeln!(
            f,
            "  relay {:.0} entries/s; direct publishing {:.0} messages/s; ratio {:.2} (target >= {:.0} entries/s: {})",
            self.rate_per_s,
            self.baseline_per_s,
            self.ratio,
            self.target_rate_per_s,
            super::verdict(self.rate_per_s >= self.target_rate_per_s)
        )?;
        writeln!(
            f,
            "  lag commit -> stream reader over {} entries ({:.0}/s): p50 {:.1} ms, p99 {:.1} ms (target p99 < {:.0} ms: {})",
            self.lag_entries,
            self.lag_rate_per_s,
            self.lag_p50_ms,
            self.lag_p99_ms,
            self.target_p99_ms,
            super::verdict(self.lag_p99_ms < self.target_p99_ms)
        )?;
        writeln!(
            f,
            "  lag commit -> follower's replica, same commits: p50 {:.1} ms, p99 {:.1} ms",
            self.follower_lag_p50_ms, self.follower_lag_p99_ms
        )
    }
}

/// Runs both phases on a scratch database and scratch streams.
pub fn relay(cfg: &RelayBenchConfig) -> Result<RelayBenchReport> {
    if cfg.entries == 0 || cfg.aggregates == 0 || cfg.steady_rate <= 0.0 || cfg.seconds <= 0.0 {
        return Err(invalid(
            "entries, aggregates, rate and seconds must be positive".into(),
        ));
    }
    let source = Scratch::create(&cfg.url)?;
    let oplog = Oplog::new(crate::tooling::demo::user_catalog(), Keyring::generate());
    let users = super::replay::load(&source, &oplog, cfg.entries, cfg.aggregates, 256)?;
    let id = uuid::Uuid::new_v4().simple().to_string();
    let opts = |name: &str| RelayOptions {
        nats_url: cfg.nats_url.clone(),
        stream: format!("OPLOG_BENCH_{name}_{}", &id[..8]),
        subject_prefix: format!("bench{name}{}", &id[..8]),
        ..RelayOptions::default()
    };
    let (full, mut steady, direct) = (opts("FULL"), opts("LAG"), opts("DIRECT"));
    // The lag phase relays only what its writer writes.
    steady.aggregates = (0..STEADY_AGGREGATES).map(steady_aggregate).collect();
    let streams = Streams(vec![full.clone(), steady.clone(), direct.clone()]);

    let mut client = source.connect()?;
    let mut relay = Relay::connect(&mut client, full)?;
    let begun = Instant::now();
    let report = relay.pass(&mut client)?;
    let relay_time = begun.elapsed();
    if report.entries != users.len() as u64 {
        return Err(check_failed(format!(
            "relayed {} entries of {}",
            report.entries,
            users.len()
        )));
    }
    let baseline_time = publish_directly(&direct, users.len())?;

    let lags = steady_lag(&cfg.url, steady, cfg)?;
    drop(streams);
    let rate = users.len() as f64 / relay_time.as_secs_f64();
    let baseline = users.len() as f64 / baseline_time.as_secs_f64();
    Ok(RelayBenchReport {
        scenario: "relay",
        entries: users.len() as u64,
        rate_per_s: rate,
        baseline_per_s: baseline,
        ratio: rate / baseline,
        target_rate_per_s: RELAY_TARGET_RATE,
        lag_entries: lags.relay.len() as u64,
        lag_rate_per_s: lags.relay.len() as f64 / cfg.seconds,
        lag_p50_ms: percentile(&lags.relay, 50),
        lag_p99_ms: percentile(&lags.relay, 99),
        target_p99_ms: RELAY_TARGET_P99_MS,
        follower_lag_p50_ms: percentile(&lags.follower, 50),
        follower_lag_p99_ms: percentile(&lags.follower, 99),
    })
}

/// Aggregates the lag phase writes to, in turn.
const STEADY_AGGREGATES: u64 = 10;

fn steady_aggregate(i: u64) -> String {
    format!("steady-{i}")
}

/// The scratch streams, deleted when dropped.
struct Streams(Vec<RelayOptions>);

impl Drop for Streams {
    fn drop(&mut self) {
        for opts in &self.0 {
            let _ = delete_stream(opts);
        }
    }
}

/// Publishes `n` messages of an entry's size to a stream of its own, one
/// at a time, each acknowledged before the next: the broker's own pace for
/// what the relay sends.
fn publish_directly(opts: &RelayOptions, n: usize) -> Result<Duration> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Benchmark(format!("starting a runtime: {e}")))?;
    rt.block_on(async {
        let fail = |e: &dyn fmt::Display| Error::Benchmark(format!("direct publishing: {e}"));
        let client = async_nats::connect(&opts.nats_url)
            .await
            .map_err(|e| fail(&e))?;
        let js = async_nats::jetstream::new(client);
        js.get_or_create_stream(async_nats::jetstream::stream::Config {
            name: opts.stream.clone(),
            subjects: vec![format!("{}.>", opts.subject_prefix)],
            ..Default::default()
        })
        .await
        .map_err(|e| fail(&e))?;
        let payload = bytes_of_an_entry();
        let begun = Instant::now();
        for i in 0..n {
            js.publish(
                format!("{}.e.a{}", opts.subject_prefix, i % 100),
                payload.clone().into(),
            )
            .await
            .map_err(|e| fail(&e))?
            .await
            .map_err(|e| fail(&e))?;
        }
        Ok(begun.elapsed())
    })
}

/// About what an entry message of the loaded log weighs.
fn bytes_of_an_entry() -> Vec<u8> {
    vec![b'a'; 1_200]
}

/// What the lag phase measured, in milliseconds from each commit's return.
struct Lags {
    /// Commit to the stream reader.
    relay: Vec<f64>,
    /// Commit to the row applied on a follower's replica.
    follower: Vec<f64>,
}

fn now_s() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// A writer at `cfg.steady_rate` for `cfg.seconds` on a source of its own,
/// while a relay with a stream reader and a follower with its replica run:
/// each entry's time from its commit's return to the reader, and to its
/// row on the replica, measured on the same commits.
fn steady_lag(admin_url: &str, opts: RelayOptions, cfg: &RelayBenchConfig) -> Result<Lags> {
    let source = Scratch::create(admin_url)?;
    let replica = Scratch::empty(admin_url)?;
    replica
        .connect()?
        .batch_execute(crate::tooling::demo::SCHEMA)?;
    replica
        .connect()?
        .batch_execute(super::follow::TARGET_SCHEMA)?;
    let oplog = Oplog::new(crate::tooling::demo::user_catalog(), Keyring::generate());
    let stop = AtomicBool::new(false);
    let commits: Mutex<HashMap<String, f64>> = Mutex::default();
    let arrivals: Mutex<Vec<(String, f64)>> = Mutex::default();
    // The relay creates the stream before the reader opens it.
    Relay::connect(&mut source.connect()?, opts.clone())?;
    let relay_stop = Arc::new(AtomicBool::new(false));
    let mut follower = Follower::new(
        &oplog,
        source.url.as_str(),
        Target::database(&replica.url),
        FollowOptions {
            poll_interval: Duration::from_millis(2),
            ..FollowOptions::default()
        },
    );
    let follower_stop = follower.stop_flag();
    let (stop, oplog) = (&stop, &oplog);
    let written = std::thread::scope(|s| {
        let relay = s.spawn(|| {
            crate::replica::relay::run(
                source.url.as_str(),
                opts.clone(),
                LiveOptions {
                    poll_interval: Duration::from_millis(2),
                    ..LiveOptions::default()
                },
                relay_stop.clone(),
                &mut |_| {},
            )
        });
        let following = s.spawn(move || follower.run(&mut |_| {}));
        let reader = s.spawn(|| {
            let tail_opts = TailOptions {
                relay: opts.clone(),
                aggregate: None,
                follow: false,
                idle: Duration::from_secs(2),
            };
            tail(oplog, &tail_opts, |item| {
                if let StreamItem::Entry { entry, .. } = item {
                    let at = now_s();
                    if let Some(Ok(u)) = entry.operations.first().map(|op| op.decode::<User>()) {
                        if let Ok(mut a) = arrivals.lock() {
                            a.push((u.id, at));
                        }
                    }
                }
                !stop.load(Ordering::Relaxed)
            })
        });
        let mut client = source.connect()?;
        let interval = Duration::from_secs_f64(1.0 / cfg.steady_rate);
        let end = Instant::now() + Duration::from_secs_f64(cfg.seconds);
        let mut next = Instant::now();
        let avatar = vec![0x5a; 256];
        let mut written = 0u64;
        while Instant::now() < end {
            let mut u = user(&avatar);
            u.id = format!("steady-{written}");
            let mut tx = client.transaction()?;
            tx.execute(crate::tooling::demo::INSERT_USER, &u.params())?;
            let mut entry = NewEntry::new(steady_aggregate(written % STEADY_AGGREGATES));
            entry.create(&u)?;
            oplog.write(&mut tx, &entry)?;
            tx.commit()?;
            if let Ok(mut c) = commits.lock() {
                c.insert(u.id, now_s());
            }
            written += 1;
            next += interval;
            if let Some(pause) = next.checked_duration_since(Instant::now()) {
                std::thread::sleep(pause);
            }
        }
        // Let the reader and the follower catch up, then stop all three.
        let deadline = Instant::now() + Duration::from_secs(10);
        let applied = |replica: &Scratch| -> Result<i64> {
            Ok(replica
                .connect()?
                .query_one("SELECT count(*) FROM demo_user", &[])?
                .get(0))
        };
        while Instant::now() < deadline
            && (arrivals.lock().map(|a| a.len() as u64).unwrap_or(written) < written
                || u64::try_from(applied(&replica)?).unwrap_or(0) < written)
        {
            std::thread::sleep(Duration::from_millis(10));
        }
        stop.store(true, Ordering::Relaxed);
        follower_stop.store(true, Ordering::Relaxed);
        relay_stop.store(true, Ordering::Relaxed);
        relay
            .join()
            .map_err(|_| check_failed("the relay thread panicked".into()))??;
        following
            .join()
            .map_err(|_| check_failed("the follower thread panicked".into()))??;
        reader
            .join()
            .map_err(|_| check_failed("the stream reader panicked".into()))??;
        Ok::<_, Error>(written)
    })?;
    let commits = commits.into_inner().unwrap_or_default();
    let mut relayed: Vec<f64> = arrivals
        .into_inner()
        .unwrap_or_default()
        .into_iter()
        .filter_map(|(id, at)| commits.get(&id).map(|c| ((at - c) * 1e3).max(0.0)))
        .collect();
    relayed.sort_by(f64::total_cmp);
    let followed = super::follow::lags(&replica, &commits)?;
    for (what, seen) in [
        ("stream reader", relayed.len()),
        ("follower", followed.len()),
    ] {
        if (seen as u64) < written {
            return Err(check_failed(format!(
                "the {what} saw {seen} of {written} entries"
            )));
        }
    }
    Ok(Lags {
        relay: relayed,
        follower: followed,
    })
}
