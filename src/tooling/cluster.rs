//! A private, throwaway PostgreSQL cluster, started from the server binaries
//! installed on the machine: what `oplog demo` and `oplog bench` run against
//! when no database URL is given.
//!
//! [`Cluster::start`] finds `initdb` and `postgres` ([`find_server_binaries`]:
//! `OPLOG_PG_BIN`, the `PATH`, then the usual distribution directories),
//! creates a cluster in a new directory under the temporary directory
//! (superuser `postgres`, trust authentication, listening on a free port of
//! 127.0.0.1 only, no Unix socket) and waits until it accepts connections.
//! Dropping the [`Cluster`] stops the server at once and removes the
//! directory; [`Cluster::keep`] stops it cleanly and keeps the directory.
//! With [`cleanup_on_signals`] installed, SIGINT and SIGTERM remove it too.
//!
//! `initdb` and `postgres` refuse to run as root. As root, the cluster
//! belongs to the `postgres` user (or `nobody` when there is none): its
//! directory is given to that user, and both programs are started through
//! `setpriv` (or `runuser`) as that user.
//!
//! ```no_run
//! use oplog::cluster::{Cluster, ClusterOptions};
//!
//! oplog::cluster::cleanup_on_signals()?;
//! let cluster = Cluster::start(&ClusterOptions::from_env())?;
//! let mut client = postgres::Client::connect(&cluster.url(), postgres::NoTls)?;
//! client.batch_execute("SELECT 1")?;
//! drop(cluster); // stops the server and removes its directory
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::Write as _;
use std::net::TcpListener;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::unistd::{geteuid, Gid, Uid, User};
use postgres::{Client, NoTls};

use crate::error::{Error, Result};
pub use crate::tooling::cleanup::cleanup_on_signals;
use crate::tooling::cleanup::{register, ClusterProcess, Registered, StopMode, Task};

/// Environment variable naming the directory that holds `initdb` and
/// `postgres`, read by [`ClusterOptions::from_env`].
pub const BIN_ENV: &str = "OPLOG_PG_BIN";

/// The superuser of an embedded cluster.
pub const SUPERUSER: &str = "postgres";

/// How long a new server gets to accept connections.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Ports tried before giving up when another process takes the chosen one.
const PORT_ATTEMPTS: u32 = 3;

/// Where to find the server binaries and where to put the cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterOptions {
    /// The directory holding `initdb` and `postgres`; searched for
    /// ([`find_server_binaries`]) when `None`.
    pub bin_dir: Option<PathBuf>,
    /// The directory in which the cluster's own directory is created; the
    /// system's temporary directory (`TMPDIR`) when `None`.
    pub parent_dir: Option<PathBuf>,
}

impl ClusterOptions {
    /// The defaults, with [`BIN_ENV`] as the binaries' directory when set.
    pub fn from_env() -> Self {
        ClusterOptions {
            bin_dir: std::env::var_os(BIN_ENV)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from),
            parent_dir: None,
        }
    }
}

/// Where the server binaries are, and their version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerBinaries {
    /// The directory holding `initdb`, `postgres` (and usually `pg_ctl`).
    pub dir: PathBuf,
    /// The version `postgres --version` reports, such as `15.8`.
    pub version: String,
}

fn is_executable(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

fn has_server(dir: &Path) -> bool {
    is_executable(&dir.join("initdb")) && is_executable(&dir.join("postgres"))
}

/// The subdirectories `<parent>/<prefix><version><suffix>`, newest version
/// first.
fn versioned(parent: &str, prefix: &str, suffix: &str) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(parent) else {
        return Vec::new();
    };
    let mut found: Vec<(Vec<u32>, PathBuf)> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let version = name.strip_prefix(prefix)?;
            let key = version
                .split(|c: char| !c.is_ascii_digit())
                .filter(|p| !p.is_empty())
                .filter_map(|p| p.parse().ok())
                .collect();
            Some((key, e.path().join(suffix)))
        })
        .collect();
    found.sort_by(|a, b| b.0.cmp(&a.0));
    found.into_iter().map(|(_, p)| p).collect()
}

