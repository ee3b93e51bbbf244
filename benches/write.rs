//! Database benchmarks: what an oplog entry costs a transaction, how the
//! locking modes fare with many writers on one aggregate against Boundary's
//! statement sequence, and how fast a log replays against multi-row INSERTs
//! of the same rows. The measuring is done by [`oplog::bench::all`] and
//! [`oplog::bench::replay`]; this binary parses its arguments and prints the
//! tables.
//!
//! ```text
//! cargo bench --bench write [-- --seconds S] [--writers N] [--payload BYTES] [--entries N] [--json]
//! ```
//!
//! The server comes from `DATABASE_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`); the benchmark works in a
//! scratch database of its own and drops it afterwards. In test mode
//! (`--test`, or no `--bench` as under `cargo test --benches`) each scenario
//! runs for 0.2 s and 2,000 entries are replayed, only to show that it
//! works. Criterion-style filter arguments are accepted and ignored, so
//! `cargo bench -- <filter>` still runs the other benches.

use std::process::ExitCode;

use oplog::bench::{self, FollowBenchConfig, ReplayBenchConfig, WriteBenchConfig};

/// Scenario length in test mode, in seconds.
const TEST_SECONDS: f64 = 0.2;

/// Entries replayed in test mode.
const TEST_ENTRIES: usize = 2000;

const USAGE: &str =
    "usage: write [--seconds S] [--writers N] [--payload BYTES] [--entries N] [--json] [--test]";

struct Args {
    cfg: WriteBenchConfig,
    replay: ReplayBenchConfig,
    follow: FollowBenchConfig,
    json: bool,
}

fn parse(args: impl IntoIterator<Item = String>) -> Result<Args, String> {
    let mut cfg = WriteBenchConfig::from_env();
    let mut replay = ReplayBenchConfig::from_env();
    let mut follow = FollowBenchConfig::from_env();
    let (mut json, mut bench_flag, mut test_flag) = (false, false, false);
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        // Both `--name value` and `--name=value` are accepted.
        let (name, inline) = match arg.split_once('=') {
            Some((name, value)) if name.starts_with("--") => {
                (name.to_string(), Some(value.to_string()))
            }
            _ => (arg.clone(), None),
        };
        let mut value = |what: &str| {
            inline
                .clone()
                .or_else(|| args.next())
                .ok_or_else(|| format!("{name} needs {what}"))
        };
        match name.as_str() {
            "--seconds" => {
                cfg.seconds = value("a number of seconds")?
                    .parse()
                    .map_err(|e| format!("--seconds: {e}"))?;
            }
            "--writers" => {
                cfg.writers = value("a number of writers")?
                    .parse()
                    .map_err(|e| format!("--writers: {e}"))?;
            }
            "--payload" => {
                cfg.payload_bytes = value("a number of bytes")?
                    .parse()
                    .map_err(|e| format!("--payload: {e}"))?;
            }
            "--entries" => {
                replay.entries = value("a number of entries")?
                    .parse()
                    .map_err(|e| format!("--entries: {e}"))?;
            }
            "--follow-seconds" => {
                follow.seconds = value("a number of seconds")?
                    .parse()
                    .map_err(|e| format!("--follow-seconds: {e}"))?;
            }
            "--json" => json = true,
            "--bench" => bench_flag = true,
            "--test" => test_flag = true,
            "-h" | "--help" => return Err(USAGE.to_string()),
            other if other.starts_with('-') => {
                return Err(format!("unknown option {other}\n{USAGE}"))
            }
            // A criterion filter meant for another bench.
            _ => {}
        }
    }
    // The same rule criterion follows: `cargo bench` passes `--bench`, and
    // anything else is a test run.
    if test_flag || !bench_flag {
        cfg.seconds = TEST_SECONDS;
        replay.entries = TEST_ENTRIES;
        follow.seconds = TEST_SECONDS;
        follow.steady_rate = 200.0;
    }
    Ok(Args {
        cfg,
        replay,
        follow,
        json,
    })
}

fn main() -> ExitCode {
    let args = match parse(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
    let reports = bench::all(&args.cfg).and_then(|r| {
        Ok((
            r,
            bench::replay(&args.replay)?,
            bench::follow(&args.follow)?,
        ))
    });
    match reports {
        Ok((reports, replay, follow)) => {
            println!(
                "{}\n{}\n{}\n{}\n{replay}\n{follow}",
                reports.write, reports.contention, reports.notify, reports.spread
            );
            if args.json {
                let all = serde_json::json!({
                    "write": reports.write,
                    "contention": reports.contention,
                    "notify": reports.notify,
                    "spread": reports.spread,
                    "replay": replay,
                    "follow": follow,
                });
                println!(
                    "{}",
                    serde_json::to_string_pretty(&all).expect("reports serialise")
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("write bench: {e}");
            ExitCode::FAILURE
        }
    }
}
