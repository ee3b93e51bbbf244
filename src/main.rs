//! The `oplog` command-line tool: create, rotate, rewrap and remove keys,
//! migrate the schema, read, verify and anchor the log, and measure write
//! rates.
//!
//! Exit status: 0 on success, 1 when a check finds problems, 2 for any usage
//! or runtime error, which is reported as one line on standard error.
//!
//! This file holds the argument grammar and maps results to exit codes; the
//! modules under `cli/` present what the library returns.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

mod cli;

use cli::{Context, Failure, Output};

/// Encrypted, tamper-evident operation log for PostgreSQL.
// Without a subcommand (here and under `keys`) clap would print the whole
// help to stderr; a one-line error keeps the contract of every failure.
#[derive(Debug, Parser)]
#[command(name = "oplog", version, arg_required_else_help = false)]
struct Cli {
    /// PostgreSQL connection URL.
    #[arg(
        long,
        global = true,
        value_name = "URL",
        env = "DATABASE_URL",
        hide_env_values = true
    )]
    database_url: Option<String>,

    /// Keyring file (JSON, mode 0600) that encrypts and decrypts entries.
    #[arg(long, global = true, value_name = "PATH", env = "OPLOG_KEY_FILE")]
    key_file: Option<PathBuf>,

    /// Print machine-readable JSON (JSON Lines for lists) instead of text.
    #[arg(long, global = true)]
    json: bool,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create, rotate, rewrap and remove encryption keys.
    #[command(subcommand, arg_required_else_help = false)]
    Keys(KeysCommand),

    /// Apply pending schema migrations.
    Migrate,

    /// List entries, decrypted and decoded.
    Log(LogArgs),

    /// Apply the log to suffixed tables in this database or to a replica
    /// database, exactly once: re-running continues from the checkpoint.
    Replay(ReplayArgs),

    /// Check that the log is intact (and its anchors, and a replica): exit
    /// status 0 when clean, 1 when anything was found.
    Verify(VerifyArgs),

    /// Print each aggregate's last seq and chain head; `--json` writes the
    /// anchor file that `verify --anchor` reads.
    Head(HeadArgs),

    /// Measure write rates against a baseline in the same run, on a scratch
    /// database created beside --database-url and dropped afterwards.
    #[command(subcommand, arg_required_else_help = false)]
    Bench(BenchCommand),
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// One writer: the domain transaction alone, and with one oplog entry.
    Write(BenchArgs),
    /// Many writers on one aggregate: pessimistic, optimistic, and
    /// Boundary's statement sequence as the baseline.
    Contention(BenchArgs),
}

#[derive(Debug, Args)]
struct BenchArgs {
    /// Seconds each scenario runs.
    #[arg(long, value_name = "S", default_value_t = 3.0)]
    seconds: f64,

    /// Concurrent writers (contention only).
    #[arg(long, value_name = "N", default_value_t = 16)]
    writers: usize,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["into", "suffix"])))]
struct ReplayArgs {
    /// Replica database to apply the log to; missing tables are created
    /// there from the source's definitions.
    #[arg(long, value_name = "URL")]
    into: Option<String>,

    /// Apply to tables named <table><SUFFIX> in this database instead.
    #[arg(long, value_name = "SUFFIX")]
    suffix: Option<String>,

    /// Only this aggregate.
    #[arg(long, value_name = "NAME")]
    aggregate: Option<String>,

    /// Most entries applied in one replica transaction.
    #[arg(long, value_name = "N", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    batch_size: u64,
}

impl ReplayArgs {
    fn target(&self) -> oplog::Target {
        match (&self.into, &self.suffix) {
            (Some(url), suffix) => oplog::Target::Database {
                url: url.clone(),
                suffix: suffix.clone().unwrap_or_default(),
            },
            (None, suffix) => oplog::Target::Suffix(suffix.clone().unwrap_or_default()),
        }
    }
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Generate a new keyring and print it, or write it to a file.
    Generate {
        /// Write the keyring to PATH (mode 0600) instead of standard output.
        #[arg(long, value_name = "PATH")]
        out: Option<PathBuf>,

        /// Replace PATH if it exists; the keys in it are lost.
        #[arg(long, requires = "out")]
        force: bool,
    },

    /// Add a new active key to the keyring file; older keys stay to decrypt
    /// older entries.
    Rotate,