/// The directories searched for the server binaries, in order: the `PATH`,
/// then Debian's and Ubuntu's `/usr/lib/postgresql/<version>/bin`, the
/// PGDG RPMs' `/usr/pgsql-<version>/bin`, a source build's
/// `/usr/local/pgsql/bin`, Homebrew and MacPorts (newest version first).
pub fn search_path() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.extend(versioned("/usr/lib/postgresql", "", "bin"));
    dirs.extend(versioned("/usr", "pgsql-", "bin"));
    dirs.push("/usr/local/pgsql/bin".into());
    for brew in ["/opt/homebrew/opt", "/usr/local/opt"] {
        dirs.extend(versioned(brew, "postgresql@", "bin"));
        dirs.push(Path::new(brew).join("postgresql/bin"));
    }
    dirs.push("/opt/homebrew/bin".into());
    dirs.extend(versioned("/opt/local/lib", "postgresql", "bin"));
    dirs
}

/// Finds `initdb` and `postgres`: in `dir` when given, else in the first
/// directory of [`search_path`] that has both.
pub fn find_server_binaries(dir: Option<&Path>) -> Result<ServerBinaries> {
    let found = match dir {
        Some(dir) => Some(dir.to_path_buf()).filter(|d| has_server(d)).ok_or_else(|| {
            Error::Cluster(format!(
                "no PostgreSQL server binaries (initdb and postgres) in {} ({BIN_ENV}); point it at the bin directory of a PostgreSQL server installation, or install one ({INSTALL_HINT}), or pass --database-url",
                dir.display()
            ))
        })?,
        None => search_path().into_iter().find(|d| has_server(d)).ok_or_else(|| {
            Error::Cluster(format!(
                "no PostgreSQL server binaries (initdb and postgres) found on PATH or under /usr/lib/postgresql/<version>/bin, /usr/pgsql-<version>/bin, /usr/local/pgsql/bin or Homebrew; install the server ({INSTALL_HINT}), set {BIN_ENV} to its bin directory, or pass --database-url"
            ))
        })?,
    };
    // Symbolic links (such as /usr/local/bin/postgres) lead to the real
    // installation, whose neighbouring files the server needs.
    let dir = fs::canonicalize(found.join("postgres"))
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .filter(|d| has_server(d))
        .unwrap_or(found);
    let out = Command::new(dir.join("postgres"))
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| {
            Error::Cluster(format!(
                "cannot run {}: {e}; check the installation",
                dir.join("postgres").display()
            ))
        })?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(ServerBinaries {
        version: parse_version(&text).unwrap_or_else(|| text.trim().to_string()),
        dir,
    })
}

const INSTALL_HINT: &str =
    "`apt-get install postgresql`, `dnf install postgresql-server` or `brew install postgresql`";

/// The version in `postgres --version`'s output, such as `15.8` in
/// `postgres (PostgreSQL) 15.8 (Debian 15.8-1)`.
fn parse_version(text: &str) -> Option<String> {
    let rest = text.split_once("(PostgreSQL)")?.1.trim();
    rest.split_whitespace().next().map(str::to_string)
}

/// Who runs initdb and the server.
#[derive(Debug, Clone)]
enum RunAs {
    /// This process's user (not root).
    Current,
    /// Another user, through a tool that switches to it.
    User {
        name: String,
        uid: Uid,
        gid: Gid,
        tool: Tool,
    },
}

#[derive(Debug, Clone)]
enum Tool {
    /// util-linux `setpriv`, which execs the program itself: the process we
    /// start is the server.
    Setpriv(PathBuf),
    /// util-linux `runuser`.
    Runuser(PathBuf),
}

fn find_tool(name: &str) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.extend(["/usr/bin", "/bin", "/usr/sbin", "/sbin"].map(PathBuf::from));
    dirs.into_iter()
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

