//! Where a database is and how to reach it: [`Database`], the one value the
//! library takes wherever it opens connections itself (replay, follow,
//! verify, migrations, a replica [`Target`](crate::Target)), built from a
//! connection string or a `postgres::Config`, with its TLS settings.
//!
//! Connection strings are libpq's, in both forms (`postgres://` URLs and
//! `key=value` settings), with libpq's `sslmode` and `sslrootcert`. The
//! driver, rust-postgres, knows only three of the five modes and no root
//! certificates, so both settings are taken out here: the driver is told
//! whether to ask for TLS, and the certificate checks happen in the rustls
//! configuration (`tls`). Every other setting is the driver's, parsed by
//! the driver.

use std::borrow::Cow;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use postgres::config::Host;
use postgres::{Client, NoTls};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::error::{Error, Result};
use crate::store::tls;

/// How a connection uses TLS: libpq's `sslmode`, with libpq's meaning.
///
/// Without an `sslmode`, a connection string means [`SslMode::Prefer`], as
/// with libpq and `psql`: encrypted when the server offers TLS, without
/// checking who the server is. That stops passive listening only; on a
/// network you do not control, use [`SslMode::VerifyFull`] with the
/// certificate authority that signed the server's certificate.
///
/// TLS is never used over a Unix socket (PostgreSQL does not offer it
/// there, and the socket is local): a connection whose hosts are all
/// socket directories is made without TLS whatever the mode, as libpq does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SslMode {
    /// No TLS.
    Disable,
    /// TLS when the server offers it, plaintext when it does not; the
    /// certificate is not checked.
    #[default]
    Prefer,
    /// TLS or no connection. The certificate is not checked, unless a root
    /// certificate is given (`sslrootcert`, or `~/.postgresql/root.crt`
    /// exists): then it is checked as with [`SslMode::VerifyCa`], as libpq
    /// does.
    Require,
    /// TLS, and the server's certificate must chain to the root
    /// certificate; its host name is not checked.
    VerifyCa,
    /// TLS, the server's certificate must chain to the root certificate,
    /// and name the host connected to.
    VerifyFull,
}

impl SslMode {
    /// The mode as it is written in a connection string.
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    /// Reads a mode written as in a connection string.
    fn parse(value: &str) -> Result<SslMode> {
        Ok(match value {
            "disable" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            // libpq's "allow" tries plaintext first; the driver has no such
            // order.
            "allow" => {
                return Err(Error::Config(
                    "sslmode \"allow\" is not supported: use prefer (TLS when offered) or disable"
                        .into(),
                ))
            }
            other => {
                return Err(Error::Config(format!(
                "sslmode {other:?} is not one of disable, prefer, require, verify-ca, verify-full"
            )))
            }
        })
    }

