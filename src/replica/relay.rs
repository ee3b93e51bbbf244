//! The log beyond one database: relaying every entry to a NATS JetStream
//! stream, and reading it back from there with every entry checked.
//!
//! # The stream
//!
//! One stream (default `OPLOG`) holds one subject per aggregate,
//! `<prefix>.e.<aggregate>` (default prefix `oplog`; characters other than
//! ASCII letters, digits, `-` and `_` are written `~xx`, their bytes in
//! hex), and one per catalog, `<prefix>.c.<digest in hex>`. A message
//! carries the sealed entry as the database holds it (ciphertext, key id,
//! seq, chain value, catalog digest, metadata), never plaintext: the broker
//! learns what a reader of the database learns.
//!
//! # Exactly once, in order
//!
//! The relay publishes an aggregate's entries one after the other, each
//! with `Nats-Msg-Id` = the entry's UUID and
//! `Nats-Expected-Last-Subject-Sequence` = the stream sequence of the
//! aggregate's previous message, so that the stream refuses anything but
//! the next message of that subject. Where it resumes (after a restart, or
//! when the stream refuses a message) it asks the stream for the subject's
//! last message, and goes on after the entry that message holds: a relay
//! killed at any moment and started again neither duplicates nor skips an
//! entry, however long it was down. The relay is a registered consumer of
//! the source (`relay.<stream>`), so trimming never deletes what it has
//! not published; its positions are reported after the stream
//! acknowledged, and may lag the stream, never lead it.
//!
//! # Reading it back
//!
//! [`tail`] reads the stream (or one aggregate's subject) in order, opens
//! every entry with the keyring and the catalog the stream holds, and
//! checks per aggregate that seqs are consecutive and each chain value
//! follows from its predecessor's: a lost, duplicated, reordered, altered
//! or forged message is a [`StreamFinding`] naming the aggregate and seq.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::stream::LastRawMessageErrorKind;
use futures_util::StreamExt;
use postgres::types::Type;
use postgres::Client;
use serde::{Deserialize, Serialize};

use crate::codec::catalog::CatalogBytes;
use crate::codec::catalog::TypeCatalog;
use crate::codec::entry::Entry;
use crate::codec::entry::GENESIS_CHAIN;
use crate::error::{Error, Result};
use crate::hex::{hex, parse_hex};
use crate::replica::chain::{ChainCursor, Link};
use crate::replica::live::{Live, LiveEvent, LiveOptions, LogConsumer};
use crate::replica::subscribe::{tickets_after, Selection};
use crate::source::consumer;
use crate::source::write::row_ref;
use crate::source::write::Oplog;
use crate::store::connect::Database;
use crate::store::private::Sealed;
use crate::store::{ListQuery, StoredRow};

/// How the relay and stream readers prove who they are to NATS. Secrets
/// never appear in debug output or errors: `Debug` names only the kind.
#[derive(Clone, Default)]
#[non_exhaustive]
pub enum NatsAuth {
    /// No credentials (or those in the URL, `nats://user:password@host`).
    #[default]
    None,
    /// A token (`authorization { token: ... }` on the server).
    Token(String),
    /// A user and password.
    UserPassword {
        /// The user.
        user: String,
        /// The password.
        password: String,
    },
    /// A `.creds` file (a user JWT and its NKey seed), as issued for
    /// decentralised authentication.
    CredentialsFile(PathBuf),
}

impl std::fmt::Debug for NatsAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NatsAuth::None => f.write_str("None"),
            NatsAuth::Token(_) => f.write_str("Token(<redacted>)"),
            NatsAuth::UserPassword { user, .. } => f
                .debug_struct("UserPassword")
                .field("user", user)
                .field("password", &"<redacted>")
                .finish(),
            NatsAuth::CredentialsFile(path) => {
                f.debug_tuple("CredentialsFile").field(path).finish()
            }
        }
    }
}

/// TLS to NATS. The client uses TLS when the server asks for it or the URL
/// says `tls://`; these add what a private CA or mutual TLS needs.
#[derive(Debug, Clone, Default)]
pub struct NatsTls {
    /// PEM file of the CA certificates that sign the server's certificate
    /// (in addition to the system's roots).
    pub root_certificates: Option<PathBuf>,
    /// PEM files of the client's certificate and its key, for servers that
    /// verify clients.
    pub client_certificate: Option<(PathBuf, PathBuf)>,
    /// Refuse to talk to a server without TLS.
    pub required: bool,
}

/// Where the relay publishes, and what it relays.
#[derive(Clone)]
pub struct RelayOptions {
    /// The NATS server, e.g. `nats://127.0.0.1:4222`.
    pub nats_url: String,
    /// Credentials for NATS.
    pub auth: NatsAuth,
    /// TLS to NATS.
    pub tls: NatsTls,
    /// The JetStream stream; created when missing.
    pub stream: String,
    /// The first token of every subject.
    pub subject_prefix: String,
    /// Only these aggregates; empty for all.
    pub aggregates: Vec<String>,
    /// Entries read from the database per page.
    pub page_entries: i64,
    /// Bytes read from the database per page (at least one entry).
    pub page_bytes: u64,
    /// How long to wait for NATS to answer a request.
    pub timeout: Duration,
}

