//! The configuration file of `oplog serve`: where the log is, how agents
//! coordinate, and the followers, relays, subscriptions and jobs to run.
//!
//! The file is TOML. [`Config::load`] reads it and checks everything
//! before anything runs: an unknown key, a value of the wrong type, a
//! duration or cron expression that does not parse, a missing or
//! conflicting option, a bad or repeated name, each is a [`ConfigError`]
//! naming the file, the line and what to write instead.
//!
//! # Example
//!
//! Every option, with its default; a commented-out option is unset unless
//! given. This is [`EXAMPLE`].
//!
//! ```toml
//! # oplog serve --config /etc/oplog/agent.toml
//! #
//! # Every option is shown with its default; a commented-out option is unset
//! # unless given. Durations are strings such as "50ms", "10s", "1h" or
//! # "30d". Names (of followers, relays, subscriptions and jobs) are 1 to 100
//! # ASCII letters, digits, '.', '_' and '-', unique across all of them.
//!
//! # The database that holds the log and the keyring that decrypts it; when
//! # left out, --database-url (DATABASE_URL) and --key-file (OPLOG_KEY_FILE).
//! [source]
//! database_url = "postgres://oplog@db.example.com/app?sslmode=verify-full"
//! key_file = "/etc/oplog/keys.json"
//!
//! [agent]
//! # How this agent is known to the others (default: the host name).
//! # name = "agent-1"
//! # How often the agent tells the others it is alive,
//! heartbeat = "1s"
//! # and how long without that before the others show it as lost and mark
//! # its runs in progress failed (more than heartbeat; its workers are taken
//! # over as soon as its database session ends).
//! lost_after = "10s"
//! # How often a standby agent looks for work to take over.
//! takeover_poll = "1s"
//! # How long the record of each job run is kept.
//! run_log_retention = "30d"
//! # Where to serve /healthz, /status, /metrics and a status page over HTTP
//! # (default: nowhere).
//! # listen = "127.0.0.1:9187"
//! # "text" or "json" (one object a line).
//! log_format = "text"
//!
//! # Keeps a replica database up to date.
//! [[follower]]
//! name = "replica"
//! into = "postgres://oplog@replica.example.com/app"  # required
//! poll = "50ms"
//! batch_size = 1000
//!
//! # Relays every entry to a NATS JetStream stream.
//! [[relay]]
//! name = "nats"
//! nats = "nats://127.0.0.1:4222"
//! stream = "OPLOG"
//! subject_prefix = "oplog"
//! aggregates = []  # the aggregates to relay; [] relays all
//! poll = "50ms"
//! tls = false      # true refuses a server without TLS
//! # At most one way to authenticate: a credentials file, a token, or a user
//! # and password.
//! # creds_file = "/etc/oplog/nats.creds"
//! # token_file = "/etc/oplog/nats.token"
//! # user = "oplog"
//! # password_file = "/etc/oplog/nats.password"  # with user, and only then
//! # CA certificates for the server, and a client certificate and its key.
//! # ca = "/etc/oplog/nats-ca.pem"
//! # cert = "/etc/oplog/nats-client.pem"  # with key
//! # key = "/etc/oplog/nats-client.key"   # with cert
//!
//! # Delivers entries into the table oplog_delivered of another database.
//! [[subscription]]
//! name = "billing"
//! into = "postgres://oplog@billing.example.com/billing"  # required
//! # The aggregates to deliver, or prefix = "tenant-" for those whose names
//! # start with it (not both); neither delivers all.
//! aggregates = ["tenant-t1", "tenant-t2"]
//! poll = "200ms"
//!
//! # Scheduled jobs; one agent runs each slot. A job has `every` (slots at the
//! # multiples of the interval since 1970-01-01 UTC, at least "1s") or `cron`
//! # ("minute hour day-of-month month day-of-week", in UTC), and starts within
//! # `window` of its slot or skips it (default: the interval up to "1m" for
//! # `every`, "1m" for `cron`).
//!
//! # Deletes entries older than `older_than` that every consumer has applied.
//! [[job]]
//! name = "nightly-trim"
//! kind = "trim"
//! cron = "0 3 * * *"
//! window = "1m"
//! older_than = "30d"  # required
//!
//! # Checks that the log is intact, and that each replica in `against`
//! # matches it.
//! [[job]]
//! name = "hourly-verify"
//! kind = "verify"
//! every = "1h"
//! window = "1m"
//! against = ["postgres://oplog@replica.example.com/app"]  # default: []
//!
//! # Writes the chain heads into a file in `dir`.
//! [[job]]
//! name = "anchor"
//! kind = "anchor"
//! every = "15m"
//! dir = "/var/lib/oplog/anchors"  # required
//!
//! # Appends new entries to the log's Merkle tree and signs a checkpoint
//! # (kept in the database, and in the run's detail).
//! [[job]]
//! name = "checkpoint"
//! kind = "checkpoint"
//! every = "1h"
//! signing_key = "/etc/oplog/signing.key"  # required
//!
//! # Re-encrypts entries under the active key, `batch` entries at a time.
//! [[job]]
//! name = "rewrap"
//! kind = "rewrap"
//! cron = "30 4 * * sun"
//! batch = 500
//! ```

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use toml::Spanned;

use crate::agent::schedule::{Cron, Schedule};

/// A complete configuration file with every option and its default (the
/// one in this module's documentation).
pub const EXAMPLE: &str = r#"# oplog serve --config /etc/oplog/agent.toml
#
# Every option is shown with its default; a commented-out option is unset
# unless given. Durations are strings such as "50ms", "10s", "1h" or
# "30d". Names (of followers, relays, subscriptions and jobs) are 1 to 100
# ASCII letters, digits, '.', '_' and '-', unique across all of them.

# The database that holds the log and the keyring that decrypts it; when
# left out, --database-url (DATABASE_URL) and --key-file (OPLOG_KEY_FILE).
[source]
database_url = "postgres://oplog@db.example.com/app?sslmode=verify-full"
key_file = "/etc/oplog/keys.json"

[agent]
# How this agent is known to the others (default: the host name).
# name = "agent-1"
# How often the agent tells the others it is alive,
heartbeat = "1s"
# and how long without that before the others show it as lost and mark
# its runs in progress failed (more than heartbeat; its workers are taken
# over as soon as its database session ends).
lost_after = "10s"
# How often a standby agent looks for work to take over.
takeover_poll = "1s"
# How long the record of each job run is kept.
run_log_retention = "30d"
# Where to serve /healthz, /status, /metrics and a status page over HTTP
# (default: nowhere).
# listen = "127.0.0.1:9187"
# "text" or "json" (one object a line).
log_format = "text"

# Keeps a replica database up to date.
[[follower]]
name = "replica"
into = "postgres://oplog@replica.example.com/app"  # required
poll = "50ms"
batch_size = 1000

# Relays every entry to a NATS JetStream stream.
[[relay]]
name = "nats"
nats = "nats://127.0.0.1:4222"
stream = "OPLOG"
subject_prefix = "oplog"
aggregates = []  # the aggregates to relay; [] relays all
poll = "50ms"
tls = false      # true refuses a server without TLS
# At most one way to authenticate: a credentials file, a token, or a user
# and password.
# creds_file = "/etc/oplog/nats.creds"
# token_file = "/etc/oplog/nats.token"
# user = "oplog"
# password_file = "/etc/oplog/nats.password"  # with user, and only then
# CA certificates for the server, and a client certificate and its key.
# ca = "/etc/oplog/nats-ca.pem"
# cert = "/etc/oplog/nats-client.pem"  # with key
# key = "/etc/oplog/nats-client.key"   # with cert