    /// True when the server's certificate is checked at all.
    fn verifies(self) -> bool {
        matches!(self, SslMode::VerifyCa | SslMode::VerifyFull)
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which certificate authorities a server's certificate may chain to:
/// libpq's `sslrootcert`. Used by `verify-ca`, `verify-full` and `require`;
/// `prefer` never checks a certificate, since a server (or anyone between)
/// can answer that it has no TLS and get plaintext.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootCert {
    /// The certificates in a PEM file (`sslrootcert=/path/to/ca.pem`).
    File(PathBuf),
    /// The platform's trusted authorities (`sslrootcert=system`). Anyone
    /// can get a certificate from one of them for a name they control, so
    /// this needs [`SslMode::VerifyFull`], as in libpq.
    System,
}

impl RootCert {
    /// `sslrootcert`'s value: `system`, or a path.
    fn parse(value: &str) -> Result<RootCert> {
        match value {
            "" => Err(Error::Config(
                "sslrootcert is empty: give the path of a PEM file of CA certificates, or system"
                    .into(),
            )),
            "system" => Ok(RootCert::System),
            path => Ok(RootCert::File(PathBuf::from(path))),
        }
    }
}

/// The TLS half of a [`Database`] built from a `postgres::Config`: the mode
/// and, for the modes that check certificates, the root certificates.
///
/// ```
/// use oplog::{RootCert, SslMode, TlsOptions};
///
/// let tls = TlsOptions {
///     mode: SslMode::VerifyFull,
///     root_cert: Some(RootCert::File("/etc/ssl/certs/db-ca.pem".into())),
/// };
/// # let _ = tls;
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TlsOptions {
    /// How the connection uses TLS.
    pub mode: SslMode,
    /// The authorities the server's certificate must chain to. Without
    /// one, [`SslMode::VerifyCa`] and [`SslMode::VerifyFull`] read
    /// `~/.postgresql/root.crt`, as libpq does, and fail when it is
    /// missing.
    pub root_cert: Option<RootCert>,
}

/// A database to connect to: where it is, who to connect as, and how TLS is
/// used. Everything in the library that opens connections of its own
/// takes one ([`Replayer::connect`](crate::Replayer::connect),
/// [`Follower::new`](crate::Follower::new), [`verify()`](crate::verify()),
/// [`migrate_url`](crate::migrate_url),
/// [`Target::database`](crate::Target::database)); the functions that run
/// on the caller's connection take a client, which [`Database::connect`]
/// gives.
///
/// Build one from a connection string with [`Database::parse`] (or `from`,
/// which reports a bad string when connecting instead), or from a
/// `postgres::Config` and [`TlsOptions`] with [`Database::from_config`].
/// Cloning is cheap (the settings and the TLS configuration are shared).
/// `Debug` shows the hosts, user, database and TLS settings, never the
/// password, and no error the library returns contains it.
///
/// ```
/// use oplog::{Database, SslMode};
///
/// let db = Database::parse(
///     "postgres://app:secret@db.internal:5432/app?sslmode=require&application_name=replayer",
/// )?;
/// assert_eq!(db.ssl_mode(), SslMode::Require);
/// assert!(!format!("{db:?}").contains("secret"));
///
/// // The same in libpq's key=value form.
/// let db = Database::parse("host=db.internal user=app dbname=app sslmode=require")?;
/// assert_eq!(db.ssl_mode(), SslMode::Require);
/// # Ok::<(), oplog::Error>(())
/// ```
#[derive(Clone)]
pub struct Database {
    inner: Arc<Inner>,
}

enum Inner {
    Ready(Box<Ready>),
    /// A connection string that did not parse, kept for the first use.
    /// The message names the problem, never the string.
    Invalid(String),
}

struct Ready {
    /// The driver's settings, its TLS mode set from ours.
    config: postgres::Config,
    tls: TlsOptions,
    /// The rustls connector, when the driver is to ask for TLS.
    connector: Option<MakeRustlsConnect>,
    /// What libpq is given (diesel's connection for migrations).
    libpq: Libpq,
}

enum Libpq {
    /// The connection string as given: libpq reads `sslmode` and
    /// `sslrootcert` itself.
    Text(String),
    /// Built from a `postgres::Config`: rendered when needed.
    Config,
}

impl Database {
    /// A database from a connection string: a `postgres://` (or
    /// `postgresql://`) URL, or libpq's `key=value` settings, with libpq's
    /// `sslmode` and `sslrootcert` (see [`SslMode`] and [`RootCert`]).
    ///
    /// Fails with [`Error::Config`] on a string of another database's
    /// kind, an unknown `sslmode`, a root certificate file that cannot be
    /// read or holds no certificate, or `sslrootcert=system` with a mode
    /// weaker than `verify-full`; and with the driver's error on anything
    /// else it cannot parse.
    pub fn parse(url: &str) -> Result<Database> {
        Ready::parse(url).map(Database::ready)
    }

    /// A database from the driver's own settings and TLS options. The
    /// `postgres::Config`'s own `ssl_mode` is replaced by `tls.mode`.
    ///
    /// ```
    /// use oplog::{Database, RootCert, SslMode, TlsOptions};
    ///
    /// let mut config = postgres::Config::new();
    /// config.host("db.internal").user("app").dbname("app");
    /// let db = Database::from_config(config, TlsOptions { mode: SslMode::Require, root_cert: None })?;
    /// assert_eq!(db.ssl_mode(), SslMode::Require);
    /// # Ok::<(), oplog::Error>(())
    /// ```
    pub fn from_config(config: postgres::Config, tls: TlsOptions) -> Result<Database> {
        Ready::new(config, tls, Libpq::Config).map(Database::ready)
    }

    fn ready(ready: Ready) -> Database {
        Database {
            inner: Arc::new(Inner::Ready(Box::new(ready))),
        }
    }

    /// A database that reports `built`'s error when used, for the
    /// infallible conversions.
    fn or_invalid(built: Result<Ready>) -> Database {
        match built {
            Ok(ready) => Database::ready(ready),
            Err(e) => Database {
                inner: Arc::new(Inner::Invalid(match e {
                    Error::Config(message) => message,
                    other => other.to_string(),
                })),
            },
        }
    }