impl std::fmt::Debug for RelayOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayOptions")
            .field("nats_url", &redacted_url(&self.nats_url))
            .field("auth", &self.auth)
            .field("tls", &self.tls)
            .field("stream", &self.stream)
            .field("subject_prefix", &self.subject_prefix)
            .field("aggregates", &self.aggregates)
            .field("page_entries", &self.page_entries)
            .field("page_bytes", &self.page_bytes)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// `url` with any password or token in it replaced, for messages.
/// Several servers may be listed, each with its own user information.
pub(crate) fn redacted_url(url: &str) -> String {
    url.split(',')
        .map(|server| {
            let (scheme, rest) = match server.split_once("://") {
                Some((scheme, rest)) => (format!("{scheme}://"), rest),
                None => (String::new(), server),
            };
            match rest.rsplit_once('@') {
                Some((user_info, host)) => match user_info.split_once(':') {
                    Some((user, _)) => format!("{scheme}{user}:<redacted>@{host}"),
                    None => format!("{scheme}<redacted>@{host}"),
                },
                None => server.to_string(),
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

impl Default for RelayOptions {
    fn default() -> Self {
        RelayOptions {
            nats_url: "nats://127.0.0.1:4222".into(),
            auth: NatsAuth::None,
            tls: NatsTls::default(),
            stream: "OPLOG".into(),
            subject_prefix: "oplog".into(),
            aggregates: Vec::new(),
            page_entries: 500,
            page_bytes: 8 << 20,
            timeout: Duration::from_secs(10),
        }
    }
}

impl RelayOptions {
    /// The name the relay registers as a consumer of the source.
    pub fn consumer_name(&self) -> String {
        format!("relay.{}", self.stream)
    }

    fn check(&self) -> Result<()> {
        let token_ok = |t: &str| {
            !t.is_empty()
                && t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        };
        if !token_ok(&self.stream) || self.stream.len() > 200 {
            return Err(Error::Config(format!(
                "stream name {:?} must be 1 to 200 ASCII letters, digits, '-' or '_'",
                self.stream
            )));
        }
        if !self.subject_prefix.split('.').all(token_ok) {
            return Err(Error::Config(format!(
                "subject prefix {:?} must be dot-separated tokens of ASCII letters, digits, '-' or '_'",
                self.subject_prefix
            )));
        }
        if self.page_entries < 1 {
            return Err(Error::Config("page_entries must be at least 1".into()));
        }
        Ok(())
    }
}

/// The subject of `aggregate`'s entries under `prefix`.
pub fn entry_subject(prefix: &str, aggregate: &str) -> String {
    let mut subject = format!("{prefix}.e.");
    for b in aggregate.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
            subject.push(char::from(b));
        } else {
            subject.push_str(&format!("~{b:02x}"));
        }
    }
    subject
}

/// The subject of the catalog `digest` under `prefix`.
fn catalog_subject(prefix: &str, digest: &[u8]) -> String {
    format!("{prefix}.c.{}", hex(digest))
}

/// An entry as a message carries it: the sealed entry, as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct WireEntry {
    /// This format's version.
    v: u8,
    uuid: String,
    aggregate: String,
    seq: i64,
    format: i16,
    key_id: String,
    /// Ciphertext, hex.
    data: String,
    /// SHA-256 of the plaintext, hex.
    digest: String,
    /// The chain value, hex.
    chain: String,
    created_us: i64,
    meta_keys: Vec<String>,
    meta_values: Vec<String>,
    /// The catalog digest, hex.
    catalog: Option<String>,
}

const WIRE_VERSION: u8 = 1;

impl WireEntry {
    fn of(row: &StoredRow) -> WireEntry {
        WireEntry {
            v: WIRE_VERSION,
            uuid: row.entry_uuid.clone(),
            aggregate: row.aggregate_name.clone(),
            seq: row.seq,
            format: row.format,
            key_id: row.key_id.clone(),
            data: hex(&row.data),
            digest: hex(&row.digest),
            chain: hex(&row.chain),
            created_us: row.created_us,
            meta_keys: row.meta_keys.clone(),
            meta_values: row.meta_values.clone(),
            catalog: row.catalog.as_deref().map(hex),
        }
    }

    /// The message's entry as a stored row (id 0: the stream has no ids).
    fn row(self) -> std::result::Result<StoredRow, String> {
        if self.v != WIRE_VERSION {
            return Err(format!("message format {} is not {WIRE_VERSION}", self.v));
        }
        let bytes =
            |field: &str, text: &str| parse_hex(text).ok_or_else(|| format!("{field} is not hex"));
        Ok(StoredRow {
            id: 0,
            data: bytes("data", &self.data)?,
            digest: bytes("digest", &self.digest)?,
            chain: bytes("chain", &self.chain)?,
            catalog: match &self.catalog {
                Some(c) => Some(bytes("catalog", c)?),
                None => None,
            },
            entry_uuid: self.uuid,
            aggregate_name: self.aggregate,
            seq: self.seq,
            format: self.format,
            key_id: self.key_id,
            created_us: self.created_us,
            meta_keys: self.meta_keys,
            meta_values: self.meta_values,
            // A stream carries no subject keys: entries under one travel
            // sealed, and are never readable from the stream.
            subject: None,
            subject_wrapped: None,
        })
    }

    fn parse(payload: &[u8]) -> std::result::Result<StoredRow, String> {
        serde_json::from_slice::<WireEntry>(payload)
            .map_err(|e| format!("not an entry message: {e}"))?
            .row()
    }
}

fn nats_error(action: &str, e: impl std::fmt::Display) -> Error {
    Error::Broker(format!("{action}: {e}"))
}

/// A runtime of the relay's own, for the NATS client.
fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| nats_error("starting the NATS client's runtime", e))
}

