//! The `oplog` command-line tool: create, rotate, rewrap and remove keys,
//! migrate the schema, read, replay, verify and anchor the log, follow and
//! trim it (passing over, on record, an entry that can never apply: `replay
//! --skip AGGREGATE:SEQ --reason TEXT`, and the same for `follow`), grant
//! least privileges, measure rates, and run the demo.
//!
//! Exit status: 0 on success, 1 when a check finds problems, 2 for any usage
//! or runtime error, which is reported as one line on standard error. The
//! status says what the command did and found even when nobody reads its
//! output (`oplog verify | head -1`).
//!
//! The binary reads only the type catalogs stored in the database, never
//! types compiled into it; file arguments must be regular files of bounded
//! size; every database URL must be PostgreSQL's (`postgres://` or
//! `key=value` settings).
//!
//! This file holds the argument grammar and maps results to exit codes; the
//! modules under `cli/` present what the library returns.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

mod agent;
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
    /// database, exactly once: re-running continues from the checkpoint. An
    /// entry that can never apply stops its aggregate there until passed
    /// over with --skip.
    Replay(ReplayArgs),

    /// Keep a replica up to date until Ctrl-C or SIGTERM (the checkpoint
    /// is kept), or until caught up; registers it as a consumer. An entry
    /// that can never apply stops it until passed over with --skip.
    Follow(FollowArgs),

    /// Relay every entry (sealed, never decrypted) to a NATS JetStream
    /// stream, one subject per aggregate, exactly once and in order per
    /// aggregate; keeps relaying new entries until Ctrl-C or SIGTERM.
    Relay(RelayArgs),

    /// Read the entries a relay published, check every aggregate's seqs
    /// and chain, and print them as `log` does: exit status 1 when a
    /// message is missing, duplicated, reordered, altered or forged.
    Tail(TailArgs),

    /// Run a named subscription: entries of the chosen aggregates, in order
    /// per aggregate, to standard output as JSON Lines (at least once), or
    /// with --into into the table oplog_delivered of another database in
    /// the same transaction as the position (exactly once); until Ctrl-C
    /// or SIGTERM.
    Subscribe(SubscribeArgs),

    /// List the replicas registered as consumers, with their lag.
    #[command(args_conflicts_with_subcommands = true)]
    Consumers(ConsumersArgs),

    /// Run an agent: the followers, relays, subscriptions and scheduled
    /// jobs (trim, verify, anchor, rewrap) of a configuration file, shared
    /// with every other agent running the same file, until Ctrl-C or
    /// SIGTERM.
    Serve(ServeArgs),

    /// Agents, what each holds, jobs with their last runs, consumers with
    /// their lag.
    Status(StatusArgs),

    /// Append the new entries to the log's Merkle tree and sign a
    /// checkpoint of it (its size and root) with a signing key.
    Checkpoint(CheckpointArgs),

    /// Prove that an entry is in a checkpoint (AGGREGATE:SEQ or ENTRY_ID
    /// --checkpoint FILE), or that a checkpoint extends an earlier one
    /// (--from OLD --to NEW); the proof is JSON, checked by verify-proof.
    Prove(ProveArgs),

    /// Check a proof with the verifier key alone (no database, no keys):
    /// exit status 1 when it does not hold.
    VerifyProof(VerifyProofArgs),

    /// Delete entries older than a retention age that every registered
    /// consumer has applied.
    Trim(TrimArgs),

    /// Erase a data subject: destroy its data key, so nobody can read its
    /// entries again, and append tombstones that delete its rows on every
    /// replica.
    Shred(ShredArgs),

    /// Grant a database role what a writer, reader, trimmer, agent,
    /// shredder or key administrator needs, and no more (run as the role that migrated).
    Grant(GrantArgs),

    /// Check that the log is intact (and its anchors, and a replica): exit
    /// status 0 when clean, 1 when anything was found.
    Verify(VerifyArgs),

    /// Print each aggregate's last seq and chain head; `--json` writes the
    /// anchor file that `verify --anchor` reads.
    Head(HeadArgs),

    /// Measure write and replay rates against a baseline in the same run, on
    /// scratch databases created beside --database-url (or in a private
    /// throwaway cluster without one) and dropped afterwards.
    #[command(subcommand, arg_required_else_help = false)]
    Bench(BenchCommand),

    /// Run a multi-tenant load (concurrent writers, each transaction with
    /// its entry), replay it into a replica and verify both. Without
    /// --database-url, on a private throwaway PostgreSQL cluster started from
    /// the server binaries on this machine (OPLOG_PG_BIN names their
    /// directory). Exit status 1 when the replica does not match.
    Demo(DemoArgs),
}