    fn get(&self) -> Result<&Ready> {
        match &*self.inner {
            Inner::Ready(ready) => Ok(ready),
            Inner::Invalid(message) => Err(Error::Config(message.clone())),
        }
    }

    /// Checks the settings: `Ok` for a database built with
    /// [`Database::parse`] or [`Database::from_config`], and for one built
    /// with `from` the error its connection string would give when
    /// connecting.
    pub fn check(&self) -> Result<()> {
        self.get().map(|_| ())
    }

    /// Opens a connection, with TLS as the settings ask.
    ///
    /// A TLS failure (the server refuses TLS under `require` or stricter,
    /// its certificate does not chain to the root certificate, or does not
    /// name the host) is an [`Error::Tls`] naming the host and what
    /// failed.
    ///
    /// ```no_run
    /// let db = oplog::Database::parse("postgres://postgres@db.internal/app?sslmode=verify-full&sslrootcert=ca.pem")?;
    /// let mut client = db.connect()?;
    /// let heads = oplog::heads(&mut client, None)?;
    /// # Ok::<(), oplog::Error>(())
    /// ```
    pub fn connect(&self) -> Result<Client> {
        let ready = self.get()?;
        let connected = match &ready.connector {
            Some(connector) => ready.config.connect(connector.clone()),
            None => ready.config.connect(NoTls),
        };
        connected.map_err(|e| tls::connect_error(e, &ready.config, ready.tls.mode))
    }

    /// The TLS mode, [`SslMode::Prefer`] when the string gave none (and
    /// for a string that did not parse).
    pub fn ssl_mode(&self) -> SslMode {
        self.get().map_or(SslMode::default(), |r| r.tls.mode)
    }

    /// The connection string for libpq, for diesel's `PgConnection` (which
    /// reads `sslmode` and `sslrootcert` itself): the string as given, or,
    /// for a database built from a `postgres::Config`, libpq's `key=value`
    /// form of its settings. The password is in it: do not log it.
    pub fn libpq_conninfo(&self) -> Result<Cow<'_, str>> {
        let ready = self.get()?;
        Ok(match &ready.libpq {
            Libpq::Text(text) => Cow::Borrowed(text),
            Libpq::Config => Cow::Owned(libpq_conninfo(&ready.config, &ready.tls)),
        })
    }
}

impl Ready {
    fn parse(url: &str) -> Result<Ready> {
        check_url(url)?;
        let split = split_tls_settings(url)?;
        let config: postgres::Config = split.driver.parse()?;
        let root_cert = split
            .sslrootcert
            .as_deref()
            .map(RootCert::parse)
            .transpose()?;
        let mode = mode(split.sslmode, root_cert.as_ref());
        Ready::new(
            config,
            TlsOptions { mode, root_cert },
            Libpq::Text(url.to_string()),
        )
    }

    fn new(mut config: postgres::Config, tls: TlsOptions, libpq: Libpq) -> Result<Ready> {
        if tls.root_cert == Some(RootCert::System) && tls.mode != SslMode::VerifyFull {
            return Err(Error::Config(format!(
                "sslrootcert=system needs sslmode=verify-full, not {}: anyone can get a \
                 certificate from a public authority for a host name they control",
                tls.mode
            )));
        }
        let only_sockets = !config.get_hosts().is_empty()
            && config.get_hostaddrs().is_empty()
            && config
                .get_hosts()
                .iter()
                .all(|h| !matches!(h, Host::Tcp(_)));
        let driver_mode = match tls.mode {
            _ if only_sockets => postgres::config::SslMode::Disable,
            SslMode::Disable => postgres::config::SslMode::Disable,
            SslMode::Prefer => postgres::config::SslMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
                postgres::config::SslMode::Require
            }
        };
        config.ssl_mode(driver_mode);
        let connector = match driver_mode {
            postgres::config::SslMode::Disable => None,
            _ => Some(tls::connector(&verification(&tls, default_root_cert())?)?),
        };
        Ok(Ready {
            config,
            tls,
            connector,
            libpq,
        })
    }
}

/// The mode a connection string means: its `sslmode`, else `verify-full`
/// with `sslrootcert=system` (libpq 16's rule), else `prefer`.
fn mode(sslmode: Option<SslMode>, root_cert: Option<&RootCert>) -> SslMode {
    match (sslmode, root_cert) {
        (Some(mode), _) => mode,
        (None, Some(RootCert::System)) => SslMode::VerifyFull,
        (None, _) => SslMode::Prefer,
    }
}

