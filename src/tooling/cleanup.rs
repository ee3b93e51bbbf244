//! What must not outlive the process even when it is interrupted: the
//! embedded clusters it started and the databases it created.
//!
//! Each such resource registers a [`Task`] while it exists. Its owner runs
//! the task when it is done with the resource (in `Drop`, or on purpose),
//! and [`cleanup_on_signals`] runs every task still registered when SIGINT
//! or SIGTERM arrives, then exits. Tasks run while the registry's lock is
//! held, so a task that has started always finishes before the process
//! exits: an owner cleaning up when the signal arrives is waited for, and an
//! owner that reaches its cleanup after the signal handler has taken its
//! task finds nothing left to do.

use std::process::Child;
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;

use crate::error::{Error, Result};

/// Exit status after an interruption: 128 + SIGINT, as shells report it.
const EXIT_INTERRUPTED: i32 = 130;

/// How long a server gets to stop before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// Something to undo.
#[derive(Debug)]
pub(crate) enum Task {
    /// A server's directory, and the process (initdb or the postmaster)
    /// running in it, if any.
    Cluster(ClusterProcess),
    /// A database created on a server that outlives the process.
    Database {
        /// Where to connect to drop it.
        admin_url: String,
        /// Its name, a plain identifier.
        name: String,
    },
}

/// A server directory and the process working in it.
#[derive(Debug)]
pub(crate) struct ClusterProcess {
    /// The directory holding everything: removed by [`ClusterProcess::remove`].
    pub dir: std::path::PathBuf,
    /// The data directory, where `postmaster.pid` is.
    pub data: std::path::PathBuf,
    /// The running process: initdb while the cluster is created, then the
    /// postmaster (or the tool that runs it as another user). It leads its
    /// own process group.
    pub child: Option<Child>,
    /// True when `child` is the server, false while it is initdb.
    pub server: bool,
}

/// How to stop a server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StopMode {
    /// SIGINT: disconnect clients, write a checkpoint, exit (`pg_ctl stop -m
    /// fast`), for a cluster that is kept.
    Fast,
    /// SIGQUIT: exit at once without a checkpoint (`pg_ctl stop -m
    /// immediate`), for a cluster that is removed.
    Immediate,
}

impl ClusterProcess {
    /// The postmaster's process id, from the first line of `postmaster.pid`.
    fn postmaster_pid(&self) -> Option<Pid> {
        let text = std::fs::read_to_string(self.data.join("postmaster.pid")).ok()?;
        let pid: i32 = text.lines().next()?.trim().parse().ok()?;
        (pid > 0).then(|| Pid::from_raw(pid))
    }