#[derive(Debug, Args)]
struct DemoArgs {
    /// Concurrent writers, each with its own connection.
    #[arg(long, value_name = "N", default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..=1000))]
    writers: u64,

    /// Transactions (entries) per writer.
    #[arg(long, value_name = "M", default_value_t = 200, value_parser = clap::value_parser!(u64).range(1..))]
    entries: u64,

    /// Aggregates: one per tenant.
    #[arg(long, value_name = "K", default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=10000))]
    aggregates: u64,

    /// Replica database (must exist); default: a new database beside the
    /// source, dropped afterwards unless --keep.
    #[arg(long, value_name = "URL")]
    into: Option<String>,

    /// Stop after writing: no replay, no verification.
    #[arg(long, conflicts_with = "into")]
    no_replay: bool,

    /// Keep the databases the demo creates (and the private cluster,
    /// stopped) instead of removing them.
    #[arg(long)]
    keep: bool,

    /// Optimistic locking (Boundary's): read the ticket first and retry the
    /// transaction when another writer redeems it meanwhile.
    #[arg(long)]
    optimistic: bool,
}

fn count(n: u64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// One writer: the domain transaction alone, and with one oplog entry.
    Write(BenchArgs),
    /// Many writers on one aggregate: pessimistic, optimistic, and
    /// Boundary's statement sequence as the baseline.
    Contention(BenchArgs),
    /// What notifying followers at commit costs many writers, each on its
    /// own aggregate.
    Notify(BenchArgs),
    /// What naming a data subject (an entry under the subject's own key,
    /// looked up or created in the transaction) costs many writers, each on
    /// its own aggregate.
    Subjects(BenchArgs),
    /// Many writers, each on its own aggregate, with and without an entry,
    /// through rust-postgres, tokio-postgres (an entry written, and sent
    /// with COMMIT) and sqlx.
    Spread(BenchArgs),
    /// Replay a log into an empty replica, against multi-row INSERTs of the
    /// same rows.
    Replay(BenchReplayArgs),
    /// Relay a log to NATS JetStream (entries/s against publishing the same
    /// number of messages directly), and the lag from commit to a stream
    /// reader at a steady rate.
    Relay(BenchRelayArgs),
    /// A follower beside running writers (lag at a steady rate, catch-up
    /// after a burst), against built-in logical replication of the same
    /// table in the same run.
    Follow(BenchFollowArgs),
    /// Verify a large and a small log (cost per entry as the log grows),
    /// replay the large one (verify against replay; replay of many pending
    /// aggregates against multi-row INSERTs), and the memory `verify`,
    /// `log` and `replay` need for entries near the size limit.
    Verify(BenchVerifyArgs),
    /// Sign a checkpoint of a log (against reading its entries in index
    /// order), a checkpoint of 1,000 more, and proofs of the first, middle
    /// and last entry: their size, and the time to build and to check one.
    Checkpoint(BenchCheckpointArgs),
}

#[derive(Debug, Args)]
struct BenchCheckpointArgs {
    /// Entries in the log.
    #[arg(long, value_name = "N", default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(1..))]
    entries: u64,

    /// Aggregates the log is spread over.
    #[arg(long, value_name = "K", default_value_t = 5000, value_parser = clap::value_parser!(u64).range(1..))]
    aggregates: u64,
}

#[derive(Debug, Args)]
struct BenchVerifyArgs {
    /// Entries in the large log.
    #[arg(long, value_name = "N", default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(1..))]
    entries: u64,

    /// Entries in the small log.
    #[arg(long, value_name = "N", default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..))]
    small_entries: u64,

