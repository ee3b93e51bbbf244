//! `oplog bench write | contention | notify | spread | relay | replay | follow`: the database benchmarks, each
//! with its baseline measured in the same run against the same server: the
//! one of `--database-url`, or a private throwaway cluster without one.

use std::fmt::Display;

use oplog::bench::{
    self, FollowBenchConfig, ReplayBenchConfig, VerifyBenchConfig, WriteBenchConfig,
};
use oplog::cluster::{Cluster, ClusterOptions};
use serde::Serialize;

use super::{Context, Failure, Output};

/// Which benchmark to run, with its settings. Every scenario's report has
/// `scenario`, `rate_per_s`, `baseline_per_s` and `ratio`.
#[derive(Debug, Clone, PartialEq)]
pub enum Scenario {
    /// One writer: the domain transaction with and without an entry.
    Write {
        /// Seconds per scenario.
        seconds: f64,
        /// Unused by this scenario (it has one writer).
        writers: usize,
    },
    /// Many writers on one aggregate: both locking modes and Boundary's
    /// statement sequence.
    Contention {
        /// Seconds per mode.
        seconds: f64,
        /// Concurrent writers.
        writers: usize,
    },
    /// Many writers on their own aggregates, with and without notifying
    /// followers at commit.
    Notify {
        /// Seconds per variant.
        seconds: f64,
        /// Concurrent writers.
        writers: usize,
    },
    /// Many writers on their own aggregates, entries under the keyring
    /// and entries naming data subjects.
    Subjects {
        /// Seconds per variant.
        seconds: f64,
        /// Concurrent writers.
        writers: usize,
    },
    /// Many writers on their own aggregates, with and without an entry,
    /// through each driver.
    Spread {
        /// Seconds per scenario.
        seconds: f64,
        /// Concurrent writers.
        writers: usize,
    },
    /// A follower beside running writers, against built-in logical
    /// replication of the same table.
    Follow {
        /// Seconds per phase (steady, then burst).
        seconds: f64,
        /// Concurrent writers.
        writers: usize,
        /// Entries per second in the steady phase.
        rate: f64,
        /// Writers notify followers at commit.
        notify: bool,
    },
    /// Verify a large and a small log, replay the large one, and the
    /// memory of the commands over entries near the size limit.
    Verify {
        /// Entries in the large log.
        entries: usize,
        /// Entries in the small log.
        small_entries: usize,
        /// Aggregates.
        aggregates: usize,
        /// Entries near the size limit.
        big_entries: usize,
        /// Their size in bytes.
        big_entry_bytes: usize,
    },
    /// Sign a checkpoint of a log against reading its entries, a checkpoint
    /// of a few more, and proofs: size, build and check times.
    Checkpoint {
        /// Entries in the log.
        entries: usize,
        /// Aggregates.
        aggregates: usize,
    },
    /// Relay a log to NATS JetStream against publishing directly, and the
    /// lag to a stream reader at a steady rate.
    Relay {
        /// The NATS server.
        nats_url: String,
        /// Entries in the log relayed at full speed.
        entries: usize,
        /// Aggregates they are spread over.
        aggregates: usize,
        /// Entries per second in the lag phase.
        rate: f64,
        /// Seconds of the lag phase.
        seconds: f64,
    },
    /// Replay into an empty replica against multi-row INSERTs.
    Replay {
        /// Entries in the log.
        entries: usize,
        /// Aggregates they are spread over.
        aggregates: usize,
        /// Entries per replica transaction.
        batch_size: usize,
    },
}

/// The server a benchmark runs against: the configured one, or a private
/// cluster started for the run and removed when this is dropped.
struct Server {
    url: String,
    cluster: Option<Cluster>,
}