    /// Stops the process, if any, and waits until it has exited; kills its
    /// whole process group if it does not stop in time.
    pub fn stop(&mut self, mode: StopMode) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let group = i32::try_from(child.id()).ok().map(Pid::from_raw);
        let signal = match mode {
            StopMode::Fast => Signal::SIGINT,
            StopMode::Immediate => Signal::SIGQUIT,
        };
        let started = Instant::now();
        let mut signalled = false;
        loop {
            if !matches!(child.try_wait(), Ok(None)) {
                break;
            }
            if !signalled {
                // The postmaster writes its pid file first thing; until then
                // (or for initdb, which has none) the process group is
                // signalled, which reaches the process behind a wrapper.
                match self.postmaster_pid().filter(|_| self.server) {
                    Some(pid) => signalled = kill(pid, signal).is_ok(),
                    None if !self.server || started.elapsed() > Duration::from_millis(500) => {
                        if let Some(group) = group {
                            signalled = killpg(group, Signal::SIGKILL).is_ok();
                        }
                    }
                    None => {}
                }
            }
            if started.elapsed() > STOP_TIMEOUT {
                // Not reaped yet, so the group id is still this one's.
                if let Some(group) = group {
                    let _ = killpg(group, Signal::SIGKILL);
                }
                let _ = child.kill();
                let _ = child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // The postmaster reaps its backends before it exits, so nothing of
        // the group is left. (The group is not signalled after the child
        // is reaped: its id could belong to another process by then.)
    }

    /// Stops the process at once and removes the directory.
    pub fn remove(&mut self) {
        self.stop(StopMode::Immediate);
        for _ in 0..5 {
            match std::fs::remove_dir_all(&self.dir) {
                Ok(()) => return,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }
}

impl Task {
    /// Undoes the resource; never fails, since it runs where nobody can be
    /// told (in `Drop` or a signal handler), and does its best.
    fn run(self) {
        match self {
            Task::Cluster(mut c) => c.remove(),
            Task::Database { admin_url, name } => {
                let _ = drop_database(&admin_url, &name);
            }
        }
    }
}

/// Drops the database `name` (a plain identifier), ending any connections
/// to it first.
pub(crate) fn drop_database(admin_url: &str, name: &str) -> Result<()> {
    let mut admin = crate::store::connect::connect(admin_url)?;
    let quoted = crate::sql::ident(name);
    // FORCE (PostgreSQL 13 and later) ends connections a failed run may have
    // left behind; older servers take the plain form.
    admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {quoted} WITH (FORCE)"))
        .or_else(|_| admin.batch_execute(&format!("DROP DATABASE IF EXISTS {quoted}")))?;
    Ok(())
}

#[derive(Default)]
struct Registry {
    next: u64,
    tasks: Vec<(u64, Task)>,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
    next: 0,
    tasks: Vec::new(),
});

fn registry() -> MutexGuard<'static, Registry> {
    // A panic elsewhere while the lock was held leaves the tasks intact.
    REGISTRY.lock().unwrap_or_else(|e| e.into_inner())
}

/// A registered task: run when dropped, unless taken back.
#[derive(Debug)]
pub(crate) struct Registered(u64);

/// Registers `task`; it runs when the returned value is dropped, or on a
/// signal once [`cleanup_on_signals`] is installed.
pub(crate) fn register(task: Task) -> Registered {
    let mut r = registry();
    r.next += 1;
    let id = r.next;
    r.tasks.push((id, task));
    Registered(id)
}

impl Registered {
    /// Calls `f` with the task, under the registry's lock; `None` once the
    /// task has been run by a signal handler.
    pub fn with<T>(&self, f: impl FnOnce(&mut Task) -> T) -> Option<T> {
        let mut r = registry();
        r.tasks
            .iter_mut()
            .find(|(id, _)| *id == self.0)
            .map(|(_, task)| f(task))
    }

    /// Takes the task back without running it and calls `f` with it, still
    /// under the registry's lock, so that a signal arriving meanwhile waits
    /// for `f`.
    pub fn finish<T>(self, f: impl FnOnce(Option<Task>) -> T) -> T {
        let mut r = registry();
        let task = r
            .tasks
            .iter()
            .position(|(id, _)| *id == self.0)
            .map(|i| r.tasks.remove(i).1);
        std::mem::forget(self);
        f(task)
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        let mut r = registry();
        if let Some(i) = r.tasks.iter().position(|(id, _)| *id == self.0) {
            let (_, task) = r.tasks.remove(i);
            task.run();
        }
    }
}

/// Installs a handler for SIGINT, SIGTERM and SIGHUP (once per process; later calls
/// do nothing) that stops and removes every embedded cluster started by
/// [`Cluster::start`](crate::tooling::cluster::Cluster::start) and drops every
/// database the demo created, then exits with status 130.
///
/// Without it, an interrupted process leaves them behind: `Drop` does not
/// run when a signal ends a process.
pub fn cleanup_on_signals() -> Result<()> {
    static INSTALLED: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    INSTALLED
        .get_or_init(|| {
            ctrlc::set_handler(|| {
                let mut r = registry();
                // Newest first: databases before the cluster they live in.
                while let Some((_, task)) = r.tasks.pop() {
                    task.run();
                }
                std::process::exit(EXIT_INTERRUPTED);
            })
            .map_err(|e| e.to_string())
        })
        .clone()
        .map_err(|e| Error::Cluster(format!("cannot handle interrupt signals: {e}")))
}