    /// Re-encrypt the entries under older keys to the active key, a batch
    /// per transaction, while writers go on; afterwards the older keys can
    /// be removed.
    Rewrap {
        /// Entries re-encrypted per transaction.
        #[arg(long, value_name = "N", default_value_t = 500, value_parser = clap::value_parser!(u64).range(1..))]
        batch: u64,
    },

    /// Remove a key from the keyring file. The active key is never removed,
    /// nor a key that entries in the database still use, unless --force.
    Remove {
        /// Id of the key to remove.
        key_id: String,

        /// Remove the key even though entries still use it (they become
        /// unreadable), or without a database to check.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, Args)]
struct LogArgs {
    /// Only entries of this aggregate, in seq order (default: every
    /// aggregate, in insertion order).
    #[arg(long, value_name = "NAME")]
    aggregate: Option<String>,

    /// Only entries with a seq above SEQ.
    #[arg(long, value_name = "SEQ", default_value_t = 0, allow_negative_numbers = true, value_parser = clap::value_parser!(i64).range(0..))]
    after: i64,

    /// At most N entries.
    #[arg(long, value_name = "N", allow_negative_numbers = true, value_parser = clap::value_parser!(i64).range(0..))]
    limit: Option<i64>,
}

#[derive(Debug, Args)]
struct VerifyArgs {
    /// Also compare a replica database with the source: its tables, row by
    /// row, and its checkpoints.
    #[arg(long, value_name = "URL")]
    against: Option<String>,

    /// Also compare the replica tables named <table><SUFFIX>: in the source
    /// database, or with --against in the replica database.
    #[arg(long, value_name = "SUFFIX")]
    suffix: Option<String>,

    /// Only this aggregate's entries, ticket, anchors and checkpoints
    /// (replica tables are still compared whole).
    #[arg(long, value_name = "NAME")]
    aggregate: Option<String>,

    /// Heads written earlier by `oplog head --json`, one per line; each must
    /// still be in the log with the same chain value.
    #[arg(long, value_name = "FILE")]
    anchor: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct HeadArgs {
    /// Only this aggregate.
    #[arg(long, value_name = "NAME")]
    aggregate: Option<String>,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // Help and version are not errors: clap prints them to stdout.
        Err(e) if !e.use_stderr() => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => return cli::report(&Failure::usage(&e)),
    };
    let ctx = Context::new(cli.database_url, cli.key_file);
    let mut out = Output::stdout(cli.json);
    let result = run(&ctx, &mut out, cli.command).and_then(|()| out.flush());
    drop(out);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => cli::report(&failure),
    }
}

fn run(ctx: &Context, out: &mut Output, command: Command) -> Result<(), Failure> {
    match command {
        Command::Keys(KeysCommand::Generate { out: path, force }) => {
            cli::keys::generate(out, path.as_deref(), force)
        }
        Command::Keys(KeysCommand::Rotate) => cli::keys::rotate(ctx, out),
        Command::Keys(KeysCommand::Rewrap { batch }) => {
            cli::keys::rewrap(ctx, out, usize::try_from(batch).unwrap_or(usize::MAX))
        }
        Command::Keys(KeysCommand::Remove { key_id, force }) => {
            cli::keys::remove(ctx, out, &key_id, force)
        }
        Command::Migrate => cli::migrate::run(ctx, out),
        Command::Log(args) => {
            cli::log::run(ctx, out, args.aggregate.as_deref(), args.after, args.limit)
        }
        Command::Replay(args) => cli::replay::run(
            ctx,
            out,
            args.target(),
            args.aggregate.clone(),
            usize::try_from(args.batch_size).unwrap_or(usize::MAX),
        ),
        Command::Verify(args) => cli::verify::run(
            ctx,
            out,
            cli::verify::Request {
                against: args.against,
                suffix: args.suffix,
                aggregate: args.aggregate,
                anchor: args.anchor,
            },
        ),
        Command::Head(args) => cli::head::run(ctx, out, args.aggregate.as_deref()),
        Command::Bench(BenchCommand::Write(a)) => {
            cli::bench::run(ctx, out, cli::bench::Scenario::Write, a.seconds, a.writers)
        }
        Command::Bench(BenchCommand::Contention(a)) => cli::bench::run(
            ctx,
            out,
            cli::bench::Scenario::Contention,
            a.seconds,
            a.writers,
        ),
    }
}
