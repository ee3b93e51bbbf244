//! `oplog bench write | contention`: the database write benchmarks, each
//! with its baseline measured in the same run against the same server.

use oplog::bench::{self, WriteBenchConfig};

use super::{Context, Failure, Output};

/// Which benchmark to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    /// One writer: the domain transaction with and without an entry.
    Write,
    /// Many writers on one aggregate: both locking modes and Boundary's
    /// statement sequence.
    Contention,
}

/// Runs one scenario on a scratch database beside the configured server and
/// prints its report (one JSON document with `--json`).
pub fn run(
    ctx: &Context,
    out: &mut Output,
    scenario: Scenario,
    seconds: f64,
    writers: usize,
) -> Result<(), Failure> {
    let cfg = WriteBenchConfig {
        url: ctx.database_url()?.to_string(),
        seconds,
        writers,
        ..WriteBenchConfig::default()
    };
    match scenario {
        Scenario::Write => {
            let report = bench::write(&cfg)?;
            if out.json() {
                return out.json_line(&report);
            }
            out.line(format_args!("{report}"))
        }
        Scenario::Contention => {
            let report = bench::contention(&cfg)?;
            if out.json() {
                return out.json_line(&report);
            }
            out.line(format_args!("{report}"))
        }
    }
}