impl RunAs {
    fn decide() -> Result<RunAs> {
        if !geteuid().is_root() {
            return Ok(RunAs::Current);
        }
        let user = [SUPERUSER, "nobody"]
            .iter()
            .find_map(|name| User::from_name(name).ok().flatten())
            .ok_or_else(|| {
                Error::Cluster(
                    "running as root, and there is no `postgres` or `nobody` user to run the server as (initdb and postgres refuse root); create one, run as another user, or pass --database-url".into(),
                )
            })?;
        let tool = find_tool("setpriv")
            .map(Tool::Setpriv)
            .or_else(|| find_tool("runuser").map(Tool::Runuser))
            .ok_or_else(|| {
                Error::Cluster(format!(
                    "running as root, and neither setpriv nor runuser is installed to run the server as {:?} (initdb and postgres refuse root); install util-linux, run as another user, or pass --database-url",
                    user.name
                ))
            })?;
        Ok(RunAs::User {
            name: user.name,
            uid: user.uid,
            gid: user.gid,
            tool,
        })
    }

    /// The words that run `program` as this user.
    fn words(&self, program: &Path) -> Vec<String> {
        let program = program.display().to_string();
        match self {
            RunAs::Current => vec![program],
            RunAs::User {
                uid,
                gid,
                tool: Tool::Setpriv(setpriv),
                ..
            } => vec![
                setpriv.display().to_string(),
                format!("--reuid={uid}"),
                format!("--regid={gid}"),
                "--clear-groups".into(),
                "--".into(),
                program,
            ],
            RunAs::User {
                name,
                tool: Tool::Runuser(runuser),
                ..
            } => vec![
                runuser.display().to_string(),
                "-u".into(),
                name.clone(),
                "--".into(),
                program,
            ],
        }
    }

    /// A command that runs `program` as this user, in its own process group
    /// (so that a Ctrl-C on the terminal reaches this process only, which
    /// then stops the server itself), with `log` as its output.
    fn command(&self, program: &Path, cwd: &Path, log: &File) -> Result<Command> {
        let words = self.words(program);
        let mut cmd = Command::new(&words[0]);
        cmd.args(&words[1..])
            .current_dir(cwd)
            .env_remove("PGDATA")
            .env("LC_ALL", "C")
            .stdin(Stdio::null())
            .stdout(
                log.try_clone()
                    .map_err(|e| io("cannot share the log file", e))?,
            )
            .stderr(
                log.try_clone()
                    .map_err(|e| io("cannot share the log file", e))?,
            )
            .process_group(0);
        Ok(cmd)
    }
}

fn io(context: &str, source: std::io::Error) -> Error {
    Error::Io {
        context: context.to_string(),
        source,
    }
}

/// A running private cluster. Dropping it stops the server at once and
/// removes its directory.
#[derive(Debug)]
pub struct Cluster {
    process: Registered,
    dir: PathBuf,
    data: PathBuf,
    port: u16,
    binaries: ServerBinaries,
    run_as: RunAs,
}

/// A cluster stopped and left on disk by [`Cluster::keep`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeptCluster {
    /// The cluster's directory: `data/` and `server.log`.
    pub dir: PathBuf,
    /// The data directory.
    pub data_dir: PathBuf,
    /// The URL of its `postgres` database once started again.
    pub url: String,
    /// A shell command that starts it again.
    pub start_command: String,
}

