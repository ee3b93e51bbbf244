//! Presentation for the `oplog` binary: where connection settings come
//! from, how results are printed and how failures become one line on
//! standard error.

use std::fmt;
use std::io::{self, BufWriter, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use oplog::{Database, Keyring, Oplog, Target, TlsFailure, TypeCatalog};
use serde::Serialize;

pub mod bench;
pub mod consumers;
pub mod demo;
pub mod follow;
pub mod grant;
pub mod head;
pub mod keys;
pub mod log;
pub mod migrate;
pub mod relay;
mod render;
pub mod replay;
pub mod serve;
pub mod shred;
pub mod subscribe;
pub mod tree;
pub mod trim;
pub mod verify;

/// Exit status of a check that found problems.
const EXIT_FOUND: u8 = 1;

/// Exit status of a usage or runtime error.
const EXIT_ERROR: u8 = 2;

/// Why a command did not succeed.
#[derive(Debug)]
pub enum Failure {
    /// An error reported as `oplog: error: <message>`, exit status 2.
    Error(String),
    /// A check ran and found problems, which it has printed: exit status 1,
    /// nothing on standard error.
    Found,
}

impl Failure {
    /// What it says, in words.
    pub fn message(&self) -> String {
        match self {
            Failure::Error(m) => m.clone(),
            Failure::Found => "a check failed".into(),
        }
    }

    /// A failure with this message.
    pub fn msg(message: impl fmt::Display) -> Self {
        Failure::Error(message.to_string())
    }

    /// A command-line usage error from clap. clap renders several
    /// paragraphs (the error, tips, usage, a pointer to `--help`); the usage
    /// block is left out so the error fits on one line like every other.
    pub fn usage(e: &clap::Error) -> Self {
        let text = e.to_string();
        let mut parts: Vec<String> = text
            .split("\n\n")
            .map(|paragraph| paragraph.split_whitespace().collect::<Vec<_>>().join(" "))
            .filter(|p| {
                !p.is_empty() && !p.starts_with("Usage:") && !p.starts_with("For more information")
            })
            .collect();
        if let Some(first) = parts.first_mut() {
            if let Some(rest) = first.strip_prefix("error: ") {
                *first = rest.to_string();
            }
        }
        parts.push("see 'oplog --help'".to_string());
        Failure::Error(parts.join("; "))
    }
}

impl From<oplog::Error> for Failure {
    fn from(e: oplog::Error) -> Self {
        Failure::msg(with_hint(&e))
    }
}

/// `e`'s message, followed by what to do about it with this tool when there
/// is something to say. The library reports what happened in its own
/// terms; the commands and options that help are the binary's to name.
pub fn with_hint(e: &oplog::Error) -> String {
    match hint(e) {
        Some(hint) => format!("{e}; {hint}"),
        None => e.to_string(),
    }
}

/// The command-line hint for `e`, by its kind.
fn hint(e: &oplog::Error) -> Option<&'static str> {
    use oplog::Error;
    const VERIFY: &str = "run `oplog verify` to find every entry affected";
    match e {
        // Evidence of tampering or damage: verify reports all of it at once.
        Error::Decryption { .. }
        | Error::MalformedCiphertext { .. }
        | Error::ChainMismatch { .. }
        | Error::CorruptEntry { .. }
        | Error::StoredCatalog { .. } => Some(VERIFY),
        // A hole that trimming does not explain: entries were deleted.
        Error::Gap {
            missing,
            trimmed_through,
            ..
        } if trimmed_through.is_none_or(|t| t < *missing) => Some(VERIFY),
        Error::Divergence { .. } => Some(
            "compare the replica with its source with `oplog verify --against URL` to list every difference",
        ),
        Error::UnknownKey { .. } => Some("pass a key file that holds it with --key-file"),
        Error::RetriesExhausted { last, .. } => hint(last),
        Error::Tls { kind, .. } => Some(tls_hint(*kind)),
        _ => None,
    }
}