/// What the rustls configuration checks for `tls`: libpq's rules. A root
/// certificate is needed by the verifying modes, and used by `require`
/// when one is given or libpq's default file (`default_root`) exists.
fn verification(tls: &TlsOptions, default_root: Option<PathBuf>) -> Result<tls::Verify> {
    let roots = match (&tls.root_cert, tls.mode) {
        (_, SslMode::Disable | SslMode::Prefer) => None,
        (Some(RootCert::File(path)), _) => Some(tls::Roots::File(path.clone())),
        (Some(RootCert::System), _) => Some(tls::Roots::System),
        (None, mode) => match default_root {
            Some(path) if path.is_file() => Some(tls::Roots::File(path)),
            path if mode.verifies() => {
                return Err(Error::Config(format!(
                    "sslmode={mode} needs the certificate authority that signed the server's \
                     certificate: set sslrootcert to a PEM file of it (or to system for the \
                     platform's authorities); {} does not exist",
                    path.map_or_else(
                        || "~/.postgresql/root.crt".to_string(),
                        |p| p.display().to_string()
                    )
                )))
            }
            _ => None,
        },
    };
    Ok(match roots {
        None => tls::Verify::Nothing,
        Some(roots) => tls::Verify::Chain {
            roots,
            host_name: tls.mode == SslMode::VerifyFull,
        },
    })
}

/// libpq's default root certificate file, `~/.postgresql/root.crt`.
fn default_root_cert() -> Option<PathBuf> {
    let home = std::env::var_os("HOME")?;
    Some(Path::new(&home).join(".postgresql").join("root.crt"))
}

impl From<&str> for Database {
    /// [`Database::parse`], keeping a string that does not parse for
    /// [`Database::connect`] (and [`Database::check`]) to report.
    fn from(url: &str) -> Database {
        Database::or_invalid(Ready::parse(url))
    }
}

impl From<String> for Database {
    /// As `From<&str>`.
    fn from(url: String) -> Database {
        Database::from(url.as_str())
    }
}

impl From<&String> for Database {
    /// As `From<&str>`.
    fn from(url: &String) -> Database {
        Database::from(url.as_str())
    }
}

impl From<&Database> for Database {
    /// A clone: the settings are shared.
    fn from(db: &Database) -> Database {
        db.clone()
    }
}

impl From<postgres::Config> for Database {
    /// [`Database::from_config`] with the `Config`'s own `ssl_mode`
    /// (disable, prefer or require) and no root certificate; a problem is
    /// reported when connecting.
    fn from(config: postgres::Config) -> Database {
        let mode = match config.get_ssl_mode() {
            postgres::config::SslMode::Disable => SslMode::Disable,
            postgres::config::SslMode::Prefer => SslMode::Prefer,
            _ => SslMode::Require,
        };
        let tls = TlsOptions {
            mode,
            root_cert: None,
        };
        Database::or_invalid(Ready::new(config, tls, Libpq::Config))
    }
}

impl fmt::Debug for Database {
    /// Hosts, user, database and TLS settings: never the password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &*self.inner {
            Inner::Ready(ready) => f
                .debug_struct("Database")
                .field("hosts", &tls::hosts(&ready.config))
                .field("user", &ready.config.get_user())
                .field("dbname", &ready.config.get_dbname())
                .field("sslmode", &ready.tls.mode)
                .field("sslrootcert", &ready.tls.root_cert)
                .finish_non_exhaustive(),
            Inner::Invalid(message) => f.debug_tuple("Database::Invalid").field(message).finish(),
        }
    }
}

/// Checks that `url` is a PostgreSQL connection string: a `postgres://` or
/// `postgresql://` URL, or `key=value` settings. Any other scheme
/// (`mysql://`, `http://`) is refused with its name ([`Error::Config`])
/// instead of the driver's parse error ("unexpected EOF").
///
/// Only the scheme is checked here; [`Database::parse`] checks the rest.
///
/// ```
/// assert!(oplog::check_url("postgres://app@db.internal:5432/app").is_ok());
/// assert!(oplog::check_url("host=/run/postgresql user=app").is_ok());
/// let refused = oplog::check_url("mysql://root@db/app").unwrap_err();
/// assert!(refused.to_string().contains("\"mysql\" is not PostgreSQL's"));
/// ```
pub fn check_url(url: &str) -> Result<()> {
    match scheme(url) {
        None => Ok(()),
        Some(scheme) => match scheme.to_ascii_lowercase().as_str() {
            "postgres" | "postgresql" => Ok(()),
            other => Err(Error::Config(format!(
                "database URL scheme {other:?} is not PostgreSQL's: use postgres://USER@HOST:PORT/DATABASE"
            ))),
        },
    }
}