/// The stream, created when missing.
async fn open_stream(
    js: &jetstream::Context,
    opts: &RelayOptions,
) -> Result<jetstream::stream::Stream> {
    js.get_or_create_stream(jetstream::stream::Config {
        name: opts.stream.clone(),
        subjects: vec![format!("{}.>", opts.subject_prefix)],
        ..Default::default()
    })
    .await
    .map_err(|e| nats_error(&format!("opening stream {}", opts.stream), e))
}

/// How the relay and the reader connect to NATS: `opts`' timeouts,
/// credentials and TLS.
async fn nats_options(opts: &RelayOptions) -> Result<async_nats::ConnectOptions> {
    let mut options = match &opts.auth {
        NatsAuth::None => async_nats::ConnectOptions::new(),
        NatsAuth::Token(token) => async_nats::ConnectOptions::with_token(token.clone()),
        NatsAuth::UserPassword { user, password } => {
            async_nats::ConnectOptions::with_user_and_password(user.clone(), password.clone())
        }
        NatsAuth::CredentialsFile(path) => async_nats::ConnectOptions::with_credentials_file(path)
            .await
            .map_err(|e| Error::Io {
                context: format!("reading the NATS credentials file {}", path.display()),
                source: e,
            })?,
    };
    if let Some(roots) = &opts.tls.root_certificates {
        options = options.add_root_certificates(roots.clone());
    }
    if let Some((cert, key)) = &opts.tls.client_certificate {
        options = options.add_client_certificate(cert.clone(), key.clone());
    }
    Ok(options
        .require_tls(opts.tls.required)
        .connection_timeout(opts.timeout)
        .request_timeout(Some(opts.timeout)))
}

async fn connect_nats(opts: &RelayOptions) -> Result<async_nats::Client> {
    connect_nats_with(nats_options(opts).await?, &opts.nats_url).await
}

async fn connect_nats_with(
    options: async_nats::ConnectOptions,
    url: &str,
) -> Result<async_nats::Client> {
    options
        .connect(url)
        .await
        .map_err(|e| nats_error(&format!("connecting to NATS at {}", redacted_url(url)), e))
}

/// The last message on `subject`: its entry's seq and UUID, and its stream
/// sequence; `None` when the subject has none.
async fn last_on_subject(
    stream: &jetstream::stream::Stream,
    subject: &str,
) -> Result<Option<(i64, String, u64)>> {
    match stream.get_last_raw_message_by_subject(subject).await {
        Ok(m) => {
            let row = WireEntry::parse(&m.payload).map_err(|reason| {
                Error::Broker(format!(
                    "the last message on {subject} (stream sequence {}) is not the relay's: {reason}",
                    m.sequence
                ))
            })?;
            Ok(Some((row.seq, row.entry_uuid, m.sequence)))
        }
        Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(None),
        Err(e) => Err(nats_error(
            &format!("reading the last message on {subject}"),
            e,
        )),
    }
}

/// Deletes the stream `opts` names, with every message in it (for
/// teardown: the relay's positions on the source are left as they are;
/// remove its consumer with `oplog consumers remove`). False when there
/// was no such stream.
pub fn delete_stream(opts: &RelayOptions) -> Result<bool> {
    runtime()?.block_on(async {
        let client = connect_nats(opts).await?;
        match jetstream::new(client).delete_stream(&opts.stream).await {
            Ok(status) => Ok(status.success),
            Err(e) if e.to_string().contains("not found") => Ok(false),
            Err(e) => Err(nats_error(&format!("deleting stream {}", opts.stream), e)),
        }
    })
}

/// What a relay pass did.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RelayReport {
    /// Entries published.
    pub entries: u64,
    /// Entries the stream already held (published before a restart).
    pub already_published: u64,
    /// Catalogs published.
    pub catalogs: u64,
    /// Aggregates that had entries to relay.
    pub aggregates: u64,
}

/// Where an aggregate stands in the stream: the last seq relayed, and the
/// stream sequence of its subject's last message (0 for none).
#[derive(Debug, Clone, Copy)]
struct Published {
    seq: i64,
    subject_seq: u64,
}

/// A relay from one source database to one stream.
pub struct Relay {
    opts: RelayOptions,
    runtime: tokio::runtime::Runtime,
    js: jetstream::Context,
    stream: jetstream::stream::Stream,
    /// Aggregates whose place in the stream is known.
    published: HashMap<String, Published>,
    /// Catalogs known to be in the stream.
    catalogs: HashSet<Vec<u8>>,
    /// Positions reached and not reported yet.
    reached: Vec<(String, i64)>,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("stream", &self.opts.stream)
            .field("aggregates_known", &self.published.len())
            .finish()
    }
}

impl Relay {
    /// Connects to NATS, opens (or creates) the stream, and registers the
    /// relay as a consumer of the source on `source` when it is not yet,
    /// so that trimming waits for it from now on.
    pub fn connect(source: &mut Client, opts: RelayOptions) -> Result<Relay> {
        opts.check()?;
        let runtime = runtime()?;
        let (js, stream) = runtime.block_on(async {
            let client = connect_nats(&opts).await?;
            let js = jetstream::new(client);
            let stream = open_stream(&js, &opts).await?;
            Ok::<_, Error>((js, stream))
        })?;
        consumer::register_unless_known(source, &opts.consumer_name())?;
        Ok(Relay {
            opts,
            runtime,
            js,
            stream,
            published: HashMap::new(),
            catalogs: HashSet::new(),
            reached: Vec::new(),
        })
    }