# Delivers entries into the table oplog_delivered of another database.
[[subscription]]
name = "billing"
into = "postgres://oplog@billing.example.com/billing"  # required
# The aggregates to deliver, or prefix = "tenant-" for those whose names
# start with it (not both); neither delivers all.
aggregates = ["tenant-t1", "tenant-t2"]
poll = "200ms"

# Scheduled jobs; one agent runs each slot. A job has `every` (slots at the
# multiples of the interval since 1970-01-01 UTC, at least "1s") or `cron`
# ("minute hour day-of-month month day-of-week", in UTC), and starts within
# `window` of its slot or skips it (default: the interval up to "1m" for
# `every`, "1m" for `cron`).

# Deletes entries older than `older_than` that every consumer has applied.
[[job]]
name = "nightly-trim"
kind = "trim"
cron = "0 3 * * *"
window = "1m"
older_than = "30d"  # required

# Checks that the log is intact, and that each replica in `against`
# matches it.
[[job]]
name = "hourly-verify"
kind = "verify"
every = "1h"
window = "1m"
against = ["postgres://oplog@replica.example.com/app"]  # default: []

# Writes the chain heads into a file in `dir`.
[[job]]
name = "anchor"
kind = "anchor"
every = "15m"
dir = "/var/lib/oplog/anchors"  # required

# Appends new entries to the log's Merkle tree and signs a checkpoint
# (kept in the database, and in the run's detail).
[[job]]
name = "checkpoint"
kind = "checkpoint"
every = "1h"
signing_key = "/etc/oplog/signing.key"  # required

# Re-encrypts entries under the active key, `batch` entries at a time.
[[job]]
name = "rewrap"
kind = "rewrap"
cron = "30 4 * * sun"
batch = 500
"#;

/// The longest name of a follower, relay, subscription or job.
const MAX_NAME: usize = 100;

/// The shortest interval of an `every` job.
const MIN_EVERY: Duration = Duration::from_secs(1);

/// The default (and the longest default) window of a job.
const DEFAULT_WINDOW: Duration = Duration::from_secs(60);

/// A checked configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// `[source]`: the database and keyring of the log.
    pub source: SourceConfig,
    /// `[agent]`: this agent and its coordination with the others.
    pub agent: AgentConfig,
    /// `[[follower]]`: replicas kept up to date.
    pub followers: Vec<FollowerConfig>,
    /// `[[relay]]`: relays to NATS JetStream.
    pub relays: Vec<RelayConfig>,
    /// `[[subscription]]`: subscriptions delivered into databases.
    pub subscriptions: Vec<SubscriptionConfig>,
    /// `[[job]]`: scheduled jobs.
    pub jobs: Vec<JobConfig>,
}

/// `[source]`: where the log is and how to decrypt it; either may come
/// from the command line instead.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SourceConfig {
    /// The source database's connection string (`database_url`).
    pub database_url: Option<String>,
    /// The keyring file (`key_file`).
    pub key_file: Option<PathBuf>,
}

/// `[agent]`: this agent, and how agents share the work.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentConfig {
    /// How this agent is known to the others (`name`; default: none, for
    /// the host name).
    pub name: Option<String>,
    /// How often the agent tells the others it is alive (`heartbeat`;
    /// default 1 s).
    pub heartbeat: Duration,
    /// How long without a heartbeat before the others take over its work
    /// (`lost_after`; default 10 s, longer than `heartbeat`).
    pub lost_after: Duration,
    /// How often a standby agent looks for work to take over
    /// (`takeover_poll`; default 1 s).
    pub takeover_poll: Duration,
    /// How long the record of each job run is kept (`run_log_retention`;
    /// default 30 days).
    pub run_log_retention: Duration,
    /// An address to serve status on (`listen`; default: none).
    pub listen: Option<SocketAddr>,
    /// How the agent writes its log (`log_format`; default text).
    pub log_format: LogFormat,
}

impl Default for AgentConfig {
    /// The defaults of an `[agent]` table left out.
    fn default() -> Self {
        AgentConfig {
            name: None,
            heartbeat: Duration::from_secs(1),
            lost_after: Duration::from_secs(10),
            takeover_poll: Duration::from_secs(1),
            run_log_retention: Duration::from_secs(30 * 86_400),
            listen: None,
            log_format: LogFormat::Text,
        }
    }
}

/// How the agent writes its log (`log_format`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// Lines for people (`"text"`).
    #[default]
    Text,
    /// One JSON object a line (`"json"`).
    Json,
}

/// `[[follower]]`: a replica database kept up to date.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FollowerConfig {
    /// The follower's name (`name`), also its consumer name.
    pub name: String,
    /// The replica's database URL (`into`; required).
    pub into: String,
    /// Longest wait between passes without a notification (`poll`;
    /// default 50 ms).
    pub poll: Duration,
    /// Entries applied per transaction (`batch_size`; default 1000, at
    /// least 1).
    pub batch_size: usize,
}

/// `[[relay]]`: a relay of the log to a NATS JetStream stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayConfig {
    /// The relay's name (`name`).
    pub name: String,
    /// The NATS server (`nats`; default `nats://127.0.0.1:4222`).
    pub nats: String,
    /// The JetStream stream (`stream`; default `OPLOG`).
    pub stream: String,
    /// The first token of every subject (`subject_prefix`; default
    /// `oplog`).
    pub subject_prefix: String,
    /// The aggregates to relay (`aggregates`; default empty: all).
    pub aggregates: Vec<String>,
    /// Longest wait between passes without a notification (`poll`;
    /// default 50 ms).
    pub poll: Duration,
    /// NATS credentials file (`creds_file`).
    pub creds_file: Option<PathBuf>,
    /// File holding the NATS token (`token_file`).
    pub token_file: Option<PathBuf>,
    /// NATS user (`user`), with `password_file`.
    pub user: Option<String>,
    /// File holding the user's password (`password_file`), with `user`.
    pub password_file: Option<PathBuf>,
    /// PEM file of CA certificates for the server's certificate (`ca`).
    pub ca: Option<PathBuf>,
    /// PEM client certificate (`cert`), with `key`.
    pub cert: Option<PathBuf>,
    /// PEM key of the client certificate (`key`), with `cert`.
    pub key: Option<PathBuf>,
    /// Refuse a server without TLS (`tls`; default false).
    pub tls: bool,
}

/// `[[subscription]]`: entries of chosen aggregates delivered into a
/// database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionConfig {
    /// The subscription's name (`name`).
    pub name: String,
    /// The database to deliver into (`into`; required).
    pub into: String,
    /// The aggregates to deliver (`aggregates`; default empty).
    pub aggregates: Vec<String>,
    /// Deliver the aggregates whose names start with this (`prefix`; not
    /// with `aggregates`). With neither, every aggregate.
    pub prefix: Option<String>,
    /// Longest wait between passes without a notification (`poll`;
    /// default 200 ms).
    pub poll: Duration,
}