/// The scheme of a URL, or `None` for `key=value` settings (which may hold
/// "://" inside a value; a scheme is a plain word).
fn scheme(url: &str) -> Option<&str> {
    let (scheme, _) = url.split_once("://")?;
    scheme
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
        .then_some(scheme)
}

/// Connects to the database at `url` (a string, or a [`Database`]): the
/// same as [`Database::connect`].
///
/// ```no_run
/// let mut client = oplog::connect("postgres://postgres@127.0.0.1/app?sslmode=require")?;
/// let heads = oplog::heads(&mut client, None)?;
/// # Ok::<(), oplog::Error>(())
/// ```
pub fn connect(database: impl Into<Database>) -> Result<Client> {
    database.into().connect()
}

/// A connection string split into what the driver parses and the TLS
/// settings it does not know.
#[derive(Debug, PartialEq, Eq)]
struct Split {
    /// The string without `sslmode` and `sslrootcert`.
    driver: String,
    sslmode: Option<SslMode>,
    sslrootcert: Option<String>,
}

/// Takes `sslmode` and `sslrootcert` out of a connection string, reading it
/// as the driver does: a URL's query parameters (after the first `?` that
/// follows the credentials), or `key=value` pairs. When a key is given
/// twice, the last one counts, as in the driver.
fn split_tls_settings(url: &str) -> Result<Split> {
    match scheme(url) {
        Some(scheme) => split_url(url, scheme.len() + 3),
        None => split_key_values(url),
    }
}

fn split_url(url: &str, authority: usize) -> Result<Split> {
    // The driver takes the credentials up to the first '@' and only then
    // looks for the query, so a '?' in a password does not start it.
    let rest = &url[authority..];
    let after_credentials = rest.find('@').map_or(authority, |i| authority + i + 1);
    // The driver recognises the scheme in lowercase only.
    let mut driver = url[..authority].to_ascii_lowercase();
    let Some(query_at) = url[after_credentials..]
        .find('?')
        .map(|i| after_credentials + i)
    else {
        driver.push_str(&url[authority..]);
        return Ok(Split {
            driver,
            sslmode: None,
            sslrootcert: None,
        });
    };
    driver.push_str(&url[authority..query_at]);
    let mut sslmode = None;
    let mut sslrootcert = None;
    let mut kept: Vec<&str> = Vec::new();
    let mut query = &url[query_at + 1..];
    while !query.is_empty() {
        let (param, rest) = query.split_once('&').unwrap_or((query, ""));
        query = rest;
        // A parameter without '=' is the driver's to refuse.
        let Some((key, value)) = param.split_once('=') else {
            kept.push(param);
            continue;
        };
        match decode(key)?.as_ref() {
            "sslmode" => sslmode = Some(SslMode::parse(&decode(value)?)?),
            "sslrootcert" => sslrootcert = Some(decode(value)?.into_owned()),
            _ => kept.push(param),
        }
    }
    if !kept.is_empty() {
        driver.push('?');
        driver.push_str(&kept.join("&"));
    }
    Ok(Split {
        driver,
        sslmode,
        sslrootcert,
    })
}

fn decode(s: &str) -> Result<Cow<'_, str>> {
    percent_encoding::percent_decode_str(s)
        .decode_utf8()
        .map_err(|_| Error::Config("a connection URL parameter is not UTF-8 once decoded".into()))
}

/// `key=value` settings, read as libpq and the driver read them: keys
/// separated from values by `=` (spaces around it allowed), values plain
/// or in single quotes, a backslash escaping the next character. The
/// others are written back quoted, for the driver to parse.
fn split_key_values(s: &str) -> Result<Split> {
    let mut sslmode = None;
    let mut sslrootcert = None;
    let mut driver = String::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| !c.is_whitespace() && *c != '=') {
            key.push(c);
        }
        if key.is_empty() {
            break;
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next() != Some('=') {
            return Err(Error::Config(format!(
                "connection setting {key:?} has no value: write {key}=VALUE"
            )));
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            loop {
                match chars.next() {
                    Some('\'') => break,
                    Some('\\') => value.extend(chars.next()),
                    Some(c) => value.push(c),
                    // The value may be a password: say which key, not what.
                    None => {
                        return Err(Error::Config(format!(
                            "connection setting {key:?} has an unterminated quoted value"
                        )))
                    }
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                if c == '\\' {
                    value.extend(chars.next());
                } else {
                    value.push(c);
                }
            }
            if value.is_empty() {
                return Err(Error::Config(format!(
                    "connection setting {key:?} has no value: write {key}=VALUE, or {key}='' for an empty one"
                )));
            }
        }
        match key.as_str() {
            "sslmode" => sslmode = Some(SslMode::parse(&value)?),
            "sslrootcert" => sslrootcert = Some(value),
            _ => push_setting(&mut driver, &key, &value),
        }
    }
    Ok(Split {
        driver,
        sslmode,
        sslrootcert,
    })
}