    /// Publishes every entry the stream does not hold yet, aggregate by
    /// aggregate, each in seq order, and reports the relay's positions to
    /// the source.
    pub fn pass(&mut self, source: &mut Client) -> Result<RelayReport> {
        let mut report = RelayReport::default();
        let name = self.opts.consumer_name();
        let mut after = String::new();
        loop {
            let pending = tickets_after(source, &self.selection(), Some(&name), &after)?;
            let Some((last, _)) = pending.last() else {
                break;
            };
            after.clone_from(last);
            for (aggregate, version) in pending {
                if self.relay_aggregate(source, &aggregate, version, &mut report)? {
                    report.aggregates += 1;
                }
                // Positions go to the registry a hundred aggregates at a
                // time (they may lag the stream, never lead it).
                if self.reached.len() >= 100 {
                    self.report(source, true)?;
                }
            }
        }
        let progressed = !self.reached.is_empty();
        self.report(source, progressed)?;
        Ok(report)
    }

    /// Relays `aggregate` up to `version`; true when it had anything to
    /// relay.
    fn relay_aggregate(
        &mut self,
        source: &mut Client,
        aggregate: &str,
        version: i64,
        report: &mut RelayReport,
    ) -> Result<bool> {
        let subject = entry_subject(&self.opts.subject_prefix, aggregate);
        let mut at = match self.published.get(aggregate) {
            Some(p) => *p,
            None => self.resync(&subject)?,
        };
        if at.seq >= version {
            self.published.insert(aggregate.to_string(), at);
            self.reached.push((aggregate.to_string(), at.seq));
            return Ok(false);
        }
        loop {
            let page = source.list_entries(&ListQuery {
                aggregate: Some(aggregate),
                after_seq: at.seq,
                after: (aggregate, at.seq),
                limit: self.opts.page_entries,
                max_bytes: self.opts.page_bytes,
            })?;
            if page.rows.is_empty() {
                break;
            }
            for row in &page.rows {
                if let Some(digest) = &row.catalog {
                    self.publish_catalog(source, digest, report)?;
                }
                at = self.publish_entry(source, &subject, row, at, report)?;
                self.published.insert(aggregate.to_string(), at);
            }
            self.reached.push((aggregate.to_string(), at.seq));
            if !page.full && !page.cut {
                break;
            }
        }
        Ok(true)
    }

    /// The aggregates relayed.
    fn selection(&self) -> Selection {
        if self.opts.aggregates.is_empty() {
            Selection::All
        } else {
            Selection::Aggregates(self.opts.aggregates.clone())
        }
    }

    /// Where `subject` stands in the stream.
    fn resync(&self, subject: &str) -> Result<Published> {
        let last = self
            .runtime
            .block_on(last_on_subject(&self.stream, subject))?;
        Ok(match last {
            Some((seq, _, subject_seq)) => Published { seq, subject_seq },
            None => Published {
                seq: 0,
                subject_seq: 0,
            },
        })
    }

    /// Publishes `row` as the message after `at` on `subject`.
    fn publish_entry(
        &mut self,
        source: &mut Client,
        subject: &str,
        row: &StoredRow,
        at: Published,
        report: &mut RelayReport,
    ) -> Result<Published> {
        if row.seq <= at.seq {
            // The stream already holds it (a resync found it there).
            report.already_published += 1;
            return Ok(at);
        }
        let payload = serde_json::to_vec(&WireEntry::of(row))
            .map_err(|e| nats_error("encoding an entry message", e))?;
        let sent = self.publish(subject, &row.entry_uuid, at.subject_seq, payload);
        match sent {
            Ok(ack) => {
                if ack.duplicate {
                    report.already_published += 1;
                } else {
                    report.entries += 1;
                }
                Ok(Published {
                    seq: row.seq,
                    subject_seq: ack.sequence,
                })
            }
            Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => {
                // Something else is the subject's last message: an earlier
                // run of the relay, or another relay, published this entry
                // (or more), or the subject holds a message no relay
                // published. The stream is followed when its last message
                // is this aggregate's entry at or after this one.
                let last = self
                    .runtime
                    .block_on(last_on_subject(&self.stream, subject))?;
                if let Some((seq, uuid, subject_seq)) = &last {
                    if *seq >= row.seq && is_entry(source, &row.aggregate_name, *seq, uuid)? {
                        report.already_published += 1;
                        return Ok(Published {
                            seq: *seq,
                            subject_seq: *subject_seq,
                        });
                    }
                }
                Err(Error::Broker(format!(
                    "{subject}: the stream refused aggregate {:?} seq {} after stream sequence {}, \
                     and its last message there ({}) is not an entry of this log at or after it; \
                     nothing more of this aggregate is relayed",
                    row.aggregate_name,
                    row.seq,
                    at.subject_seq,
                    match last {
                        Some((seq, uuid, s)) => format!("seq {seq}, {uuid}, stream sequence {s}"),
                        None => "none".into(),
                    }
                )))
            }
            Err(e) => Err(nats_error(
                &format!(
                    "publishing aggregate {:?} seq {} to {subject}",
                    row.aggregate_name, row.seq
                ),
                e,
            )),
        }
    }