/// What to do about a TLS failure, by kind.
fn tls_hint(kind: TlsFailure) -> &'static str {
    match kind {
        TlsFailure::NotOffered => {
            "enable ssl on the server, or connect with sslmode=prefer or disable on a network you trust"
        }
        TlsFailure::UntrustedCertificate => {
            "set sslrootcert in the URL to a PEM file of the certificate authority that signed the server's certificate"
        }
        TlsFailure::WrongHostName => {
            "connect with a host name the certificate names (set hostaddr to keep the address), or use sslmode=verify-ca"
        }
        _ => "check the server's certificate and the URL's sslmode and sslrootcert",
    }
}

/// `e` from a query on the oplog's tables, with a hint when the tables are
/// missing: the usual cause is a database that was never migrated.
pub fn read_failure(e: oplog::Error) -> Failure {
    match e.sqlstate() {
        Some("42P01") => Failure::msg(format!(
            "{e}; run `oplog migrate` to create the oplog tables"
        )),
        _ => Failure::from(e),
    }
}

/// Prints `failure` (if there is anything to say) and returns the exit code.
pub fn report(failure: &Failure) -> ExitCode {
    match failure {
        Failure::Found => ExitCode::from(EXIT_FOUND),
        Failure::Error(message) => {
            let _ = writeln!(io::stderr().lock(), "oplog: error: {}", one_line(message));
            ExitCode::from(EXIT_ERROR)
        }
    }
}

/// Errors from PostgreSQL and libpq can span several lines (DETAIL, HINT);
/// one line keeps the output easy to log and grep.
pub fn one_line(message: &str) -> String {
    message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

/// A progress line on standard error, redrawn in place at most once per
/// interval, and only when standard error is a terminal (so that logs and
/// tests see nothing of it).
pub struct StatusLine {
    on: bool,
    every: std::time::Duration,
    last: std::time::Instant,
}

impl StatusLine {
    /// A line redrawn at most once per `every`, the first time `every` from now.
    pub fn new(every: std::time::Duration) -> Self {
        StatusLine {
            on: io::stderr().is_terminal(),
            every,
            last: std::time::Instant::now(),
        }
    }

    /// Redraws the line with `text()` when it is due.
    pub fn update(&mut self, text: impl FnOnce() -> String) {
        if self.on && self.last.elapsed() >= self.every {
            self.last = std::time::Instant::now();
            let _ = write!(io::stderr().lock(), "\r{}", text());
        }
    }

    /// Erases the line.
    pub fn clear(&mut self) {
        if self.on {
            let _ = write!(io::stderr().lock(), "\r\x1b[K");
        }
    }
}

/// Standard output, in text or JSON mode.
///
/// When the reader of standard output goes away (`oplog verify | head -1`),
/// writing stops silently and the command goes on: its exit status comes
/// from what it did and found, never from whether anyone read the report.
/// Listing commands may ask [`Output::closed`] and stop early.
pub struct Output {
    out: Sink,
    json: bool,
}

impl Output {
    /// Buffered standard output.
    pub fn stdout(json: bool) -> Self {
        Output {
            out: Sink {
                out: BufWriter::new(io::stdout().lock()),
                closed: false,
            },
            json,
        }
    }

    /// True when `--json` asked for JSON output.
    pub fn json(&self) -> bool {
        self.json
    }

    /// True once the reader of standard output has gone away: nothing
    /// written from then on reaches anyone.
    pub fn closed(&self) -> bool {
        self.out.closed
    }

    /// Writes one line of text.
    pub fn line(&mut self, args: fmt::Arguments<'_>) -> Result<(), Failure> {
        writeln!(self.out, "{args}").map_err(write_failure)
    }

    /// Writes `value` as one line of compact JSON.
    pub fn json_line(&mut self, value: &impl Serialize) -> Result<(), Failure> {
        serde_json::to_writer(&mut self.out, value).map_err(|e| match e.io_error_kind() {
            Some(kind) => write_failure(io::Error::from(kind)),
            None => Failure::msg(format!("cannot print JSON: {e}")),
        })?;
        writeln!(self.out).map_err(write_failure)
    }

    /// Writes text exactly as given.
    pub fn raw(&mut self, text: &str) -> Result<(), Failure> {
        self.out.write_all(text.as_bytes()).map_err(write_failure)
    }

    /// Flushes buffered output.
    pub fn flush(&mut self) -> Result<(), Failure> {
        self.out.flush().map_err(write_failure)
    }
}

/// Buffered standard output that turns quiet once its reader is gone: a
/// broken pipe is remembered, and every later write succeeds without
/// writing. Any other error stays an error.
struct Sink {
    out: BufWriter<io::StdoutLock<'static>>,
    closed: bool,
}

impl Sink {
    fn guard<T>(&mut self, quiet: T, result: io::Result<T>) -> io::Result<T> {
        match result {
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {
                self.closed = true;
                Ok(quiet)
            }
            other => other,
        }
    }
}

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.closed {
            return Ok(buf.len());
        }
        let result = self.out.write(buf);
        self.guard(buf.len(), result)
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.closed {
            return Ok(());
        }
        let result = self.out.flush();
        self.guard((), result)
    }
}