    /// Aggregates each log is spread over.
    #[arg(long, value_name = "K", default_value_t = 5000, value_parser = clap::value_parser!(u64).range(1..))]
    aggregates: u64,

    /// Entries near the size limit for the memory measurement (0 skips it).
    #[arg(long, value_name = "N", default_value_t = 12)]
    big_entries: u64,

    /// Size of each of those entries, in MiB (at most 63).
    #[arg(long, value_name = "MIB", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=63))]
    big_entry_mib: u64,
}

#[derive(Debug, Args)]
struct BenchFollowArgs {
    /// Seconds of each phase.
    #[arg(long, value_name = "S", default_value_t = 10.0)]
    seconds: f64,

    /// Concurrent writers, each on its own aggregate.
    #[arg(long, value_name = "N", default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..))]
    writers: u64,

    /// Entries per second in the steady phase.
    #[arg(long, value_name = "R", default_value_t = 1000.0)]
    rate: f64,

    /// Writers notify the follower at commit instead of leaving it to poll.
    #[arg(long)]
    notify: bool,
}

#[derive(Debug, Args)]
struct BenchRelayArgs {
    /// The NATS server.
    #[arg(
        long,
        value_name = "URL",
        default_value = "nats://127.0.0.1:4222",
        env = "NATS_URL"
    )]
    nats: String,

    /// Entries in the log relayed at full speed.
    #[arg(long, value_name = "N", default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(1..))]
    entries: u64,

    /// Aggregates the entries are spread over.
    #[arg(long, value_name = "K", default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..))]
    aggregates: u64,

    /// Entries per second written in the lag phase.
    #[arg(long, value_name = "R", default_value_t = 1000.0)]
    rate: f64,

    /// Seconds of the lag phase.
    #[arg(long, value_name = "S", default_value_t = 5.0)]
    seconds: f64,
}

#[derive(Debug, Args)]
struct BenchReplayArgs {
    /// Entries in the log, one CREATE each.
    #[arg(long, value_name = "N", default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..))]
    entries: u64,

    /// Aggregates the entries are spread over.
    #[arg(long, value_name = "K", default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..))]
    aggregates: u64,

    /// Entries per replica transaction, and rows per baseline INSERT.
    #[arg(long, value_name = "N", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    batch_size: u64,
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
#[command(group(clap::ArgGroup::new("target").required(true).multiple(true).args(["into", "suffix"])))]
struct ReplayArgs {
    /// Replica database to apply the log to; missing tables are created
    /// there from the source's definitions.
    #[arg(long, value_name = "URL")]
    into: Option<String>,

    /// Apply to tables named <table><SUFFIX>: in this database, or with
    /// --into in the replica database.
    #[arg(long, value_name = "SUFFIX")]
    suffix: Option<String>,

    /// Only this aggregate.
    #[arg(long, value_name = "NAME")]
    aggregate: Option<String>,

    /// Most entries applied in one replica transaction.
    #[arg(long, value_name = "N", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    batch_size: u64,

    #[command(flatten)]
    skip: SkipArgs,
}

/// Entries the operator passes over instead of applying.
#[derive(Debug, Args)]
struct SkipArgs {
    /// Pass over the entry SEQ of AGGREGATE, without its changes, when that
    /// aggregate stops there (an entry that can never apply). The replica
    /// records the skip with --reason, and `verify --against` reports it.
    /// Repeat for several entries.
    #[arg(
        long = "skip",
        value_name = "AGGREGATE:SEQ",
        requires = "reason",
        value_parser = parse_skip
    )]
    specs: Vec<String>,

    /// Why the entries given with --skip are passed over; recorded with
    /// each of them.
    #[arg(long, value_name = "TEXT", requires = "specs", value_parser = parse_reason)]
    reason: Option<String>,
}

impl SkipArgs {
    /// The skips, each with the reason. Both were checked while parsing
    /// the arguments, so this fails only if those checks and the library's
    /// ever disagree.
    fn skips(&self) -> Result<Vec<oplog::Skip>, Failure> {
        let reason = self.reason.as_deref().unwrap_or_default();
        self.specs
            .iter()
            .map(|spec| oplog::Skip::parse(spec, reason).map_err(Failure::from))
            .collect()
    }
}