    /// Publishes `payload` on `subject` as message `id`, accepted only when
    /// the subject's last message is at stream sequence `after` (0: none),
    /// and waits for the stream's acknowledgement.
    fn publish(
        &self,
        subject: &str,
        id: &str,
        after: u64,
        payload: Vec<u8>,
    ) -> std::result::Result<jetstream::publish::PublishAck, jetstream::context::PublishError> {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", id);
        headers.insert(
            "Nats-Expected-Last-Subject-Sequence",
            after.to_string().as_str(),
        );
        self.runtime.block_on(async {
            self.js
                .publish_with_headers(subject.to_string(), headers, payload.into())
                .await?
                .await
        })
    }

    /// Publishes the stored catalog `digest` once, under its own subject.
    fn publish_catalog(
        &mut self,
        source: &mut Client,
        digest: &[u8],
        report: &mut RelayReport,
    ) -> Result<()> {
        if self.catalogs.contains(digest) {
            return Ok(());
        }
        let subject = catalog_subject(&self.opts.subject_prefix, digest);
        let stored = source.load_catalog(digest, usize::MAX)?;
        let Some(CatalogBytes::Bytes(bytes)) = stored else {
            return Err(Error::StoredCatalog {
                digest: hex(digest),
                reason: "an entry names it, but it is not stored".into(),
            });
        };
        let sent = self.publish(&subject, &format!("catalog-{}", hex(digest)), 0, bytes);
        match sent {
            Ok(ack) if !ack.duplicate => report.catalogs += 1,
            Ok(_) => {}
            // Published by an earlier run.
            Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => {}
            Err(e) => return Err(nats_error(&format!("publishing catalog to {subject}"), e)),
        }
        self.catalogs.insert(digest.to_vec());
        Ok(())
    }

    /// Reports the positions reached since the last report, in one
    /// statement.
    fn report(&mut self, source: &mut Client, progressed: bool) -> Result<()> {
        consumer::report(
            source,
            &self.opts.consumer_name(),
            &self.reached,
            progressed,
        )?;
        self.reached.clear();
        Ok(())
    }
}

/// Relays until `stop` is set (or, with
/// [`LiveOptions::until_caught_up`], until a pass finds nothing new):
/// catch-up, then live tail, woken by writers' notifications and polling
/// otherwise (see [`Live`]). While PostgreSQL or NATS is down, `events`
/// hears what failed and when the next attempt is; the relay then
/// connects again and resumes from the stream's last message of each
/// aggregate. An error other than a lost database connection or a NATS
/// failure ends it.
///
/// ```no_run
/// use std::sync::atomic::AtomicBool;
/// use std::sync::Arc;
/// use oplog::relay::{self, RelayOptions};
/// use oplog::LiveOptions;
///
/// let stop = Arc::new(AtomicBool::new(false)); // set it to stop
/// let report = relay::run(
///     "postgres://postgres@127.0.0.1/app",
///     RelayOptions::default(),
///     LiveOptions::default(),
///     stop,
///     &mut |event| eprintln!("relay: {event:?}"),
/// )?;
/// eprintln!("{} entries relayed", report.entries);
/// # Ok::<(), oplog::Error>(())
/// ```
pub fn run(
    source: impl Into<Database>,
    opts: RelayOptions,
    live: LiveOptions,
    stop: Arc<AtomicBool>,
    events: &mut dyn FnMut(&LiveEvent<'_>),
) -> Result<RelayReport> {
    opts.check()?;
    let mut relaying = Relaying {
        opts,
        relay: None,
        total: RelayReport::default(),
        events,
    };
    Live::new(source, live).with_stop(stop).run(&mut relaying)?;
    Ok(relaying.total)
}

/// The relay as a consumer of the log: each session connects to NATS and
/// opens the stream anew.
struct Relaying<'e> {
    opts: RelayOptions,
    relay: Option<Relay>,
    total: RelayReport,
    events: &'e mut dyn FnMut(&LiveEvent<'_>),
}

impl LogConsumer for Relaying<'_> {
    fn start(&mut self, control: &mut Client, _: &AtomicBool) -> Result<Option<String>> {
        self.relay = None;
        self.relay = Some(Relay::connect(control, self.opts.clone())?);
        Ok(Some(self.opts.consumer_name()))
    }

    fn pass(&mut self, control: &mut Client) -> Result<u64> {
        let Some(relay) = self.relay.as_mut() else {
            return Ok(0);
        };
        let pass = relay.pass(control)?;
        self.total.entries += pass.entries;
        self.total.already_published += pass.already_published;
        self.total.catalogs += pass.catalogs;
        self.total.aggregates += pass.aggregates;
        Ok(pass.entries + pass.already_published)
    }

    fn event(&mut self, event: &LiveEvent<'_>) {
        (self.events)(event);
    }

    fn retryable(&self, error: &Error) -> bool {
        error.is_connection() || matches!(error, Error::Broker(_))
    }
}

/// Whether `aggregate`'s entry `seq` in the log has the UUID `uuid`.
fn is_entry(c: &mut Client, aggregate: &str, seq: i64, uuid: &str) -> Result<bool> {
    let row = c.query_typed_opt(
        "SELECT entry_uuid::text FROM oplog_entry WHERE aggregate_name = $1 AND seq = $2",
        &[(&aggregate, Type::TEXT), (&seq, Type::INT8)],
    )?;
    Ok(match row {
        Some(r) => r.try_get::<_, String>(0)? == uuid,
        None => false,
    })
}