fn write_failure(e: io::Error) -> Failure {
    Failure::msg(format!("cannot write to standard output: {e}"))
}

/// The global options, resolved into what commands need when they need it:
/// a command that does not touch the database does not require its URL.
pub struct Context {
    database_url: Option<String>,
    /// The one [`Database`] every command connects to, built once from
    /// `--database-url`; a URL that does not parse is reported by the first
    /// command that needs it.
    database: Option<Database>,
    key_file: Option<PathBuf>,
}

impl Context {
    /// Settings from the command line (or their environment variables).
    pub fn new(database_url: Option<String>, key_file: Option<PathBuf>) -> Self {
        Context {
            database: database_url.as_deref().map(Database::from),
            database_url,
            key_file,
        }
    }

    /// The database of `--database-url`, which is required, with its TLS
    /// settings checked (`sslmode`, `sslrootcert`).
    pub fn database(&self) -> Result<&Database, Failure> {
        let database = self.database.as_ref().ok_or_else(no_database_url)?;
        database
            .check()
            .map_err(|e| Failure::msg(format!("--database-url: {e}")))?;
        Ok(database)
    }

    /// The database URL when one was given: commands that can run on a
    /// private cluster of their own take `None` as asking for one, and
    /// build their scratch databases' URLs from it. Everything else
    /// connects through [`Context::database`].
    pub fn optional_database_url(&self) -> Option<&str> {
        self.database_url.as_deref()
    }

    /// The keyring from the key file when one was given.
    pub fn optional_keyring(&self) -> Result<Option<Keyring>, Failure> {
        match self.key_file {
            Some(_) => self.keyring().map(Some),
            None => Ok(None),
        }
    }

    /// The key file path, which is required.
    pub fn key_file(&self) -> Result<&Path, Failure> {
        self.key_file
            .as_deref()
            .ok_or_else(|| Failure::msg("no key file: pass --key-file or set OPLOG_KEY_FILE"))
    }

    /// Loads the keyring from the key file.
    pub fn keyring(&self) -> Result<Keyring, Failure> {
        let path = self.key_file()?;
        Keyring::load(path).map_err(|e| match &e {
            oplog::Error::Io { source, .. } if source.kind() == io::ErrorKind::NotFound => {
                Failure::msg(format!(
                    "{e}; create one with `oplog keys generate --out {}`",
                    path.display()
                ))
            }
            _ => Failure::from(e),
        })
    }

    /// Connects to the database, with the TLS its URL asks for.
    pub fn connect(&self) -> Result<postgres::Client, Failure> {
        Ok(self.database()?.connect()?)
    }

    /// A connection and an oplog that reads with the key file's keyring. The
    /// keyring is loaded first so a key problem is reported without waiting
    /// for the database.
    pub fn open(&self) -> Result<(postgres::Client, Oplog), Failure> {
        let keyring = self.keyring()?;
        let client = self.connect()?;
        Ok((client, reader(keyring)))
    }
}

fn no_database_url() -> Failure {
    Failure::msg("no database URL: pass --database-url or set DATABASE_URL")
}

/// A replica database given by `flag` (`--into`, `--against`), its URL
/// checked now so that a mistake in it is reported before any work, naming
/// the flag.
pub fn replica(flag: &str, url: &str, suffix: String) -> Result<Target, Failure> {
    let database = Database::parse(url).map_err(|e| Failure::msg(format!("{flag}: {e}")))?;
    Ok(Target::database_with_suffix(database, suffix))
}