/// `[[job]]`: a job run on a schedule, by one agent per slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobConfig {
    /// The job's name (`name`).
    pub name: String,
    /// What the job does (`kind`, with its own options).
    pub kind: JobKind,
    /// When it runs (`every` or `cron`).
    pub schedule: Schedule,
    /// How long after its slot a run may still start (`window`; default
    /// the interval up to 60 s for `every`, 60 s for `cron`).
    pub window: Duration,
    /// The line of the job's `[[job]]` header, for messages.
    pub line: usize,
}

/// What a job does, with the options of its kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobKind {
    /// `kind = "trim"`: delete entries older than `older_than` that every
    /// registered consumer has applied.
    Trim {
        /// The retention age (`older_than`; required).
        older_than: Duration,
    },
    /// `kind = "verify"`: check the log, and each replica of `against`.
    Verify {
        /// Replica database URLs to compare with the log (`against`;
        /// default none).
        against: Vec<String>,
    },
    /// `kind = "anchor"`: write the chain heads into a file in `dir`.
    Anchor {
        /// The directory of the anchor files (`dir`; required).
        dir: PathBuf,
    },
    /// `kind = "checkpoint"`: append new entries to the log's Merkle tree
    /// and sign a checkpoint.
    Checkpoint {
        /// The signing key file (`signing_key`; required).
        signing_key: PathBuf,
    },
    /// `kind = "rewrap"`: re-encrypt entries under the active key.
    Rewrap {
        /// Entries per transaction (`batch`; default 500, at least 1).
        batch: usize,
    },
}

impl JobKind {
    /// The kind as written in the file: "trim" | "verify" | "anchor" |
    /// "checkpoint" | "rewrap".
    pub fn name(&self) -> &'static str {
        match self {
            JobKind::Trim { .. } => "trim",
            JobKind::Verify { .. } => "verify",
            JobKind::Anchor { .. } => "anchor",
            JobKind::Checkpoint { .. } => "checkpoint",
            JobKind::Rewrap { .. } => "rewrap",
        }
    }
}