/// Something wrong with what the stream holds.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "finding", rename_all = "snake_case")]
pub enum StreamFinding {
    /// Seqs `missing` up to `seq` (exclusive) of `aggregate` are not in the
    /// stream: lost.
    Gap {
        /// The aggregate.
        aggregate: String,
        /// The first seq missing.
        missing: i64,
        /// The seq that came instead.
        seq: i64,
    },
    /// A message repeats or goes back to a seq already read: duplicated or
    /// reordered.
    OutOfOrder {
        /// The aggregate.
        aggregate: String,
        /// The seq expected.
        expected: i64,
        /// The seq that came.
        seq: i64,
    },
    /// The entry's chain value does not follow from its predecessor's, or
    /// it does not authenticate: altered or forged.
    Altered {
        /// The aggregate.
        aggregate: String,
        /// The seq.
        seq: i64,
        /// What failed.
        reason: String,
    },
    /// A message that is not an entry of the relay.
    Unreadable {
        /// Its subject.
        subject: String,
        /// Its stream sequence.
        stream_seq: u64,
        /// Why.
        reason: String,
    },
}

impl std::fmt::Display for StreamFinding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StreamFinding::Gap {
                aggregate,
                missing,
                seq,
            } => write!(
                f,
                "aggregate {aggregate:?}: seqs {missing} to {} are missing from the stream (seq {seq} came next)",
                seq - 1
            ),
            StreamFinding::OutOfOrder {
                aggregate,
                expected,
                seq,
            } => write!(
                f,
                "aggregate {aggregate:?}: seq {seq} came where seq {expected} was expected (duplicated or reordered)"
            ),
            StreamFinding::Altered {
                aggregate,
                seq,
                reason,
            } => write!(f, "aggregate {aggregate:?} seq {seq}: {reason}"),
            StreamFinding::Unreadable {
                subject,
                stream_seq,
                reason,
            } => write!(f, "{subject} (stream sequence {stream_seq}): {reason}"),
        }
    }
}

/// What [`tail`] hands over, in stream order.
#[derive(Debug)]
pub enum StreamItem {
    /// An entry that follows its predecessor, opened.
    Entry {
        /// The entry.
        entry: Box<Entry>,
        /// Its stream sequence.
        stream_seq: u64,
    },
    /// Something wrong; reading goes on.
    Finding(StreamFinding),
    /// Following, NATS could not be read (why); the reader waits for it
    /// and goes on where it was.
    Waiting(String),
}

/// What to read from the stream.
#[derive(Debug, Clone)]
pub struct TailOptions {
    /// Where the stream is.
    pub relay: RelayOptions,
    /// Only this aggregate; `None` for all.
    pub aggregate: Option<String>,
    /// Keep reading new messages; without it, stop once the stream has
    /// nothing more for `idle`.
    pub follow: bool,
    /// How long a quiet stream is waited for before [`tail`] returns (when
    /// not following).
    pub idle: Duration,
}

/// Reads the stream from its start, checking and opening every entry
/// with `oplog`'s keyring and the catalogs the stream holds, and hands
/// each entry or finding to `each`, which returns false to stop.
/// Returns how many messages were read.
pub fn tail(
    oplog: &Oplog,
    opts: &TailOptions,
    mut each: impl FnMut(StreamItem) -> bool,
) -> Result<u64> {
    opts.relay.check()?;
    let runtime = runtime()?;
    runtime.block_on(async {
        // The client reconnects by itself; these say when it lost and got
        // back its connection, so that the reader says it waits, and starts
        // reading again after the last message it had.
        let lost = Arc::new(AtomicBool::new(false));
        let back = Arc::new(AtomicBool::new(false));
        let (on_lost, on_back) = (lost.clone(), back.clone());
        let options = nats_options(&opts.relay)
            .await?
            .event_callback(move |event| {
                match event {
                    async_nats::Event::Disconnected => on_lost.store(true, Ordering::Relaxed),
                    async_nats::Event::Connected => on_back.store(true, Ordering::Relaxed),
                    _ => {}
                }
                async {}
            });
        let client = connect_nats_with(options, &opts.relay.nats_url).await?;
        let js = jetstream::new(client);
        let stream = js
            .get_stream(&opts.relay.stream)
            .await
            .map_err(|e| nats_error(&format!("opening stream {}", opts.relay.stream), e))?;
        let filter = match &opts.aggregate {
            Some(a) => entry_subject(&opts.relay.subject_prefix, a),
            None => format!("{}.e.>", opts.relay.subject_prefix),
        };
        let mut messages = ordered_after(&stream, &filter, 0).await?;
        back.store(false, Ordering::Relaxed);
        let mut checker = StreamChecker::new(oplog);
        let mut read = 0u64;
        let mut last = 0u64;
        let mut quiet_since = std::time::Instant::now();
        loop {
            if lost.swap(false, Ordering::Relaxed)
                && opts.follow
                && !each(StreamItem::Waiting(format!(
                    "the connection to {} was lost; reconnecting",
                    redacted_url(&opts.relay.nats_url)
                )))
            {
                return Ok(read);
            }
            if back.swap(false, Ordering::Relaxed) {
                match ordered_after(&stream, &filter, last).await {
                    Ok(m) => messages = m,
                    Err(e) if opts.follow => {
                        back.store(true, Ordering::Relaxed);
                        if !each(StreamItem::Waiting(e.to_string())) {
                            return Ok(read);
                        }
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue;
                    }
                    Err(e) => return Err(e),
                }
            }
            let next = match tokio::time::timeout(Duration::from_millis(200), messages.next()).await
            {
                Ok(next) => next,
                Err(_) => {
                    if !opts.follow && quiet_since.elapsed() >= opts.idle {
                        break;
                    }
                    continue;
                }
            };
            let Some(message) = next else { break };
            let message = match message {
                Ok(message) => message,
                Err(e) if opts.follow => {
                    if !each(StreamItem::Waiting(format!("reading {filter}: {e}"))) {
                        return Ok(read);
                    }
                    continue;
                }
                Err(e) => return Err(nats_error(&format!("reading {filter}"), e)),
            };
            quiet_since = std::time::Instant::now();
            let stream_seq = message
                .info()
                .map(|i| i.stream_sequence)
                .map_err(|e| nats_error("reading a message's stream sequence", e))?;
            if stream_seq <= last {
                // Delivered again by a consumer made after a reconnection.
                continue;
            }
            last = stream_seq;
            read += 1;
            let subject = message.subject.to_string();
            let items = checker
                .check(
                    &stream,
                    &opts.relay.subject_prefix,
                    &subject,
                    stream_seq,
                    &message.payload,
                )
                .await?;
            for item in items {
                if !each(item) {
                    return Ok(read);
                }
            }
        }
        Ok(read)
    })
}