/// Checks an `AGGREGATE:SEQ` given to --skip (with a placeholder reason:
/// --reason is checked on its own).
fn parse_skip(spec: &str) -> Result<String, String> {
    match oplog::Skip::parse(spec, "-") {
        Ok(_) => Ok(spec.to_string()),
        Err(oplog::Error::Config(reason)) => Err(reason),
        Err(other) => Err(other.to_string()),
    }
}

/// Checks that --reason says something.
fn parse_reason(reason: &str) -> Result<String, String> {
    if reason.trim().is_empty() {
        return Err("the reason must say why the entries are passed over".into());
    }
    Ok(reason.to_string())
}

impl ReplayArgs {
    fn target(&self) -> Result<oplog::Target, Failure> {
        match (&self.into, &self.suffix) {
            (Some(url), suffix) => cli::replica("--into", url, suffix.clone().unwrap_or_default()),
            (None, suffix) => Ok(oplog::Target::Suffix(suffix.clone().unwrap_or_default())),
        }
    }
}

#[derive(Debug, Args)]
struct FollowArgs {
    /// Replica database to keep up to date.
    #[arg(long, value_name = "URL")]
    into: String,

    /// Append SUFFIX to table names on the replica.
    #[arg(long, value_name = "SUFFIX", default_value = "")]
    suffix: String,

    /// Consumer name on the source (default: the replica's database, host
    /// and port).
    #[arg(long, value_name = "NAME")]
    name: Option<String>,

    /// Exit 0 once a pass finds nothing to apply.
    #[arg(long)]
    until_caught_up: bool,

    /// Longest wait between passes without a notification.
    #[arg(long, value_name = "DURATION", default_value = "50ms", value_parser = humantime::parse_duration)]
    poll: std::time::Duration,

    /// Exit with an error instead of waiting when another follower holds
    /// the replica.
    #[arg(long)]
    no_wait: bool,

    /// Warn when an aggregate's oldest unapplied entry waits this long.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = humantime::parse_duration)]
    lag_warning: std::time::Duration,

    /// Most entries applied in one replica transaction.
    #[arg(long, value_name = "N", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    batch_size: u64,

    #[command(flatten)]
    skip: SkipArgs,
}

#[derive(Debug, Args)]
struct ConsumersArgs {
    /// Report consumers behind and without progress for this long as stalled.
    #[arg(long, value_name = "DURATION", default_value = "1day", value_parser = humantime::parse_duration)]
    stalled_after: std::time::Duration,

    #[command(subcommand)]
    command: Option<ConsumersCommand>,
}

#[derive(Debug, Subcommand)]
enum ConsumersCommand {
    /// Unregister a consumer, so that it no longer holds trimming back.
    Remove {
        /// The consumer's name.
        name: String,
    },
    /// Deliver again to a subscription parked at an entry of an aggregate
    /// (after its handler was fixed).
    Resume {
        /// The consumer's name.
        name: String,
        /// The parked aggregate.
        aggregate: String,
    },
}

#[derive(Debug, Args)]
struct GrantArgs {
    /// What the role is for: writer, reader, trimmer, keys, agent or
    /// shredder.
    #[arg(value_name = "KIND")]
    kind: String,

    /// The database role to grant to.
    #[arg(value_name = "ROLE")]
    role: String,

    /// Print the statements instead of running them.
    #[arg(long)]
    print: bool,
}

#[derive(Debug, Args)]
struct TrimArgs {
    /// Keep entries younger than this (for example 30days, 12h).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    older_than: std::time::Duration,

    /// Report what would be deleted, delete nothing.
    #[arg(long)]
    dry_run: bool,

    /// Only this aggregate.
    #[arg(long, value_name = "NAME")]
    aggregate: Option<String>,

    /// Most entries deleted in one transaction.
    #[arg(long, value_name = "N", default_value_t = 1000, value_parser = clap::value_parser!(i64).range(1..))]
    batch: i64,

    /// Report consumers behind and without progress for this long as stalled.
    #[arg(long, value_name = "DURATION", default_value = "1day", value_parser = humantime::parse_duration)]
    stalled_after: std::time::Duration,
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