/// An oplog for reading any application's log: every entry names the type
/// catalog stored with it, so no types need to be compiled in, and none
/// are: the binary knows only the catalogs stored in the database, so the
/// tables it compares and replays are those of the log it reads, never the
/// demo's.
pub fn reader(keyring: Keyring) -> Oplog {
    Oplog::new(TypeCatalog::new(), keyring)
}

/// What a command following the log (`relay`, `subscribe`) says on
/// standard error about a lost connection: what failed and when it tries
/// again, then that it resumed.
pub fn waiting_said(command: &'static str) -> impl FnMut(&oplog::LiveEvent<'_>) + Send {
    let mut waiting = false;
    move |event| match event {
        oplog::LiveEvent::Reconnecting {
            error, retry_in, ..
        } => {
            waiting = true;
            let _ = writeln!(
                io::stderr(),
                "oplog: {command}: waiting ({error}); trying again in {:.1} s",
                retry_in.as_secs_f64()
            );
        }
        oplog::LiveEvent::CaughtUp if waiting => {
            waiting = false;
            let _ = writeln!(io::stderr(), "oplog: {command}: resumed");
        }
        _ => {}
    }
}

/// Opens an input file named on the command line, refusing anything that
/// is not a regular file. The open does not block (a FIFO with no writer
/// would hang it), and the check is made on the opened file, so the path
/// cannot be swapped between the check and the read. `what` names the
/// file in errors ("anchor file"); the caller bounds how much it reads.
pub fn open_input(path: &Path, what: &str) -> Result<std::fs::File, Failure> {
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    let cannot = |e: io::Error| Failure::msg(format!("cannot read {what} {}: {e}", path.display()));
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NONBLOCK)
        .open(path)
        .map_err(cannot)?;
    let kind = file.metadata().map_err(cannot)?.file_type();
    if kind.is_file() {
        return Ok(file);
    }
    let kind = if kind.is_fifo() {
        "a FIFO"
    } else if kind.is_char_device() {
        "a character device"
    } else if kind.is_block_device() {
        "a block device"
    } else if kind.is_socket() {
        "a socket"
    } else if kind.is_dir() {
        "a directory"
    } else {
        "a special file"
    };
    Err(Failure::msg(format!(
        "{what} {} is {kind}, not a regular file; pass the path of a file",
        path.display()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> oplog::EntryRef {
        oplog::EntryRef {
            id: Some(7),
            aggregate: "a".into(),
            seq: 4,
        }
    }

    fn gap(trimmed_through: Option<i64>) -> oplog::Error {
        oplog::Error::Gap {
            aggregate: "a".into(),
            missing: 4,
            found: None,
            trimmed_through,
        }
    }

    #[test]
    fn evidence_of_tampering_points_to_verify() {
        for e in [
            oplog::Error::Decryption { entry: entry() },
            oplog::Error::ChainMismatch { entry: entry() },
            gap(None),
            gap(Some(3)),
        ] {
            let message = with_hint(&e);
            assert_eq!(
                message,
                format!("{e}; run `oplog verify` to find every entry affected")
            );
        }
        // Entries trimmed away are no evidence of anything: the library's
        // message already says what to do.
        assert_eq!(with_hint(&gap(Some(4))), gap(Some(4)).to_string());
    }

    #[test]
    fn hints_name_the_option_or_command_that_helps() {
        let missing_key = oplog::Error::UnknownKey {
            key_id: "k1".into(),
            entry: Some(entry()),
        };
        assert!(with_hint(&missing_key).ends_with("with --key-file"));
        let diverged = oplog::Error::Divergence {
            entry: entry(),
            kind: oplog::DivergenceKind::DeleteMatchedNoRow,
            table: "users".into(),
            key: "(id=u1)".into(),
        };
        assert!(with_hint(&diverged).contains("`oplog verify --against URL`"));
        // Retries that ran out keep the hint of their last error.
        let exhausted = oplog::Error::RetriesExhausted {
            attempts: 3,
            last: Box::new(oplog::Error::Decryption { entry: entry() }),
        };
        assert!(with_hint(&exhausted).ends_with("run `oplog verify` to find every entry affected"));
        // Errors the command line cannot help with are left as they are.
        let config = oplog::Error::Config("trim batch must be at least 1".into());
        assert_eq!(with_hint(&config), config.to_string());
    }
}