/// A configuration file that cannot be read or is not valid, with where
/// and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file (or whatever `origin` [`Config::parse`] was given).
    pub origin: String,
    /// The line at fault (from 1), when one is.
    pub line: Option<usize>,
    /// What is wrong and what to write instead.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{line}: {}", self.origin, self.message),
            None => write!(f, "{}: {}", self.origin, self.message),
        }
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Reads and checks `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            origin: origin.clone(),
            line: None,
            message: format!("cannot read the configuration file: {e}"),
        })?;
        Config::parse(&text, &origin)
    }

    /// Parses and checks `text`; `origin` names it in errors (a path).
    pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let lines = Lines::new(text);
        let failed = |line: Option<usize>, message: String| ConfigError {
            origin: origin.to_owned(),
            line,
            message,
        };
        let root: Raw = toml::from_str(text)
            .map_err(|e| failed(e.span().map(|span| lines.of(span.start)), toml_message(&e)))?;
        let Raw::Table(root) = root else {
            return Err(failed(None, "not a TOML document".to_owned()));
        };
        check(&root, &lines).map_err(|p| failed(p.line, p.message))
    }
}

/// A toml error's message on one line, without serde's internals.
fn toml_message(e: &toml::de::Error) -> String {
    let message = e.message().trim();
    // A date or time reaches [`Raw`] as a map with a private key, which
    // then fails to be a key with a position.
    if message.contains("$__toml_private_datetime") {
        return "dates and times have no use in this file; put the value in quotes if it is text"
            .to_owned();
    }
    let one_line: Vec<&str> = message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    format!("not valid TOML: {}", one_line.join("; "))
}

/// A TOML value as written, with the position of every key and of every
/// item of an array (the header of each `[[job]]`).
#[derive(Debug)]
enum Raw {
    String(String),
    Integer(i128),
    Float,
    Boolean(bool),
    Array(Vec<Spanned<Raw>>),
    Table(RawTable),
}

/// A TOML table's keys and values, in the order written.
#[derive(Debug)]
struct RawTable {
    entries: Vec<(Spanned<String>, Raw)>,
}

impl Raw {
    /// What it is, for messages about a value of the wrong type.
    fn kind(&self) -> &'static str {
        match self {
            Raw::String(_) => "a string",
            Raw::Integer(_) => "a whole number",
            Raw::Float => "a number",
            Raw::Boolean(_) => "true or false",
            Raw::Array(_) => "a list",
            Raw::Table(_) => "a table",
        }
    }
}

impl<'de> Deserialize<'de> for Raw {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Raw, D::Error> {
        deserializer.deserialize_any(RawVisitor)
    }
}

struct RawVisitor;

impl<'de> Visitor<'de> for RawVisitor {
    type Value = Raw;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a TOML value")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Raw, E> {
        Ok(Raw::Boolean(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Raw, E> {
        Ok(Raw::Integer(i128::from(v)))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Raw, E> {
        Ok(Raw::Integer(i128::from(v)))
    }

    fn visit_i128<E: de::Error>(self, v: i128) -> Result<Raw, E> {
        Ok(Raw::Integer(v))
    }

    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Raw, E> {
        i128::try_from(v)
            .map(Raw::Integer)
            .map_err(|_| E::custom("the number is too large"))
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Raw, E> {
        Ok(Raw::Float)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Raw, E> {
        Ok(Raw::String(v.to_owned()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Raw, E> {
        Ok(Raw::String(v))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Raw, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Spanned<Raw>>()? {
            items.push(item);
        }
        Ok(Raw::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Raw, A::Error> {
        let mut entries = Vec::new();
        while let Some(key) = map.next_key::<Spanned<String>>()? {
            let value = map.next_value::<Raw>()?;
            entries.push((key, value));
        }
        // In the order written, so that the first problem reported is the
        // first in the file.
        entries.sort_by_key(|(key, _)| key.span().start);
        Ok(Raw::Table(RawTable { entries }))
    }
}

/// Line numbers of byte offsets.
struct Lines {
    /// The offset of every '\n'.
    newlines: Vec<usize>,
}

impl Lines {
    fn new(text: &str) -> Lines {
        let newlines = text
            .bytes()
            .enumerate()
            .filter(|&(_, b)| b == b'\n')
            .map(|(i, _)| i)
            .collect();
        Lines { newlines }
    }

    /// The line (from 1) of a byte offset: one more than the newlines
    /// before it.
    fn of(&self, offset: usize) -> usize {
        1 + self.newlines.partition_point(|&n| n < offset)
    }
}

/// A problem found while checking, before the origin is added.
#[derive(Debug)]
struct Problem {
    line: Option<usize>,
    message: String,
}

type Checked<T> = Result<T, Problem>;

fn problem(line: usize, message: String) -> Problem {
    Problem {
        line: Some(line),
        message,
    }
}

/// One table of the file, checked key by key.
struct Section<'a> {
    /// How messages name it: "[agent]", "[[job]]".
    what: &'static str,
    /// The line of its header (of its key, for an inline table).
    line: usize,
    fields: Vec<Field<'a>>,
}

/// One key of a table and its value.
#[derive(Clone, Copy)]
struct Field<'a> {
    /// The table, as [`Section::what`].
    what: &'static str,
    key: &'a str,
    line: usize,
    value: &'a Raw,
}

impl<'a> Section<'a> {
    fn new(what: &'static str, line: usize, table: &'a RawTable, lines: &Lines) -> Section<'a> {
        let fields = table
            .entries
            .iter()
            .map(|(key, value)| Field {
                what,
                key: key.get_ref(),
                line: lines.of(key.span().start),
                value,
            })
            .collect();
        Section { what, line, fields }
    }

    /// Fails on the first key not in `allowed`.
    fn allow(&self, allowed: &[&str]) -> Checked<()> {
        match self.fields.iter().find(|f| !allowed.contains(&f.key)) {
            None => Ok(()),
            Some(f) => Err(problem(
                f.line,
                format!(
                    "unknown key `{}` in {}; the keys allowed there are {}",
                    f.key,
                    self.what,
                    allowed.join(", ")
                ),
            )),
        }
    }

    fn get(&self, key: &str) -> Option<Field<'a>> {
        self.fields.iter().find(|f| f.key == key).copied()
    }

    fn require(&self, key: &str, what_for: &str) -> Checked<Field<'a>> {
        self.get(key).ok_or_else(|| {
            problem(
                self.line,
                format!("{} needs `{key}` ({what_for})", self.what),
            )
        })
    }

    /// The later of two keys that exclude each other, when both are set.
    fn both(&self, one: &str, other: &str) -> Option<(Field<'a>, Field<'a>)> {
        let (a, b) = (self.get(one)?, self.get(other)?);
        Some(if a.line <= b.line { (a, b) } else { (b, a) })
    }
}

impl<'a> Field<'a> {
    fn wrong_type(&self, expected: &str) -> Problem {
        problem(
            self.line,
            format!(
                "`{}` in {} must be {expected}, not {}",
                self.key,
                self.what,
                self.value.kind()
            ),
        )
    }

    fn string(&self) -> Checked<&'a str> {
        match self.value {
            Raw::String(s) => Ok(s),
            _ => Err(self.wrong_type("a string")),
        }
    }

    /// A string with something in it.
    fn text(&self) -> Checked<String> {
        let s = self.string()?;
        if s.trim().is_empty() {
            return Err(problem(
                self.line,
                format!(
                    "`{}` in {} is empty; give it a value or leave it out",
                    self.key, self.what
                ),
            ));
        }
        Ok(s.to_owned())
    }

    fn path(&self) -> Checked<PathBuf> {
        self.text().map(PathBuf::from)
    }

    fn duration(&self) -> Checked<Duration> {
        let Raw::String(s) = self.value else {
            return Err(self.wrong_type("a duration in quotes, like \"10s\""));
        };
        humantime::parse_duration(s).map_err(|e| {
            problem(
                self.line,
                format!(
                    "`{}` in {} is not a duration ({s:?}: {e}); write a number and a unit, \
                     like \"500ms\", \"10s\", \"1h\" or \"30d\"",
                    self.key, self.what
                ),
            )
        })
    }

    fn positive_duration(&self) -> Checked<Duration> {
        let d = self.duration()?;
        if d.is_zero() {
            return Err(problem(
                self.line,
                format!("`{}` in {} must be longer than zero", self.key, self.what),
            ));
        }
        Ok(d)
    }

    /// A whole number of at least 1.
    fn count(&self) -> Checked<usize> {
        let Raw::Integer(n) = self.value else {
            return Err(self.wrong_type("a whole number"));
        };
        if *n < 1 {
            return Err(problem(
                self.line,
                format!(
                    "`{}` in {} must be at least 1, not {n}",
                    self.key, self.what
                ),
            ));
        }
        usize::try_from(*n).map_err(|_| {
            problem(
                self.line,
                format!("`{}` in {} is too large ({n})", self.key, self.what),
            )
        })
    }

    fn boolean(&self) -> Checked<bool> {
        match self.value {
            Raw::Boolean(b) => Ok(*b),
            _ => Err(self.wrong_type("true or false")),
        }
    }

    /// A list of strings with something in each.
    fn strings(&self) -> Checked<Vec<String>> {
        let Raw::Array(items) = self.value else {
            return Err(self.wrong_type("a list of strings, like [\"a\", \"b\"]"));
        };
        items
            .iter()
            .map(|item| match item.get_ref() {
                Raw::String(s) if !s.trim().is_empty() => Ok(s.clone()),
                Raw::String(_) => Err(problem(
                    self.line,
                    format!("`{}` in {} holds an empty string", self.key, self.what),
                )),
                other => Err(problem(
                    self.line,
                    format!(
                        "`{}` in {} must be a list of strings, and holds {}",
                        self.key,
                        self.what,
                        other.kind()
                    ),
                )),
            })
            .collect()
    }

    /// A name of a worker, job or agent.
    fn name(&self) -> Checked<String> {
        let s = self.string()?;
        let valid = (1..=MAX_NAME).contains(&s.len())
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if !valid {
            return Err(problem(
                self.line,
                format!(
                    "`{}` in {} must be 1 to {MAX_NAME} ASCII letters, digits, '.', '_' or '-', \
                     not {s:?}",
                    self.key, self.what
                ),
            ));
        }
        Ok(s.to_owned())
    }

    /// The table of `[key]`.
    fn table(&self) -> Checked<&'a RawTable> {
        match self.value {
            Raw::Table(table) => Ok(table),
            other => Err(problem(
                self.line,
                format!(
                    "`{0}` must be a table, not {1}: write [{0}] on a line of its own, then its keys",
                    self.key,
                    other.kind()
                ),
            )),
        }
    }

    /// The tables of `[[key]]`, each with the line of its header.
    fn tables(&self, lines: &Lines) -> Checked<Vec<(usize, &'a RawTable)>> {
        let wrong = || {
            problem(
                self.line,
                format!(
                    "`{0}` must be a list of tables, not {1}: write each as [[{0}]] (with double \
                     brackets) on a line of its own, then its keys",
                    self.key,
                    self.value.kind()
                ),
            )
        };
        let Raw::Array(items) = self.value else {
            return Err(wrong());
        };
        items
            .iter()
            .map(|item| match item.get_ref() {
                Raw::Table(table) => Ok((lines.of(item.span().start), table)),
                _ => Err(wrong()),
            })
            .collect()
    }
}

/// An optional key with a default.
fn or_default<'a, T>(
    section: &Section<'a>,
    key: &str,
    default: T,
    read: impl FnOnce(&Field<'a>) -> Checked<T>,
) -> Checked<T> {
    match section.get(key) {
        Some(field) => read(&field),
        None => Ok(default),
    }
}

/// An optional key without a default.
fn optional<'a, T>(
    section: &Section<'a>,
    key: &str,
    read: impl FnOnce(&Field<'a>) -> Checked<T>,
) -> Checked<Option<T>> {
    section.get(key).map(|field| read(&field)).transpose()
}

const TOP_KEYS: &[&str] = &[
    "source",
    "agent",
    "follower",
    "relay",
    "subscription",
    "job",
];
const SOURCE_KEYS: &[&str] = &["database_url", "key_file"];
const AGENT_KEYS: &[&str] = &[
    "name",
    "heartbeat",
    "lost_after",
    "takeover_poll",
    "run_log_retention",
    "listen",
    "log_format",
];
const FOLLOWER_KEYS: &[&str] = &["name", "into", "poll", "batch_size"];
const RELAY_KEYS: &[&str] = &[
    "name",
    "nats",
    "stream",
    "subject_prefix",
    "aggregates",
    "poll",
    "creds_file",
    "token_file",
    "user",
    "password_file",
    "ca",
    "cert",
    "key",
    "tls",
];
const SUBSCRIPTION_KEYS: &[&str] = &["name", "into", "aggregates", "prefix", "poll"];
const JOB_KEYS: &[&str] = &[
    "name",
    "kind",
    "every",
    "cron",
    "window",
    "older_than",
    "against",
    "dir",
    "batch",
    "signing_key",
];
/// The keys of one kind of job only, and that kind.
const JOB_KIND_KEYS: &[(&str, &str)] = &[
    ("older_than", "trim"),
    ("against", "verify"),
    ("dir", "anchor"),
    ("batch", "rewrap"),
    ("signing_key", "checkpoint"),
];

/// A name with where it was given, to find one used twice.
struct NameUse {
    name: String,
    line: usize,
    what: &'static str,
}

fn check(root: &RawTable, lines: &Lines) -> Checked<Config> {
    let top = Section::new("the file", 1, root, lines);
    if let Some(f) = top.fields.iter().find(|f| !TOP_KEYS.contains(&f.key)) {
        return Err(problem(
            f.line,
            format!(
                "unknown key `{}` at the top level; the file holds [source], [agent], \
                 [[follower]], [[relay]], [[subscription]] and [[job]] tables",
                f.key
            ),
        ));
    }
    let mut names = Vec::new();
    let source = match top.get("source") {
        Some(f) => source(&Section::new("[source]", f.line, f.table()?, lines))?,
        None => SourceConfig::default(),
    };
    let agent = match top.get("agent") {
        Some(f) => agent(&Section::new("[agent]", f.line, f.table()?, lines))?,
        None => AgentConfig::default(),
    };
    let sections = |key: &str, what: &'static str| sections(&top, key, what, lines);
    let followers = sections("follower", "[[follower]]")?
        .iter()
        .map(|s| follower(s, &mut names))
        .collect::<Checked<Vec<_>>>()?;
    let relays = sections("relay", "[[relay]]")?
        .iter()
        .map(|s| relay(s, &mut names))
        .collect::<Checked<Vec<_>>>()?;
    let subscriptions = sections("subscription", "[[subscription]]")?
        .iter()
        .map(|s| subscription(s, &mut names))
        .collect::<Checked<Vec<_>>>()?;
    let jobs = sections("job", "[[job]]")?
        .iter()
        .map(|s| job(s, &mut names))
        .collect::<Checked<Vec<_>>>()?;
    // The second use of a name in the file is the one at fault.
    names.sort_by_key(|n| n.line);
    for (i, later) in names.iter().enumerate() {
        if let Some(first) = names[..i].iter().find(|n| n.name == later.name) {
            return Err(problem(
                later.line,
                format!(
                    "the name {:?} of this {} is already taken by the {} at line {}; followers, \
                     relays, subscriptions and jobs share one set of names: pick another",
                    later.name, later.what, first.what, first.line
                ),
            ));
        }
    }
    if names.is_empty() {
        return Err(Problem {
            line: None,
            message: "nothing to run: add a [[follower]], [[relay]], [[subscription]] or [[job]]"
                .to_owned(),
        });
    }
    Ok(Config {
        source,
        agent,
        followers,
        relays,
        subscriptions,
        jobs,
    })
}

/// The tables of `[[key]]`, named `what` in messages.
fn sections<'a>(
    top: &Section<'a>,
    key: &str,
    what: &'static str,
    lines: &Lines,
) -> Checked<Vec<Section<'a>>> {
    match top.get(key) {
        Some(f) => Ok(f
            .tables(lines)?
            .into_iter()
            .map(|(line, table)| Section::new(what, line, table, lines))
            .collect()),
        None => Ok(Vec::new()),
    }
}

fn source(section: &Section<'_>) -> Checked<SourceConfig> {
    section.allow(SOURCE_KEYS)?;
    Ok(SourceConfig {
        database_url: optional(section, "database_url", Field::text)?,
        key_file: optional(section, "key_file", Field::path)?,
    })
}

fn agent(section: &Section<'_>) -> Checked<AgentConfig> {
    section.allow(AGENT_KEYS)?;
    let defaults = AgentConfig::default();
    let agent = AgentConfig {
        name: optional(section, "name", Field::name)?,
        heartbeat: or_default(
            section,
            "heartbeat",
            defaults.heartbeat,
            Field::positive_duration,
        )?,
        lost_after: or_default(section, "lost_after", defaults.lost_after, Field::duration)?,
        takeover_poll: or_default(
            section,
            "takeover_poll",
            defaults.takeover_poll,
            Field::positive_duration,
        )?,
        run_log_retention: or_default(
            section,
            "run_log_retention",
            defaults.run_log_retention,
            Field::positive_duration,
        )?,
        listen: optional(section, "listen", |f| {
            let s = f.string()?;
            s.parse::<SocketAddr>().map_err(|e| {
                problem(
                    f.line,
                    format!(
                        "`listen` in [agent] is not an address and port ({s:?}: {e}); write \
                         one like \"127.0.0.1:9187\" or \"[::1]:9187\""
                    ),
                )
            })
        })?,
        log_format: or_default(section, "log_format", defaults.log_format, |f| {
            match f.string()? {
                "text" => Ok(LogFormat::Text),
                "json" => Ok(LogFormat::Json),
                other => Err(problem(
                    f.line,
                    format!("`log_format` in [agent] must be \"text\" or \"json\", not {other:?}"),
                )),
            }
        })?,
    };
    if agent.lost_after <= agent.heartbeat {
        let line = section
            .get("lost_after")
            .or_else(|| section.get("heartbeat"))
            .map_or(section.line, |f| f.line);
        return Err(problem(
            line,
            format!(
                "`lost_after` ({}) in [agent] must be longer than `heartbeat` ({}): an agent is \
                 only lost after missing heartbeats; several heartbeats' worth is usual",
                humantime::format_duration(agent.lost_after),
                humantime::format_duration(agent.heartbeat)
            ),
        ));
    }
    Ok(agent)
}

/// The required name of a section, recorded in the shared namespace.
fn named(section: &Section<'_>, names: &mut Vec<NameUse>) -> Checked<String> {
    let field = section.require("name", "a name unique among all workers and jobs")?;
    let name = field.name()?;
    names.push(NameUse {
        name: name.clone(),
        line: field.line,
        what: section.what,
    });
    Ok(name)
}

fn follower(section: &Section<'_>, names: &mut Vec<NameUse>) -> Checked<FollowerConfig> {
    section.allow(FOLLOWER_KEYS)?;
    Ok(FollowerConfig {
        name: named(section, names)?,
        into: section
            .require("into", "the replica's database URL")?
            .text()?,
        poll: or_default(
            section,
            "poll",
            Duration::from_millis(50),
            Field::positive_duration,
        )?,
        batch_size: or_default(section, "batch_size", 1000, Field::count)?,
    })
}

fn relay(section: &Section<'_>, names: &mut Vec<NameUse>) -> Checked<RelayConfig> {
    section.allow(RELAY_KEYS)?;
    let mut ways: Vec<Field<'_>> = ["creds_file", "token_file", "user"]
        .iter()
        .filter_map(|key| section.get(key))
        .collect();
    ways.sort_by_key(|f| f.line);
    if let [first, second, ..] = ways[..] {
        return Err(problem(
            second.line,
            format!(
                "`{}` in [[relay]] conflicts with `{}` at line {}: a relay authenticates one \
                 way; keep one of `creds_file`, `token_file` or `user`",
                second.key, first.key, first.line
            ),
        ));
    }
    for (one, other, other_is) in [
        (
            "user",
            "password_file",
            "the file holding the user's password",
        ),
        (
            "password_file",
            "user",
            "the NATS user whose password it holds",
        ),
        (
            "cert",
            "key",
            "the file holding the certificate's private key",
        ),
        ("key", "cert", "the client certificate the key belongs to"),
    ] {
        if let (Some(f), None) = (section.get(one), section.get(other)) {
            return Err(problem(
                f.line,
                format!("`{one}` in [[relay]] needs `{other}` ({other_is})"),
            ));
        }
    }
    Ok(RelayConfig {
        name: named(section, names)?,
        nats: or_default(
            section,
            "nats",
            "nats://127.0.0.1:4222".to_owned(),
            Field::text,
        )?,
        stream: or_default(section, "stream", "OPLOG".to_owned(), Field::text)?,
        subject_prefix: or_default(section, "subject_prefix", "oplog".to_owned(), Field::text)?,
        aggregates: or_default(section, "aggregates", Vec::new(), Field::strings)?,
        poll: or_default(
            section,
            "poll",
            Duration::from_millis(50),
            Field::positive_duration,
        )?,
        creds_file: optional(section, "creds_file", Field::path)?,
        token_file: optional(section, "token_file", Field::path)?,
        user: optional(section, "user", Field::text)?,
        password_file: optional(section, "password_file", Field::path)?,
        ca: optional(section, "ca", Field::path)?,
        cert: optional(section, "cert", Field::path)?,
        key: optional(section, "key", Field::path)?,
        tls: or_default(section, "tls", false, Field::boolean)?,
    })
}

fn subscription(section: &Section<'_>, names: &mut Vec<NameUse>) -> Checked<SubscriptionConfig> {
    section.allow(SUBSCRIPTION_KEYS)?;
    if let Some((first, second)) = section.both("aggregates", "prefix") {
        return Err(problem(
            second.line,
            format!(
                "`{}` in [[subscription]] conflicts with `{}` at line {}: a subscription \
                 chooses its aggregates by a list or by a prefix; keep one",
                second.key, first.key, first.line
            ),
        ));
    }
    Ok(SubscriptionConfig {
        name: named(section, names)?,
        into: section
            .require("into", "the URL of the database to deliver into")?
            .text()?,
        aggregates: or_default(section, "aggregates", Vec::new(), Field::strings)?,
        prefix: optional(section, "prefix", Field::text)?,
        poll: or_default(
            section,
            "poll",
            Duration::from_millis(200),
            Field::positive_duration,
        )?,
    })
}

fn job(section: &Section<'_>, names: &mut Vec<NameUse>) -> Checked<JobConfig> {
    section.allow(JOB_KEYS)?;
    let kinds = "\"trim\", \"verify\", \"anchor\", \"checkpoint\" or \"rewrap\"";
    let kind_field = section.require("kind", &format!("one of {kinds}"))?;
    let kind = match kind_field.string()? {
        kind @ ("trim" | "verify" | "anchor" | "checkpoint" | "rewrap") => kind,
        other => {
            return Err(problem(
                kind_field.line,
                format!("`kind` in [[job]] must be one of {kinds}, not {other:?}"),
            ))
        }
    };
    for field in &section.fields {
        if let Some((_, owner)) = JOB_KIND_KEYS
            .iter()
            .find(|(key, owner)| *key == field.key && *owner != kind)
        {
            return Err(problem(
                field.line,
                format!(
                    "`{}` is an option of {owner} jobs, and this is a {kind} job: remove it",
                    field.key
                ),
            ));
        }
    }
    let name = named(section, names)?;
    let (schedule, default_window) = match (section.get("every"), section.get("cron")) {
        (Some(every), Some(cron)) => {
            let later = if every.line <= cron.line { cron } else { every };
            return Err(problem(
                later.line,
                format!(
                    "[[job]] {name:?} has both `every` and `cron`; a job has one schedule: \
                     keep one"
                ),
            ));
        }
        (None, None) => {
            return Err(problem(
                section.line,
                format!(
                    "[[job]] {name:?} has no schedule: add `every = \"1h\"` (an interval) or \
                     `cron = \"0 3 * * *\"` (minute hour day-of-month month day-of-week, UTC)"
                ),
            ))
        }
        (Some(every), None) => {
            let interval = every.duration()?;
            if interval < MIN_EVERY {
                return Err(problem(
                    every.line,
                    format!(
                        "`every` in [[job]] must be at least 1s, not {}",
                        humantime::format_duration(interval)
                    ),
                ));
            }
            if interval.subsec_nanos() % 1_000_000 != 0 {
                return Err(problem(
                    every.line,
                    format!(
                        "`every` in [[job]] must be whole milliseconds, not {}",
                        humantime::format_duration(interval)
                    ),
                ));
            }
            (Schedule::Every(interval), interval.min(DEFAULT_WINDOW))
        }
        (None, Some(cron)) => {
            let expression = cron.string()?;
            let parsed = Cron::parse(expression).map_err(|e| {
                problem(
                    cron.line,
                    format!("`cron` in [[job]] is not a cron expression ({expression:?}): {e}"),
                )
            })?;
            (Schedule::Cron(parsed), DEFAULT_WINDOW)
        }
    };
    let window = or_default(section, "window", default_window, Field::positive_duration)?;
    if let (Schedule::Every(interval), Some(field)) = (&schedule, section.get("window")) {
        if window > *interval {
            return Err(problem(
                field.line,
                format!(
                    "`window` ({}) in [[job]] is longer than `every` ({}): a run starts within \
                     its own slot; make it at most {}",
                    humantime::format_duration(window),
                    humantime::format_duration(*interval),
                    humantime::format_duration(*interval)
                ),
            ));
        }
    }
    let kind = match kind {
        "trim" => JobKind::Trim {
            older_than: section
                .require(
                    "older_than",
                    "the age past which entries are trimmed, like \"30d\"",
                )?
                .duration()?,
        },
        "verify" => JobKind::Verify {
            against: or_default(section, "against", Vec::new(), Field::strings)?,
        },
        "anchor" => JobKind::Anchor {
            dir: section
                .require("dir", "the directory to write anchor files into")?
                .path()?,
        },
        "checkpoint" => JobKind::Checkpoint {
            signing_key: section
                .require(
                    "signing_key",
                    "the signing key file (from `oplog keys generate-signing`)",
                )?
                .path()?,
        },
        _ => JobKind::Rewrap {
            batch: or_default(section, "batch", 500, Field::count)?,
        },
    };
    Ok(JobConfig {
        name,
        kind,
        schedule,
        window,
        line: section.line,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every worker and job name, in the order they are checked.
    fn names(config: &Config) -> Vec<&str> {
        let followers = config.followers.iter().map(|f| f.name.as_str());
        let relays = config.relays.iter().map(|r| r.name.as_str());
        let subscriptions = config.subscriptions.iter().map(|s| s.name.as_str());
        let jobs = config.jobs.iter().map(|j| j.name.as_str());
        followers
            .chain(relays)
            .chain(subscriptions)
            .chain(jobs)
            .collect()
    }

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, "agent.toml")
    }

    /// The error of `text`, which must fail at `line` with a message
    /// holding each of `words`.
    fn fails(text: &str, line: Option<usize>, words: &[&str]) -> ConfigError {
        let e = parse(text).expect_err(text);
        assert_eq!(e.line, line, "{e}");
        for word in words {
            assert!(e.message.contains(word), "{e}\n lacks {word:?}");
        }
        e
    }

    #[test]
    fn the_example_parses_with_its_values() {
        let config = parse(EXAMPLE).unwrap();
        assert_eq!(
            config.source.database_url.as_deref(),
            Some("postgres://oplog@db.example.com/app?sslmode=verify-full")
        );
        assert_eq!(
            config.source.key_file,
            Some(PathBuf::from("/etc/oplog/keys.json"))
        );
        // The example shows the defaults.
        assert_eq!(config.agent, AgentConfig::default());
        assert_eq!(
            config.agent.run_log_retention,
            Duration::from_secs(30 * 86_400)
        );
        assert_eq!(
            config.followers,
            [FollowerConfig {
                name: "replica".into(),
                into: "postgres://oplog@replica.example.com/app".into(),
                poll: Duration::from_millis(50),
                batch_size: 1000,
            }]
        );
        let relay = &config.relays[0];
        assert_eq!(
            (
                relay.nats.as_str(),
                relay.stream.as_str(),
                relay.subject_prefix.as_str()
            ),
            ("nats://127.0.0.1:4222", "OPLOG", "oplog")
        );
        assert!(relay.aggregates.is_empty() && !relay.tls && relay.user.is_none());
        assert_eq!(
            config.subscriptions[0].aggregates,
            ["tenant-t1", "tenant-t2"]
        );
        assert_eq!(config.subscriptions[0].poll, Duration::from_millis(200));
        let jobs: Vec<_> = config
            .jobs
            .iter()
            .map(|j| {
                (
                    j.name.as_str(),
                    j.kind.clone(),
                    j.schedule.describe(),
                    j.window,
                )
            })
            .collect();
        let minute = Duration::from_secs(60);
        assert_eq!(
            jobs,
            [
                (
                    "nightly-trim",
                    JobKind::Trim {
                        older_than: Duration::from_secs(30 * 86_400)
                    },
                    "cron 0 3 * * *".to_owned(),
                    minute
                ),
                (
                    "hourly-verify",
                    JobKind::Verify {
                        against: vec!["postgres://oplog@replica.example.com/app".into()]
                    },
                    "every 1h".to_owned(),
                    minute
                ),
                (
                    "anchor",
                    JobKind::Anchor {
                        dir: "/var/lib/oplog/anchors".into()
                    },
                    "every 15m".to_owned(),
                    minute
                ),
                (
                    "checkpoint",
                    JobKind::Checkpoint {
                        signing_key: "/etc/oplog/signing.key".into()
                    },
                    "every 1h".to_owned(),
                    minute
                ),
                (
                    "rewrap",
                    JobKind::Rewrap { batch: 500 },
                    "cron 30 4 * * sun".to_owned(),
                    minute
                ),
            ]
        );
        // Each job's line is that of its header.
        let header_lines: Vec<usize> = EXAMPLE
            .lines()
            .enumerate()
            .filter(|(_, l)| *l == "[[job]]")
            .map(|(i, _)| i + 1)
            .collect();
        assert_eq!(
            config.jobs.iter().map(|j| j.line).collect::<Vec<_>>(),
            header_lines
        );
        assert_eq!(
            names(&config),
            [
                "replica",
                "nats",
                "billing",
                "nightly-trim",
                "hourly-verify",
                "anchor",
                "checkpoint",
                "rewrap"
            ]
        );
    }

    #[test]
    fn the_module_documentation_shows_the_example() {
        let source = include_str!("config.rs");
        let documented: String = source
            .lines()
            .take_while(|l| l.starts_with("//!"))
            .map(|l| {
                l.strip_prefix("//! ")
                    .unwrap_or(l.trim_start_matches("//!"))
            })
            .skip_while(|l| *l != "```toml")
            .skip(1)
            .take_while(|l| *l != "```")
            .map(|l| format!("{l}\n"))
            .collect();
        assert_eq!(documented, EXAMPLE);
    }

    #[test]
    fn defaults_apply() {
        let config = parse(
            "[[follower]]\nname = \"f\"\ninto = \"postgres://r/db\"\n\
             [[relay]]\nname = \"r\"\n\
             [[subscription]]\nname = \"s\"\ninto = \"postgres://s/db\"\n\
             [[job]]\nname = \"j\"\nkind = \"rewrap\"\nevery = \"10s\"\n\
             [[job]]\nname = \"k\"\nkind = \"verify\"\nevery = \"2h\"\n",
        )
        .unwrap();
        assert_eq!(config.source, SourceConfig::default());
        assert_eq!(config.agent, AgentConfig::default());
        assert_eq!(config.followers[0].poll, Duration::from_millis(50));
        assert_eq!(config.followers[0].batch_size, 1000);
        let relay = &config.relays[0];
        assert_eq!(relay.nats, "nats://127.0.0.1:4222");
        assert_eq!(
            (relay.stream.as_str(), relay.subject_prefix.as_str()),
            ("OPLOG", "oplog")
        );
        assert_eq!(relay.poll, Duration::from_millis(50));
        assert_eq!(config.subscriptions[0].poll, Duration::from_millis(200));
        assert_eq!(config.subscriptions[0].prefix, None);
        // A window of the interval when shorter than a minute, else a
        // minute.
        let job = &config.jobs[0];
        assert_eq!(job.kind, JobKind::Rewrap { batch: 500 });
        assert_eq!(job.window, Duration::from_secs(10));
        assert_eq!(job.line, 9);
        assert_eq!(config.jobs[1].kind, JobKind::Verify { against: vec![] });
        assert_eq!(config.jobs[1].window, Duration::from_secs(60));
    }

    const JOB: &str =
        "[[job]]\nname = \"j\"\nkind = \"trim\"\nevery = \"1d\"\nolder_than = \"7d\"\n";

    #[test]
    fn unknown_keys_name_the_key_the_table_and_the_allowed_keys() {
        let e = fails(
            &format!("[agent]\nheartbeat = \"2s\"\nheartbeats = \"3s\"\n{JOB}"),
            Some(3),
            &["`heartbeats`", "[agent]", "lost_after", "log_format"],
        );
        assert_eq!(e.to_string(), format!("agent.toml:3: {}", e.message));
        // In the second [[job]], at the line of the key.
        fails(
            &format!("{JOB}\n[[job]]\nname = \"k\"\nkind = \"trim\"\nolder_than = \"1d\"\ncorn = \"0 3 * * *\"\n"),
            Some(11),
            &["`corn`", "[[job]]", "every, cron, window"],
        );
        fails(
            &format!("{JOB}[[followers]]\nname = \"f\"\n"),
            Some(6),
            &["`followers`", "[[follower]]"],
        );
        // After a blank line, with the keys allowed in a [[relay]].
        fails(
            &format!("{JOB}[[relay]]\nname = \"r\"\n\nnats = \"nats://n:4222\"\ntoken = \"x\"\n"),
            Some(10),
            &["`token`", "[[relay]]", "token_file"],
        );
    }

    #[test]
    fn bad_durations_name_the_key_and_line() {
        fails(
            &format!("{JOB}[[follower]]\nname = \"f\"\ninto = \"postgres://r/db\"\npoll = \"50 parsecs\"\n"),
            Some(9),
            &["`poll`", "[[follower]]", "\"50 parsecs\"", "\"500ms\""],
        );
        fails(
            &format!("[agent]\ntakeover_poll = 5\n{JOB}"),
            Some(2),
            &["`takeover_poll`", "a duration", "whole number"],
        );
        fails(
            &format!("[agent]\nheartbeat = \"0s\"\n{JOB}"),
            Some(2),
            &["`heartbeat`", "longer than zero"],
        );
        fails(
            &format!("[agent]\nheartbeat = \"5s\"\nlost_after = \"5s\"\n{JOB}"),
            Some(3),
            &["`lost_after`", "`heartbeat`"],
        );
    }

    #[test]
    fn a_job_has_exactly_one_schedule() {
        fails(
            "[[job]]\nname = \"j\"\nkind = \"rewrap\"\nevery = \"1h\"\ncron = \"0 3 * * *\"\n",
            Some(5),
            &["`every`", "`cron`", "keep one"],
        );
        fails(
            "\n[[job]]\nname = \"j\"\nkind = \"rewrap\"\n",
            Some(2),
            &["\"j\"", "no schedule", "every = ", "cron = "],
        );
        fails(
            "[[job]]\nname = \"j\"\nkind = \"rewrap\"\ncron = \"0 25 * * *\"\n",
            Some(4),
            &["`cron`", "hour", "25"],
        );
        fails(
            "[[job]]\nname = \"j\"\nkind = \"rewrap\"\nevery = \"500ms\"\n",
            Some(4),
            &["`every`", "at least 1s"],
        );
    }

    #[test]
    fn windows_fit_their_interval() {
        fails(
            "[[job]]\nname = \"j\"\nkind = \"rewrap\"\nevery = \"10m\"\nwindow = \"11m\"\n",
            Some(5),
            &["`window`", "11m", "10m"],
        );
        fails(
            "[[job]]\nname = \"j\"\nkind = \"rewrap\"\ncron = \"* * * * *\"\nwindow = \"0s\"\n",
            Some(5),
            &["`window`", "longer than zero"],
        );
        let config =
            parse("[[job]]\nname = \"j\"\nkind = \"rewrap\"\nevery = \"10m\"\nwindow = \"10m\"\n")
                .unwrap();
        assert_eq!(config.jobs[0].window, Duration::from_secs(600));
    }

    #[test]
    fn keys_of_another_kind_of_job_are_refused() {
        fails(
            "[[job]]\nname = \"v\"\nkind = \"verify\"\nevery = \"1h\"\nolder_than = \"7d\"\n",
            Some(5),
            &["`older_than`", "trim", "verify", "remove it"],
        );
        fails(
            "[[job]]\nname = \"t\"\nkind = \"trim\"\nevery = \"1h\"\n",
            Some(1),
            &["needs `older_than`"],
        );
        fails(
            "[[job]]\nname = \"t\"\nkind = \"prune\"\nevery = \"1h\"\n",
            Some(3),
            &["`kind`", "\"prune\"", "\"trim\""],
        );
    }

    #[test]
    fn names_are_checked_and_shared_by_workers_and_jobs() {
        fails(
            &format!("[[follower]]\nname = \"j\"\ninto = \"postgres://r/db\"\n{JOB}"),
            Some(5),
            &["\"j\"", "[[job]]", "[[follower]] at line 2"],
        );
        // The second in the file is at fault, whatever its kind.
        fails(
            &format!("{JOB}[[follower]]\nname = \"j\"\ninto = \"postgres://r/db\"\n"),
            Some(7),
            &["[[follower]]", "[[job]] at line 2"],
        );
        fails(
            "[[relay]]\nname = \"a relay\"\n",
            Some(2),
            &["`name`", "\"a relay\"", "ASCII letters"],
        );
        fails(
            &format!("[[relay]]\nname = \"{}\"\n", "r".repeat(101)),
            Some(2),
            &["`name`", "1 to 100"],
        );
        fails(
            "[[relay]]\nnats = \"nats://n:4222\"\n",
            Some(1),
            &["needs `name`"],
        );
    }

    #[test]
    fn relay_credentials_go_together() {
        fails(
            "[[relay]]\nname = \"r\"\nuser = \"oplog\"\n",
            Some(3),
            &["`user`", "needs `password_file`"],
        );
        fails(
            "[[relay]]\nname = \"r\"\npassword_file = \"/p\"\n",
            Some(3),
            &["`password_file`", "needs `user`"],
        );
        fails(
            "[[relay]]\nname = \"r\"\nkey = \"/k.pem\"\n",
            Some(3),
            &["`key`", "needs `cert`"],
        );
        fails(
            "[[relay]]\nname = \"r\"\ntoken_file = \"/t\"\ncreds_file = \"/c\"\n",
            Some(4),
            &["`creds_file`", "`token_file` at line 3", "keep one"],
        );
        fails(
            "[[subscription]]\nname = \"s\"\ninto = \"postgres://s/db\"\nprefix = \"t-\"\naggregates = [\"a\"]\n",
            Some(5),
            &["`aggregates`", "`prefix`"],
        );
    }

    #[test]
    fn nothing_to_run() {
        for text in [
            "",
            " \n\t\n",
            "[agent]\nheartbeat = \"2s\"\n",
            "follower = []\n",
        ] {
            let e = fails(text, None, &[]);
            assert_eq!(
                e.to_string(),
                "agent.toml: nothing to run: add a [[follower]], [[relay]], [[subscription]] or [[job]]"
            );
        }
    }

    #[test]
    fn toml_mistakes_name_their_line() {
        fails(&format!("{JOB}[[job]\n"), Some(6), &["not valid TOML"]);
        fails(
            &format!("{JOB}[follower]\nname = \"f\"\n"),
            Some(6),
            &["[[follower]]", "double brackets"],
        );
        fails(
            &format!("agent = 3\n{JOB}"),
            Some(1),
            &["`agent`", "[agent]"],
        );
        fails(
            &format!("[agent]\nname = 1979-05-27\n{JOB}"),
            Some(2),
            &["dates and times"],
        );
    }

    #[test]
    fn load_names_the_file() {
        let e = Config::load(Path::new("/nonexistent/oplog-agent.toml")).unwrap_err();
        assert_eq!(e.origin, "/nonexistent/oplog-agent.toml");
        assert_eq!(e.line, None);
        assert!(
            e.to_string()
                .starts_with("/nonexistent/oplog-agent.toml: cannot read"),
            "{e}"
        );
    }
}