    /// Generate a signing key for checkpoints (Ed25519, separate from the
    /// keyring), write it to a file (mode 0600), and print its verifier
    /// key, which is public.
    GenerateSigning {
        /// The log's name the key signs as (its origin), e.g.
        /// example.com/app.
        #[arg(long, value_name = "ORIGIN")]
        name: String,

        /// Where to write the signing key.
        #[arg(long, value_name = "PATH")]
        out: PathBuf,

        /// Replace PATH if it exists; the key in it is lost.
        #[arg(long)]
        force: bool,
    },

    /// Print the verifier key (public) of a signing key.
    Public {
        /// The signing key file.
        #[arg(long, value_name = "PATH")]
        signing_key: PathBuf,
    },

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
struct SubscribeArgs {
    /// The subscription's name on the source.
    #[arg(long, value_name = "NAME")]
    name: String,

    /// Only this aggregate (repeatable).
    #[arg(long, value_name = "NAME", conflicts_with = "prefix")]
    aggregate: Vec<String>,

    /// Only aggregates whose name starts with PREFIX.
    #[arg(long, value_name = "PREFIX")]
    prefix: Option<String>,

    /// Deliver into this database (table oplog_delivered), exactly once.
    #[arg(long, value_name = "URL")]
    into: Option<String>,

    /// Most entries of one aggregate per batch.
    #[arg(long, value_name = "N", default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..))]
    batch: u64,

    /// Exit 0 once a pass finds nothing to deliver.
    #[arg(long)]
    until_caught_up: bool,

    /// Longest wait between passes without a notification.
    #[arg(long, value_name = "DURATION", default_value = "200ms", value_parser = humantime::parse_duration)]
    poll: std::time::Duration,
}

impl SubscribeArgs {
    fn options(&self) -> oplog::SubscribeOptions {
        oplog::SubscribeOptions {
            selection: match (&self.prefix, self.aggregate.is_empty()) {
                (Some(p), _) => oplog::Selection::Prefix(p.clone()),
                (None, false) => oplog::Selection::Aggregates(self.aggregate.clone()),
                (None, true) => oplog::Selection::All,
            },
            batch_entries: self.batch,
            poll_interval: self.poll,
            until_caught_up: self.until_caught_up,
            ..oplog::SubscribeOptions::new(self.name.clone())
        }
    }
}

#[derive(Debug, Args)]
struct StreamArgs {
    /// The NATS server.
    #[arg(
        long,
        value_name = "URL",
        default_value = "nats://127.0.0.1:4222",
        env = "NATS_URL"
    )]
    nats: String,

    /// The JetStream stream (created by the relay when missing).
    #[arg(long, value_name = "NAME", default_value = "OPLOG")]
    stream: String,

    /// The first token of every subject: entries go to
    /// <PREFIX>.e.<aggregate>, catalogs to <PREFIX>.c.<digest>.
    #[arg(long, value_name = "PREFIX", default_value = "oplog")]
    subject_prefix: String,

    /// NATS credentials file (user JWT and NKey seed).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["nats_token_file", "nats_user"])]
    nats_creds: Option<PathBuf>,

    /// File holding the NATS token (kept off the command line).
    #[arg(long, value_name = "FILE", conflicts_with = "nats_user")]
    nats_token_file: Option<PathBuf>,

    /// NATS user; the password is read from --nats-password-file.
    #[arg(long, value_name = "USER", requires = "nats_password_file")]
    nats_user: Option<String>,

    /// File holding the NATS user's password.
    #[arg(long, value_name = "FILE", requires = "nats_user")]
    nats_password_file: Option<PathBuf>,

    /// PEM file of CA certificates for the NATS server's certificate.
    #[arg(long, value_name = "FILE")]
    nats_ca: Option<PathBuf>,

    /// PEM client certificate for NATS (with --nats-key).
    #[arg(long, value_name = "FILE", requires = "nats_key")]
    nats_cert: Option<PathBuf>,

    /// PEM key of the client certificate.
    #[arg(long, value_name = "FILE", requires = "nats_cert")]
    nats_key: Option<PathBuf>,

    /// Refuse a NATS server without TLS.
    #[arg(long)]
    nats_tls: bool,
}