/// An ordered consumer of `filter` from the message after stream sequence
/// `last` (from the start for 0), and its messages.
async fn ordered_after(
    stream: &jetstream::stream::Stream,
    filter: &str,
    last: u64,
) -> Result<jetstream::consumer::pull::Ordered> {
    let deliver_policy = if last == 0 {
        jetstream::consumer::DeliverPolicy::All
    } else {
        jetstream::consumer::DeliverPolicy::ByStartSequence {
            start_sequence: last + 1,
        }
    };
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::OrderedConfig {
            filter_subject: filter.to_string(),
            deliver_policy,
            ..Default::default()
        })
        .await
        .map_err(|e| nats_error(&format!("reading {filter}"), e))?;
    consumer
        .messages()
        .await
        .map_err(|e| nats_error(&format!("reading {filter}"), e))
}

/// Where each aggregate read from the stream stands, and the catalogs read.
struct StreamChecker<'o> {
    oplog: &'o Oplog,
    cursors: HashMap<String, ChainCursor>,
    catalogs: HashMap<Vec<u8>, Arc<TypeCatalog>>,
}

impl<'o> StreamChecker<'o> {
    fn new(oplog: &'o Oplog) -> Self {
        StreamChecker {
            oplog,
            cursors: HashMap::new(),
            catalogs: HashMap::new(),
        }
    }

    /// The items one message gives: a finding, the entry, or both (an
    /// entry after a gap is still opened and handed over).
    async fn check(
        &mut self,
        stream: &jetstream::stream::Stream,
        prefix: &str,
        subject: &str,
        stream_seq: u64,
        payload: &[u8],
    ) -> Result<Vec<StreamItem>> {
        let unreadable = |reason: String| {
            vec![StreamItem::Finding(StreamFinding::Unreadable {
                subject: subject.to_string(),
                stream_seq,
                reason,
            })]
        };
        let row = match WireEntry::parse(payload) {
            Ok(row) => row,
            Err(reason) => return Ok(unreadable(reason)),
        };
        if entry_subject(prefix, &row.aggregate_name) != subject {
            return Ok(unreadable(format!(
                "it holds aggregate {:?}, whose subject is another",
                row.aggregate_name
            )));
        }
        let (aggregate, seq) = (row.aggregate_name.clone(), row.seq);
        let mut items = Vec::new();
        let (expected, link) = match self.cursors.get_mut(&aggregate) {
            // A seq already read: duplicated or reordered. The cursor stays
            // where it is, so that the entries after it still check.
            Some(cursor) if seq < cursor.next_seq() => {
                items.push(StreamItem::Finding(StreamFinding::OutOfOrder {
                    aggregate,
                    expected: cursor.next_seq(),
                    seq,
                }));
                return Ok(items);
            }
            Some(cursor) => (cursor.next_seq(), cursor.step(&row)),
            None if seq <= 1 => {
                let mut cursor = ChainCursor::after(0, 0, GENESIS_CHAIN.to_vec());
                let link = cursor.step(&row);
                self.cursors.insert(aggregate.clone(), cursor);
                (1, link)
            }
            None => {
                // The first message of an aggregate whose start was
                // trimmed before it was relayed: its chain value is taken
                // as it is, and its successors are checked against it.
                self.cursors.insert(
                    aggregate.clone(),
                    ChainCursor::after(0, seq, row.chain.clone()),
                );
                (seq, Link::Follows)
            }
        };
        match link {
            Link::Follows => {}
            Link::AfterGap { missing } => items.push(StreamItem::Finding(StreamFinding::Gap {
                aggregate: aggregate.clone(),
                missing,
                seq,
            })),
            Link::Broken if seq < expected => {
                items.push(StreamItem::Finding(StreamFinding::OutOfOrder {
                    aggregate,
                    expected,
                    seq,
                }));
                return Ok(items);
            }
            Link::Broken => {
                items.push(StreamItem::Finding(StreamFinding::Altered {
                    aggregate,
                    seq,
                    reason: "its chain value does not follow from its predecessor's".into(),
                }));
                return Ok(items);
            }
            Link::BelowStart => {}
            Link::Unreadable(e) => {
                items.push(StreamItem::Finding(StreamFinding::Altered {
                    aggregate,
                    seq,
                    reason: e.to_string(),
                }));
                return Ok(items);
            }
        }
        let catalog = match self
            .catalog(stream, prefix, row.catalog.as_deref(), &row)
            .await
        {
            Ok(c) => c,
            Err(e) => {
                items.push(StreamItem::Finding(StreamFinding::Altered {
                    aggregate,
                    seq,
                    reason: e.to_string(),
                }));
                return Ok(items);
            }
        };
        match self
            .oplog
            .open_under(row, catalog, crate::source::write::SubjectKeys::Absent)
        {
            Ok(entry) => items.push(StreamItem::Entry {
                entry: Box::new(entry),
                stream_seq,
            }),
            Err(e) => items.push(StreamItem::Finding(StreamFinding::Altered {
                aggregate,
                seq,
                reason: e.to_string(),
            })),
        }
        Ok(items)
    }