/// Appends `key='value'` to `key=value` settings, the value quoted with
/// `\` and `'` escaped, as libpq and the driver read it.
fn push_setting(out: &mut String, key: &str, value: &str) {
    if !out.is_empty() {
        out.push(' ');
    }
    out.push_str(key);
    out.push('=');
    out.push('\'');
    for c in value.chars() {
        if matches!(c, '\\' | '\'') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('\'');
}

/// libpq's `key=value` form of a driver configuration and TLS options.
fn libpq_conninfo(config: &postgres::Config, tls: &TlsOptions) -> String {
    fn list<T: ToString>(items: &[T]) -> Option<String> {
        (!items.is_empty()).then(|| items.iter().map(T::to_string).collect::<Vec<_>>().join(","))
    }
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .map(|h| match h {
            Host::Tcp(name) => name.clone(),
            Host::Unix(path) => path.to_string_lossy().into_owned(),
        })
        .collect();
    let settings = [
        ("host", list(&hosts)),
        ("hostaddr", list(config.get_hostaddrs())),
        ("port", list(config.get_ports())),
        ("user", config.get_user().map(str::to_string)),
        (
            "password",
            config
                .get_password()
                .map(|p| String::from_utf8_lossy(p).into_owned()),
        ),
        ("dbname", config.get_dbname().map(str::to_string)),
        ("options", config.get_options().map(str::to_string)),
        (
            "application_name",
            config.get_application_name().map(str::to_string),
        ),
        // libpq counts whole seconds, and takes less than 2 as 2.
        (
            "connect_timeout",
            config
                .get_connect_timeout()
                .map(|t| t.as_secs().max(2).to_string()),
        ),
        ("sslmode", Some(tls.mode.as_str().to_string())),
        (
            "sslrootcert",
            tls.root_cert.as_ref().map(|root| match root {
                RootCert::File(path) => path.to_string_lossy().into_owned(),
                RootCert::System => "system".to_string(),
            }),
        ),
    ];
    let mut out = String::new();
    for (key, value) in settings {
        if let Some(value) = value {
            push_setting(&mut out, key, &value);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_postgres_urls_and_key_value_strings_pass() {
        for ok in [
            "postgres://u@h/db",
            "postgresql://u@h:5432/db?sslmode=disable",
            "POSTGRES://u@h/db",
            "host=127.0.0.1 user=postgres",
            "host=h options='-c x=a://b'",
        ] {
            assert!(check_url(ok).is_ok(), "{ok}");
            assert!(Database::parse(ok).is_ok(), "{ok}");
        }
        for bad in ["mysql://root@h/db", "http://h/", "redis://h"] {
            let e = check_url(bad).unwrap_err().to_string();
            assert!(e.contains("is not PostgreSQL's"), "{bad}: {e}");
            let e = Database::parse(bad).unwrap_err().to_string();
            assert!(e.contains("is not PostgreSQL's"), "{bad}: {e}");
        }
    }

    fn split(s: &str) -> Split {
        split_tls_settings(s).unwrap()
    }

    #[test]
    fn a_urls_tls_settings_are_taken_out_and_the_rest_kept() {
        assert_eq!(
            split("postgres://u:pw@h:5432/db?application_name=x&sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem&connect_timeout=3"),
            Split {
                driver: "postgres://u:pw@h:5432/db?application_name=x&connect_timeout=3".into(),
                sslmode: Some(SslMode::VerifyFull),
                sslrootcert: Some("/etc/ca.pem".into()),
            }
        );
        // Only TLS settings: no empty query is left behind.
        assert_eq!(
            split("postgresql://h/db?sslmode=require").driver,
            "postgresql://h/db"
        );
        // No query at all, and an upper-case scheme the driver would not
        // recognise.
        assert_eq!(
            split("POSTGRES://u@h/db"),
            Split {
                driver: "postgres://u@h/db".into(),
                sslmode: None,
                sslrootcert: None,
            }
        );
        // A '?' in the password does not start the query; the last of two
        // sslmodes counts.
        assert_eq!(
            split("postgres://u:p?sslmode=disable@h/db?sslmode=disable&sslmode=require"),
            Split {
                driver: "postgres://u:p?sslmode=disable@h/db".into(),
                sslmode: Some(SslMode::Require),
                sslrootcert: None,
            }
        );
        // Percent-encoded keys are keys too.
        assert_eq!(
            split("postgres://h/db?ssl%6Dode=verify-ca").sslmode,
            Some(SslMode::VerifyCa)
        );
    }

    #[test]
    fn key_value_tls_settings_are_taken_out_and_the_rest_quoted() {
        assert_eq!(
            split(
                r"host=h  user = app password='it\'s' sslmode = 'verify-full' sslrootcert=/etc/my\ ca.pem options='-c a=b'"
            ),
            Split {
                driver: r"host='h' user='app' password='it\'s' options='-c a=b'".into(),
                sslmode: Some(SslMode::VerifyFull),
                sslrootcert: Some("/etc/my ca.pem".into()),
            }
        );
        let s = split(r"host=h password='a\'b\\c' sslmode=disable");
        assert_eq!(s.driver, r"host='h' password='a\'b\\c'");
        assert_eq!(s.sslmode, Some(SslMode::Disable));
        // What the driver reads back is what was written.
        let config: postgres::Config = s.driver.parse().unwrap();
        assert_eq!(config.get_password(), Some(&br"a'b\c"[..]));
    }

    #[test]
    fn both_forms_give_the_driver_the_same_settings() {
        let url = Database::parse(
            "postgres://app:pw@db.internal:6432/app?sslmode=require&application_name=r",
        )
        .unwrap();
        let kv = Database::parse("host=db.internal port=6432 user=app password=pw dbname=app sslmode=require application_name=r").unwrap();
        for db in [&url, &kv] {
            let ready = db.get().unwrap();
            assert_eq!(ready.tls.mode, SslMode::Require);
            assert_eq!(
                ready.config.get_ssl_mode(),
                postgres::config::SslMode::Require
            );
            assert_eq!(ready.config.get_ports(), &[6432]);
            assert_eq!(ready.config.get_user(), Some("app"));
            assert_eq!(ready.config.get_dbname(), Some("app"));
            assert_eq!(ready.config.get_application_name(), Some("r"));
            assert_eq!(ready.config.get_password(), Some(&b"pw"[..]));
        }
    }

    #[test]
    fn without_sslmode_tls_is_preferred_as_in_libpq() {
        let db = Database::parse("postgres://h/db").unwrap();
        assert_eq!(db.ssl_mode(), SslMode::Prefer);
        let ready = db.get().unwrap();
        assert_eq!(
            ready.config.get_ssl_mode(),
            postgres::config::SslMode::Prefer
        );
        assert!(ready.connector.is_some());
        let off = Database::parse("host=h sslmode=disable").unwrap();
        assert_eq!(
            off.get().unwrap().config.get_ssl_mode(),
            postgres::config::SslMode::Disable
        );
        assert!(off.get().unwrap().connector.is_none());
    }

    #[test]
    fn unknown_sslmodes_are_refused_by_name_in_both_forms() {
        for s in [
            "postgres://h/db?sslmode=verify_full",
            "host=h sslmode=verify_full",
        ] {
            let e = Database::parse(s).unwrap_err();
            assert!(matches!(e, Error::Config(_)), "{e:?}");
            assert_eq!(
                e.to_string(),
                "invalid configuration: sslmode \"verify_full\" is not one of disable, prefer, require, verify-ca, verify-full"
            );
        }
        let e = Database::parse("host=h sslmode=allow")
            .unwrap_err()
            .to_string();
        assert!(e.contains("\"allow\" is not supported"), "{e}");
    }

    #[test]
    fn a_missing_root_certificate_file_is_named() {
        for s in [
            "postgres://h/db?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem",
            "host=h sslmode=verify-ca sslrootcert=/nonexistent/ca.pem",
        ] {
            let e = Database::parse(s).unwrap_err();
            assert!(matches!(e, Error::Config(_)), "{e:?}");
            let e = e.to_string();
            assert!(
                e.contains("/nonexistent/ca.pem") && e.contains("cannot read"),
                "{e}"
            );
        }
    }

    #[test]
    fn a_root_certificate_file_without_certificates_is_refused() {
        let path = std::env::temp_dir().join(format!("oplog-empty-ca-{}.pem", std::process::id()));
        std::fs::write(&path, "not a certificate\n").unwrap();
        let e = Database::parse(&format!(
            "host=h sslmode=verify-full sslrootcert={}",
            path.display()
        ))
        .unwrap_err()
        .to_string();
        std::fs::remove_file(&path).unwrap();
        assert!(e.contains("holds no PEM certificate"), "{e}");
    }

    #[test]
    fn verifying_without_any_root_certificate_says_what_to_set() {
        let missing = Some(PathBuf::from("/nonexistent/home/.postgresql/root.crt"));
        let options = |mode| TlsOptions {
            mode,
            root_cert: None,
        };
        let e = verification(&options(SslMode::VerifyFull), missing.clone())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("set sslrootcert")
                && e.contains("/nonexistent/home/.postgresql/root.crt does not exist"),
            "{e}"
        );
        // require without a root certificate encrypts without checking.
        assert!(matches!(
            verification(&options(SslMode::Require), missing),
            Ok(tls::Verify::Nothing)
        ));
    }

    #[test]
    fn require_checks_the_chain_when_libpqs_default_root_certificate_exists() {
        let dir =
            std::env::temp_dir().join(format!("oplog-root-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("root.crt");
        std::fs::write(&path, "").unwrap();
        let options = |mode| TlsOptions {
            mode,
            root_cert: None,
        };
        let require = verification(&options(SslMode::Require), Some(path.clone()));
        let prefer = verification(&options(SslMode::Prefer), Some(path.clone()));
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(
            matches!(&require, Ok(tls::Verify::Chain { roots: tls::Roots::File(p), host_name: false }) if *p == path),
            "{require:?}"
        );
        assert!(matches!(prefer, Ok(tls::Verify::Nothing)), "{prefer:?}");
    }

    #[test]
    fn system_roots_need_verify_full() {
        let e = Database::parse("host=h sslmode=verify-ca sslrootcert=system")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("sslrootcert=system needs sslmode=verify-full"),
            "{e}"
        );
        // Alone, it means verify-full, as in libpq 16; another root
        // certificate leaves the default alone.
        assert_eq!(mode(None, Some(&RootCert::System)), SslMode::VerifyFull);
        let file = RootCert::File("ca.pem".into());
        assert_eq!(mode(None, Some(&file)), SslMode::Prefer);
        assert_eq!(mode(Some(SslMode::Require), Some(&file)), SslMode::Require);
    }

    #[test]
    fn unix_sockets_never_ask_for_tls() {
        let db = Database::parse("host=/run/postgresql sslmode=require").unwrap();
        assert_eq!(
            db.get().unwrap().config.get_ssl_mode(),
            postgres::config::SslMode::Disable
        );
        assert_eq!(db.ssl_mode(), SslMode::Require);
    }

    #[test]
    fn passwords_stay_out_of_debug_and_errors() {
        let db = Database::parse("postgres://app:hunter2@h/db?sslmode=require").unwrap();
        let debug = format!("{db:?}");
        assert!(!debug.contains("hunter2"), "{debug}");
        assert!(
            debug.contains("Require") && debug.contains("\"app\""),
            "{debug}"
        );
        // A string that does not parse keeps its error, not its text.
        let bad = Database::from("postgres://app:hunter2@h/db?sslmode=bogus");
        let e = bad.check().unwrap_err().to_string();
        assert_eq!(
            e,
            Database::parse("postgres://app:hunter2@h/db?sslmode=bogus")
                .unwrap_err()
                .to_string()
        );
        assert!(e.contains("\"bogus\"") && !e.contains("hunter2"), "{e}");
        assert!(!format!("{bad:?}").contains("hunter2"));
        let e = Database::from("host=h password='hunter2")
            .check()
            .unwrap_err()
            .to_string();
        assert!(e.contains("\"password\"") && !e.contains("hunter2"), "{e}");
    }

    #[test]
    fn a_config_renders_for_libpq() {
        let mut config = postgres::Config::new();
        config
            .host("db.internal")
            .port(6432)
            .user("app")
            .password("it's")
            .dbname("app");
        let db = Database::from_config(
            config,
            TlsOptions {
                mode: SslMode::Require,
                root_cert: None,
            },
        )
        .unwrap();
        assert_eq!(
            db.libpq_conninfo().unwrap(),
            r"host='db.internal' port='6432' user='app' password='it\'s' dbname='app' sslmode='require'"
        );
        // A string is given to libpq as it was written.
        let url = "postgres://h/db?sslmode=require";
        assert_eq!(Database::parse(url).unwrap().libpq_conninfo().unwrap(), url);
    }
}