impl Cluster {
    /// Creates a cluster in a new directory and starts its server; returns
    /// once it accepts connections.
    pub fn start(options: &ClusterOptions) -> Result<Cluster> {
        let binaries = find_server_binaries(options.bin_dir.as_deref())?;
        let run_as = RunAs::decide()?;
        let parent = options
            .parent_dir
            .clone()
            .unwrap_or_else(std::env::temp_dir);
        let dir = parent.join(format!(
            "oplog-pg-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        ));
        DirBuilder::new().mode(0o700).create(&dir).map_err(|e| {
            Error::Cluster(format!(
                "cannot create the cluster directory {}: {e}; set TMPDIR to a writable directory",
                dir.display()
            ))
        })?;
        let data = dir.join("data");
        // From here on the directory is removed when `process` is dropped,
        // or by the signal handler.
        let process = register(Task::Cluster(ClusterProcess {
            dir: dir.clone(),
            data: data.clone(),
            child: None,
            server: false,
        }));
        let mut cluster = Cluster {
            process,
            dir,
            data,
            port: 0,
            binaries,
            run_as,
        };
        if let RunAs::User { uid, gid, .. } = &cluster.run_as {
            std::os::unix::fs::chown(&cluster.dir, Some(uid.as_raw()), Some(gid.as_raw()))
                .map_err(|e| io("cannot give the cluster directory to the server's user", e))?;
        }
        cluster.initdb()?;
        cluster.serve()?;
        Ok(cluster)
    }

    /// The URL of the cluster's `postgres` database, as its superuser.
    pub fn url(&self) -> String {
        format!("postgres://{SUPERUSER}@127.0.0.1:{}/postgres", self.port)
    }

    /// The port the server listens on, on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The cluster's directory, removed when the cluster is dropped.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The data directory, inside [`Cluster::dir`].
    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    /// The binaries the server runs from.
    pub fn binaries(&self) -> &ServerBinaries {
        &self.binaries
    }

    /// The operating-system user the server runs as, when it is not this
    /// process's.
    pub fn os_user(&self) -> Option<&str> {
        match &self.run_as {
            RunAs::Current => None,
            RunAs::User { name, .. } => Some(name),
        }
    }

    /// The process id of the postmaster, while it runs.
    pub fn postmaster_pid(&self) -> Option<u32> {
        let text = fs::read_to_string(self.data.join("postmaster.pid")).ok()?;
        text.lines().next()?.trim().parse().ok()
    }

    /// Stops the server at once and removes the directory (what dropping
    /// the cluster does).
    pub fn remove(self) {
        drop(self);
    }

    /// Stops the server cleanly and leaves the cluster on disk, with a
    /// command to start it again.
    pub fn keep(self) -> KeptCluster {
        let url = self.url();
        let program = if is_executable(&self.binaries.dir.join("pg_ctl")) {
            let mut words = self.run_as.words(&self.binaries.dir.join("pg_ctl"));
            words.extend([
                "-D".into(),
                self.data.display().to_string(),
                "-l".into(),
                self.dir.join("server.log").display().to_string(),
                "start".into(),
            ]);
            words
        } else {
            let mut words = self.run_as.words(&self.binaries.dir.join("postgres"));
            words.extend(["-D".into(), self.data.display().to_string()]);
            words
        };
        self.process.finish(|task| {
            if let Some(Task::Cluster(mut c)) = task {
                c.stop(StopMode::Fast);
            }
        });
        KeptCluster {
            url,
            start_command: program
                .iter()
                .map(|w| shell_quote(w))
                .collect::<Vec<_>>()
                .join(" "),
            dir: self.dir.clone(),
            data_dir: self.data.clone(),
        }
    }

    fn log(&self, name: &str) -> Result<File> {
        let path = self.dir.join(name);
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| io("cannot open the cluster's log file", e))?;
        // The server's user writes to it too when the cluster is started
        // again by hand.
        if let RunAs::User { uid, gid, .. } = &self.run_as {
            std::os::unix::fs::chown(&path, Some(uid.as_raw()), Some(gid.as_raw()))
                .map_err(|e| io("cannot give the cluster's log file to the server's user", e))?;
        }
        Ok(file)
    }

    /// The last lines of a log file, for an error message.
    fn tail(&self, name: &str) -> String {
        let text = fs::read_to_string(self.dir.join(name)).unwrap_or_default();
        let lines: Vec<&str> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        let important: Vec<&str> = lines
            .iter()
            .copied()
            .filter(|l| l.contains("FATAL") || l.contains("ERROR") || l.contains("error"))
            .collect();
        let pick = if important.is_empty() {
            &lines
        } else {
            &important
        };
        pick[pick.len().saturating_sub(2)..].join(" / ")
    }

    fn user_hint(&self) -> String {
        match &self.run_as {
            RunAs::Current => String::new(),
            RunAs::User { name, .. } => format!(
                "; the server runs as {name:?}, which must be able to reach {} (set TMPDIR elsewhere if not)",
                self.dir.display()
            ),
        }
    }

    /// Waits for the registered process to exit; `None` when a signal
    /// handler took the cluster over (the process is about to exit).
    fn wait_child(&self, deadline: Option<Instant>) -> Option<Option<std::process::ExitStatus>> {
        loop {
            let status = self.process.with(|task| match task {
                Task::Cluster(c) => match c.child.as_mut().map(|child| child.try_wait()) {
                    Some(Ok(Some(status))) => {
                        c.child = None;
                        Some(status)
                    }
                    Some(Ok(None)) => None,
                    Some(Err(_)) | None => {
                        // Lost track of the process: count it as failed.
                        c.child = None;
                        Some(std::os::unix::process::ExitStatusExt::from_raw(1 << 8))
                    }
                },
                Task::Database { .. } => None,
            })?;
            if status.is_some() || deadline.is_some_and(|d| Instant::now() >= d) {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn interrupted() -> Error {
        Error::Cluster("interrupted while starting the embedded cluster".into())
    }

    fn initdb(&mut self) -> Result<()> {
        let log = self.log("initdb.log")?;
        let mut cmd = self
            .run_as
            .command(&self.binaries.dir.join("initdb"), &self.dir, &log)?;
        cmd.arg("-D").arg(&self.data).args([
            "-U",
            SUPERUSER,
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
        ]);
        self.spawn(cmd, false, "initdb")?;
        let status = self.wait_child(None).ok_or_else(Self::interrupted)?;
        match status {
            Some(s) if s.success() => Ok(()),
            _ => Err(Error::Cluster(format!(
                "initdb failed: {}{}",
                self.tail("initdb.log"),
                self.user_hint()
            ))),
        }
    }

    fn spawn(&mut self, mut cmd: Command, server: bool, what: &str) -> Result<()> {
        let child = cmd.spawn().map_err(|e| {
            Error::Cluster(format!(
                "cannot start {what} from {}: {e}",
                self.binaries.dir.display()
            ))
        })?;
        let mut child = Some(child);
        self.process.with(|task| {
            if let Task::Cluster(c) = task {
                c.child = child.take();
                c.server = server;
            }
        });
        // A signal handler took the cluster over while the process started:
        // it removes the directory; the process must not outlive it.
        if let Some(mut orphan) = child {
            let _ = orphan.kill();
            let _ = orphan.wait();
            return Err(Self::interrupted());
        }
        Ok(())
    }

    /// Appends the server's settings to `postgresql.conf`; later lines win,
    /// so this also moves it to another port.
    fn configure(&self, port: u16) -> Result<()> {
        let mut conf = OpenOptions::new()
            .append(true)
            .open(self.data.join("postgresql.conf"))
            .map_err(|e| io("cannot configure the cluster", e))?;
        writeln!(
            conf,
            "\n# Added by oplog: a private cluster on 127.0.0.1 only; logical WAL so that\n# the follow benchmark can compare with built-in logical replication.\nlisten_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = ''\nwal_level = logical"
        )
        .map_err(|e| io("cannot configure the cluster", e))
    }

    /// Starts the server on a free port and waits until it accepts
    /// connections, trying another port if one is taken meanwhile.
    fn serve(&mut self) -> Result<()> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let port = free_port()?;
            self.configure(port)?;
            self.port = port;
            let log = self.log("server.log")?;
            let mut cmd =
                self.run_as
                    .command(&self.binaries.dir.join("postgres"), &self.dir, &log)?;
            cmd.arg("-D").arg(&self.data);
            self.spawn(cmd, true, "postgres")?;
            match self.wait_ready()? {
                Ready::Yes => return Ok(()),
                Ready::PortTaken if attempt < PORT_ATTEMPTS => {
                    // The server exits by itself when it cannot bind; make
                    // sure of it before starting another.
                    self.process.with(|task| {
                        if let Task::Cluster(c) = task {
                            c.stop(StopMode::Immediate);
                        }
                    });
                }
                Ready::PortTaken | Ready::Exited => {
                    return Err(Error::Cluster(format!(
                        "the embedded PostgreSQL server did not start: {}{}",
                        self.tail("server.log"),
                        self.user_hint()
                    )))
                }
            }
        }
    }

    fn wait_ready(&self) -> Result<Ready> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let data = fs::canonicalize(&self.data).unwrap_or_else(|_| self.data.clone());
        loop {
            let exited = self
                .wait_child(Some(Instant::now()))
                .ok_or_else(Self::interrupted)?;
            if exited.is_some() {
                let log = fs::read_to_string(self.dir.join("server.log")).unwrap_or_default();
                return Ok(
                    if log.contains("could not bind") || log.contains("in use") {
                        Ready::PortTaken
                    } else {
                        Ready::Exited
                    },
                );
            }
            if let Ok(mut client) = Client::connect(&self.url(), NoTls) {
                // Another server may have taken the port first: it is ours
                // only if it runs on our data directory.
                let theirs: Option<String> = client
                    .query_one("SELECT current_setting('data_directory')", &[])
                    .ok()
                    .map(|r| r.get(0));
                let ours = theirs
                    .map(|d| fs::canonicalize(&d).unwrap_or_else(|_| d.into()))
                    .is_some_and(|d| d == data);
                return Ok(if ours { Ready::Yes } else { Ready::PortTaken });
            }
            if Instant::now() >= deadline {
                return Err(Error::Cluster(format!(
                    "the embedded PostgreSQL server did not accept connections within {} s: {}",
                    READY_TIMEOUT.as_secs(),
                    self.tail("server.log")
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

enum Ready {
    Yes,
    PortTaken,
    Exited,
}

/// A port of 127.0.0.1 that nothing listens on right now.
fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .map_err(|e| io("cannot find a free port on 127.0.0.1", e))?;
    let port = listener
        .local_addr()
        .map_err(|e| io("cannot find a free port on 127.0.0.1", e))?
        .port();
    Ok(port)
}

/// `word` quoted for a POSIX shell when it needs it.
fn shell_quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:@%+,".contains(c));
    if plain {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_read_from_postgres_output() {
        assert_eq!(
            parse_version("postgres (PostgreSQL) 15.8 (Debian 15.8-1.pgdg120+1)\n").as_deref(),
            Some("15.8")
        );
        assert_eq!(
            parse_version("postgres (PostgreSQL) 17beta1").as_deref(),
            Some("17beta1")
        );
        assert_eq!(parse_version("something else"), None);
    }

    #[test]
    fn a_directory_without_the_server_is_refused_with_an_install_hint() {
        let empty =
            std::env::temp_dir().join(format!("oplog-empty-{}", uuid::Uuid::new_v4().simple()));
        fs::create_dir(&empty).unwrap();
        let err = find_server_binaries(Some(&empty)).unwrap_err().to_string();
        fs::remove_dir(&empty).unwrap();
        assert!(err.starts_with("no PostgreSQL server binaries"), "{err}");
        assert!(err.contains("apt-get install postgresql"), "{err}");
        assert!(!err.contains('\n'), "{err}");
    }

    #[test]
    fn newer_versions_come_first() {
        let parent =
            std::env::temp_dir().join(format!("oplog-versions-{}", uuid::Uuid::new_v4().simple()));
        for v in ["9.6", "15", "16", "10"] {
            fs::create_dir_all(parent.join(v)).unwrap();
        }
        let found = versioned(parent.to_str().unwrap(), "", "bin");
        fs::remove_dir_all(&parent).unwrap();
        let names: Vec<String> = found
            .iter()
            .map(|p| {
                p.parent()
                    .unwrap()
                    .file_name()
                    .unwrap()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        assert_eq!(names, ["16", "15", "10", "9.6"]);
    }

    #[test]
    fn shell_words_are_quoted_only_when_needed() {
        assert_eq!(
            shell_quote("/usr/lib/postgresql/15/bin/pg_ctl"),
            "/usr/lib/postgresql/15/bin/pg_ctl"
        );
        assert_eq!(shell_quote("--reuid=101"), "--reuid=101");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }
}