    /// The catalog `digest` names: this oplog's own, or the one the stream
    /// holds under it (checked against the digest).
    async fn catalog(
        &mut self,
        stream: &jetstream::stream::Stream,
        prefix: &str,
        digest: Option<&[u8]>,
        row: &StoredRow,
    ) -> Result<Arc<TypeCatalog>> {
        let Some(digest) = digest else {
            return Ok(self.oplog.own_catalog());
        };
        if let Some(c) = self.catalogs.get(digest) {
            return Ok(c.clone());
        }
        let subject = catalog_subject(prefix, digest);
        let bytes = match stream.get_last_raw_message_by_subject(&subject).await {
            Ok(m) => Some(m.payload.to_vec()),
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => None,
            Err(e) => return Err(nats_error(&format!("reading {subject}"), e)),
        };
        let catalog = self
            .oplog
            .catalog_from_bytes(digest, bytes, || row_ref(row))?;
        self.catalogs.insert(digest.to_vec(), catalog.clone());
        Ok(catalog)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_in_nats_urls_are_redacted_for_messages() {
        assert_eq!(
            redacted_url("nats://u:pw@a:4222,nats://v:pw2@b:4222"),
            "nats://u:<redacted>@a:4222,nats://v:<redacted>@b:4222"
        );
        assert_eq!(redacted_url("tls://tok@a:4222"), "tls://<redacted>@a:4222");
        assert_eq!(redacted_url("nats://a:4222"), "nats://a:4222");
        assert_eq!(redacted_url("a:4222"), "a:4222");
    }

    #[test]
    fn subjects_keep_plain_names_and_escape_the_rest() {
        assert_eq!(entry_subject("oplog", "tenant-1_a"), "oplog.e.tenant-1_a");
        assert_eq!(entry_subject("p.q", "a.b *>~"), "p.q.e.a~2eb~20~2a~3e~7e");
        assert_eq!(entry_subject("oplog", "é"), "oplog.e.~c3~a9");
        // Different names, different subjects.
        assert_ne!(entry_subject("o", "a.b"), entry_subject("o", "a~2eb"));
    }

    #[test]
    fn a_message_round_trips_and_garbage_is_a_reason_not_a_panic() {
        let row = StoredRow {
            id: 7,
            entry_uuid: uuid::Uuid::new_v4().to_string(),
            aggregate_name: "a".into(),
            seq: 3,
            format: 1,
            key_id: "k1".into(),
            data: vec![1, 2, 3],
            digest: vec![4; 32],
            chain: vec![5; 32],
            created_us: 99,
            meta_keys: vec!["actor".into()],
            meta_values: vec!["bob".into()],
            catalog: Some(vec![6; 32]),
            subject: None,
            subject_wrapped: None,
        };
        let payload = serde_json::to_vec(&WireEntry::of(&row)).unwrap();
        let back = WireEntry::parse(&payload).unwrap();
        assert_eq!(
            (
                back.seq,
                back.data,
                back.chain,
                back.catalog,
                back.meta_values
            ),
            (
                3,
                vec![1, 2, 3],
                vec![5; 32],
                Some(vec![6; 32]),
                vec!["bob".to_string()]
            )
        );
        assert!(WireEntry::parse(b"{").is_err());
        let mut wrong = WireEntry::of(&row);
        wrong.data = "zz".into();
        assert!(WireEntry::parse(&serde_json::to_vec(&wrong).unwrap()).is_err());
    }

    #[test]
    fn bad_stream_names_and_prefixes_are_refused() {
        for (stream, prefix) in [("a.b", "oplog"), ("", "oplog"), ("S", "a..b"), ("S", "a.*")] {
            let opts = RelayOptions {
                stream: stream.into(),
                subject_prefix: prefix.into(),
                ..RelayOptions::default()
            };
            assert!(
                matches!(opts.check(), Err(Error::Config(_))),
                "{stream} {prefix}"
            );
        }
        assert!(RelayOptions::default().check().is_ok());
    }
}