impl StreamArgs {
    fn options(self, aggregates: Vec<String>) -> Result<oplog::relay::RelayOptions, Failure> {
        let auth = cli::relay::nats_auth(
            self.nats_creds,
            self.nats_token_file.as_deref(),
            self.nats_user,
            self.nats_password_file.as_deref(),
        )?;
        Ok(oplog::relay::RelayOptions {
            nats_url: self.nats,
            auth,
            tls: oplog::relay::NatsTls {
                root_certificates: self.nats_ca,
                client_certificate: self.nats_cert.zip(self.nats_key),
                required: self.nats_tls,
            },
            stream: self.stream,
            subject_prefix: self.subject_prefix,
            aggregates,
            ..oplog::relay::RelayOptions::default()
        })
    }
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// The configuration (TOML; `--example` prints one with every option).
    #[arg(long, value_name = "FILE", required_unless_present = "example")]
    config: Option<PathBuf>,

    /// Print an example configuration, every option with its default, and
    /// exit.
    #[arg(long, conflicts_with = "config")]
    example: bool,

    /// Serve /, /status, /metrics and /healthz on this address (overrides
    /// [agent] listen).
    #[arg(long, value_name = "ADDR")]
    listen: Option<std::net::SocketAddr>,
}

#[derive(Debug, Args)]
struct ShredArgs {
    /// The data subject, as entries name it (`NewEntry::subject`).
    #[arg(value_name = "SUBJECT")]
    subject: String,

    /// Why (recorded in the tombstones, in plaintext).
    #[arg(long, value_name = "TEXT")]
    reason: String,
}

#[derive(Debug, Args)]
struct CheckpointArgs {
    /// The signing key (from `oplog keys generate-signing`).
    #[arg(long, value_name = "PATH")]
    signing_key: PathBuf,

    /// Write the signed checkpoint to FILE instead of standard output.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct ProveArgs {
    /// The entry, as AGGREGATE:SEQ or its id.
    #[arg(
        value_name = "AGGREGATE:SEQ|ENTRY_ID",
        required_unless_present = "from",
        conflicts_with = "from"
    )]
    entry: Option<String>,

    /// The checkpoint to prove the entry in.
    #[arg(long, value_name = "FILE", requires = "entry")]
    checkpoint: Option<PathBuf>,

    /// The earlier checkpoint, for a consistency proof.
    #[arg(long, value_name = "OLD", requires = "to")]
    from: Option<PathBuf>,

    /// The later checkpoint.
    #[arg(long, value_name = "NEW", requires = "from")]
    to: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct VerifyProofArgs {
    /// The proof (JSON, from `oplog prove`).
    proof: PathBuf,

    /// The verifier key, or a file holding it.
    #[arg(long, value_name = "KEY")]
    public_key: String,
}

#[derive(Debug, Args)]
struct StatusArgs {
    /// The agents' configuration, for workers, schedules and next due
    /// times.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct RelayArgs {
    #[command(flatten)]
    stream: StreamArgs,

    /// Only this aggregate (repeatable; default: every aggregate).
    #[arg(long, value_name = "NAME")]
    aggregate: Vec<String>,

    /// Relay what is there, then exit.
    #[arg(long)]
    once: bool,

    /// Wait between passes.
    #[arg(long, value_name = "DURATION", default_value = "100ms", value_parser = humantime::parse_duration)]
    poll: std::time::Duration,
}

#[derive(Debug, Args)]
struct TailArgs {
    #[command(flatten)]
    stream: StreamArgs,

    /// Only this aggregate.
    #[arg(long, value_name = "NAME")]
    aggregate: Option<String>,

    /// Keep printing new entries until interrupted; without it, stop once
    /// the stream has had nothing new for a second.
    #[arg(long)]
    follow: bool,
}

#[derive(Debug, Args)]
struct LogArgs {
    /// Only entries of this aggregate, in seq order (default: every
    /// aggregate, in (aggregate, seq) order).
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