impl Server {
    fn for_context(ctx: &Context) -> Result<Server, Failure> {
        if let Some(url) = ctx.optional_database_url() {
            // The benchmarks connect on their own, to scratch databases
            // beside this one; the URL (with its TLS settings) is checked
            // here as every connection of the binary checks it.
            oplog::Database::parse(url)?;
            return Ok(Server {
                url: url.to_string(),
                cluster: None,
            });
        }
        oplog::cluster::cleanup_on_signals()?;
        let cluster = Cluster::start(&ClusterOptions::from_env())?;
        Ok(Server {
            url: cluster.url(),
            cluster: Some(cluster),
        })
    }
}

/// Runs one scenario on scratch databases and prints its report (one JSON
/// document with `--json`).
pub fn run(ctx: &Context, out: &mut Output, scenario: Scenario) -> Result<(), Failure> {
    let server = Server::for_context(ctx)?;
    let write_cfg = |seconds, writers| WriteBenchConfig {
        url: server.url.clone(),
        seconds,
        writers,
        ..WriteBenchConfig::default()
    };
    match scenario {
        Scenario::Write { seconds, writers } => {
            print(out, &server, &bench::write(&write_cfg(seconds, writers))?)
        }
        Scenario::Contention { seconds, writers } => print(
            out,
            &server,
            &bench::contention(&write_cfg(seconds, writers))?,
        ),
        Scenario::Notify { seconds, writers } => {
            print(out, &server, &bench::notify(&write_cfg(seconds, writers))?)
        }
        Scenario::Subjects { seconds, writers } => print(
            out,
            &server,
            &bench::subjects(&write_cfg(seconds, writers))?,
        ),
        Scenario::Spread { seconds, writers } => {
            print(out, &server, &bench::spread(&write_cfg(seconds, writers))?)
        }
        Scenario::Follow {
            seconds,
            writers,
            rate,
            notify,
        } => {
            let cfg = FollowBenchConfig {
                url: server.url.clone(),
                seconds,
                writers,
                aggregates: writers,
                steady_rate: rate,
                notify,
                ..FollowBenchConfig::default()
            };
            print(out, &server, &bench::follow(&cfg)?)
        }
        Scenario::Verify {
            entries,
            small_entries,
            aggregates,
            big_entries,
            big_entry_bytes,
        } => {
            let cfg = VerifyBenchConfig {
                url: server.url.clone(),
                entries,
                small_entries,
                aggregates,
                big_entries,
                big_entry_bytes,
                program: std::env::current_exe().ok(),
                ..VerifyBenchConfig::default()
            };
            print(out, &server, &bench::verify_bench(&cfg)?)
        }
        Scenario::Checkpoint {
            entries,
            aggregates,
        } => {
            let cfg = bench::TreeBenchConfig {
                url: server.url.clone(),
                entries,
                aggregates,
            };
            print(out, &server, &bench::tree(&cfg)?)
        }
        Scenario::Relay {
            nats_url,
            entries,
            aggregates,
            rate,
            seconds,
        } => {
            let cfg = bench::RelayBenchConfig {
                url: server.url.clone(),
                nats_url,
                entries,
                aggregates,
                steady_rate: rate,
                seconds,
            };
            print(out, &server, &bench::relay(&cfg)?)
        }
        Scenario::Replay {
            entries,
            aggregates,
            batch_size,
        } => {
            let cfg = ReplayBenchConfig {
                url: server.url.clone(),
                entries,
                aggregates,
                batch_size,
                ..ReplayBenchConfig::default()
            };
            print(out, &server, &bench::replay(&cfg)?)
        }
    }
}

fn print(
    out: &mut Output,
    server: &Server,
    report: &(impl Serialize + Display),
) -> Result<(), Failure> {
    if out.json() {
        return out.json_line(report);
    }
    if let Some(cluster) = &server.cluster {
        out.line(format_args!(
            "on a private PostgreSQL {} cluster, removed afterwards (pass --database-url to measure your server)",
            cluster.binaries().version
        ))?;
    }
    out.line(format_args!("{report}"))
}