    /// A signed checkpoint (from `oplog checkpoint`) the log must still
    /// extend: its leaves unchanged and no checkpointed entry rewritten.
    #[arg(long, value_name = "FILE", requires = "public_key")]
    checkpoint: Option<PathBuf>,

    /// The verifier key of the checkpoint's signer, or a file holding it.
    #[arg(long, value_name = "KEY", requires = "checkpoint")]
    public_key: Option<String>,
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
        Command::Keys(KeysCommand::GenerateSigning {
            name,
            out: path,
            force,
        }) => cli::keys::generate_signing(out, &name, &path, force),
        Command::Keys(KeysCommand::Public { signing_key }) => cli::keys::public(out, &signing_key),
        Command::Keys(KeysCommand::Rewrap { batch }) => {
            cli::keys::rewrap(ctx, out, usize::try_from(batch).unwrap_or(usize::MAX))
        }
        Command::Keys(KeysCommand::Remove { key_id, force }) => {
            cli::keys::remove(ctx, out, &key_id, force)
        }
        Command::Migrate => cli::migrate::run(ctx, out),
        Command::Subscribe(args) => {
            cli::subscribe::run(ctx, out, args.options(), args.into.as_deref())
        }
        Command::Relay(args) => cli::relay::run(
            ctx,
            out,
            args.stream.options(args.aggregate)?,
            args.once,
            args.poll,
        ),
        Command::Tail(args) => cli::relay::tail_run(
            ctx,
            out,
            oplog::relay::TailOptions {
                relay: args.stream.options(Vec::new())?,
                aggregate: args.aggregate,
                follow: args.follow,
                idle: std::time::Duration::from_secs(1),
            },
        ),
        Command::Log(args) => {
            cli::log::run(ctx, out, args.aggregate.as_deref(), args.after, args.limit)
        }
        Command::Replay(args) => cli::replay::run(
            ctx,
            out,
            args.target()?,
            oplog::ReplayOptions {
                aggregate: args.aggregate.clone(),
                batch_size: usize::try_from(args.batch_size).unwrap_or(usize::MAX),
                skip: args.skip.skips()?,
                ..oplog::ReplayOptions::default()
            },
        ),
        Command::Follow(args) => cli::follow::run(
            ctx,
            out,
            cli::replica("--into", &args.into, args.suffix)?,
            oplog::FollowOptions {
                name: args.name,
                poll_interval: args.poll,
                until_caught_up: args.until_caught_up,
                wait_for_lock: !args.no_wait,
                batch_size: usize::try_from(args.batch_size).unwrap_or(usize::MAX),
                lag_warning: args.lag_warning,
                skip: args.skip.skips()?,
                ..oplog::FollowOptions::default()
            },
        ),
        Command::Consumers(ConsumersArgs {
            command: Some(ConsumersCommand::Remove { name }),
            ..
        }) => cli::consumers::remove(ctx, out, &name),
        Command::Consumers(ConsumersArgs {
            command: Some(ConsumersCommand::Resume { name, aggregate }),
            ..
        }) => cli::consumers::resume(ctx, out, &name, &aggregate),
        Command::Consumers(args) => cli::consumers::list(ctx, out, args.stalled_after),
        Command::Trim(args) => cli::trim::run(
            ctx,
            out,
            oplog::TrimOptions {
                older_than: args.older_than,
                dry_run: args.dry_run,
                aggregate: args.aggregate,
                batch: args.batch,
                stalled_after: args.stalled_after,
            },
        ),
        Command::Grant(args) => cli::grant::run(ctx, out, &args.kind, &args.role, args.print),
        Command::Verify(args) => cli::verify::run(
            ctx,
            out,
            cli::verify::Request {
                against: args.against,
                suffix: args.suffix,
                aggregate: args.aggregate,
                anchor: args.anchor,
                checkpoint: args.checkpoint.zip(args.public_key),
            },
        ),
        Command::Head(args) => cli::head::run(ctx, out, args.aggregate.as_deref()),
        Command::Serve(ServeArgs { example: true, .. }) => {
            out.line(format_args!("{}", agent::config::EXAMPLE.trim_end()))
        }
        Command::Serve(args) => match &args.config {
            Some(config) => cli::serve::run(ctx, config, args.listen),
            None => Err(Failure::msg("serve needs --config FILE (or --example)")),
        },
        Command::Status(args) => cli::serve::status(ctx, out, args.config.as_deref()),
        Command::Shred(args) => cli::shred::run(ctx, out, &args.subject, &args.reason),
        Command::Checkpoint(args) => {
            cli::tree::checkpoint(ctx, out, &args.signing_key, args.out.as_deref())
        }
        Command::Prove(ProveArgs {
            entry: Some(entry),
            checkpoint: Some(checkpoint),
            ..
        }) => cli::tree::prove(ctx, out, &entry, &checkpoint),
        Command::Prove(ProveArgs {
            from: Some(from),
            to: Some(to),
            ..
        }) => cli::tree::prove_consistency(ctx, out, &from, &to),
        Command::Prove(_) => Err(Failure::msg(
            "prove needs AGGREGATE:SEQ --checkpoint FILE, or --from OLD --to NEW",
        )),
        Command::VerifyProof(args) => cli::tree::verify_proof(out, &args.proof, &args.public_key),
        Command::Bench(BenchCommand::Write(a)) => cli::bench::run(
            ctx,
            out,
            cli::bench::Scenario::Write {
                seconds: a.seconds,
                writers: a.writers,
            },
        ),
        Command::Bench(BenchCommand::Contention(a)) => cli::bench::run(
            ctx,
            out,
            cli::bench::Scenario::Contention {
                seconds: a.seconds,
                writers: a.writers,
            },
        ),
        Command::Bench(BenchCommand::Notify(a)) => cli::bench::run(
            ctx,
            out,
            cli::bench::Scenario::Notify {
                seconds: a.seconds,
                writers: a.writers,
            },
        ),
        Command::Bench(BenchCommand::Subjects(a)) => cli::bench::run(
            ctx,
            out,
            cli::bench::Scenario::Subjects {
                seconds: a.seconds,
                writers: a.writers,
            },
        ),
        Command::Bench(BenchCommand::Spread(a)) => cli::bench::run(
            ctx,
            out,
            cli::bench::Scenario::Spread {
                seconds: a.seconds,
                writers: a.writers,
            },
        ),
        Command::Bench(BenchCommand::Follow(a)) => cli::bench::run(
            ctx,
            out,
            cli::bench::Scenario::Follow {
                seconds: a.seconds,
                writers: count(a.writers),
                rate: a.rate,
                notify: a.notify,
            },
        ),
        Command::Bench(BenchCommand::Relay(a)) => cli::bench::run(
            ctx,
            out,
            cli::bench::Scenario::Relay {
                nats_url: a.nats,
                entries: count(a.entries),
                aggregates: count(a.aggregates),
                rate: a.rate,
                seconds: a.seconds,
            },
        ),
        Command::Bench(BenchCommand::Replay(a)) => cli::bench::run(
            ctx,
            out,
            cli::bench::Scenario::Replay {
                entries: count(a.entries),
                aggregates: count(a.aggregates),
                batch_size: count(a.batch_size),
            },
        ),
        Command::Bench(BenchCommand::Checkpoint(a)) => cli::bench::run(
            ctx,
            out,
            cli::bench::Scenario::Checkpoint {
                entries: count(a.entries),
                aggregates: count(a.aggregates),
            },
        ),
        Command::Bench(BenchCommand::Verify(a)) => cli::bench::run(
            ctx,
            out,
            cli::bench::Scenario::Verify {
                entries: count(a.entries),
                small_entries: count(a.small_entries),
                aggregates: count(a.aggregates),
                big_entries: count(a.big_entries),
                big_entry_bytes: count(a.big_entry_mib) << 20,
            },
        ),
        Command::Demo(a) => cli::demo::run(
            ctx,
            out,
            cli::demo::Request {
                writers: count(a.writers),
                entries: count(a.entries),
                aggregates: count(a.aggregates),
                into: a.into,
                replay: !a.no_replay,
                keep: a.keep,
                optimistic: a.optimistic,
            },
        ),
    }
}
