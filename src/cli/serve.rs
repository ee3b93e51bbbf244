//! `oplog serve` and `oplog status`.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use oplog::{Database, Keyring};

use super::{Context, Failure, Output};
use crate::agent::config::{Config, JobKind, LogFormat};
use crate::agent::gather::{self, Local};
use crate::agent::http::{Response, Route, Server};
use crate::agent::serve::Agent;
use crate::agent::status::Status;
use crate::agent::{render, Shared};

/// Runs the agent of `config` until Ctrl-C or SIGTERM.
pub fn run(ctx: &Context, config: &Path, listen: Option<SocketAddr>) -> Result<(), Failure> {
    let config = Config::load(config).map_err(|e| Failure::msg(e.to_string()))?;
    let source = source(ctx, Some(&config))?;
    let keyring = match &config.source.key_file {
        Some(path) => {
            Some(Keyring::load(path).map_err(|e| Failure::msg(format!("[source] key_file: {e}")))?)
        }
        None => ctx.optional_keyring()?,
    };
    if keyring.is_none() {
        if let Some(what) = needs_keys(&config) {
            return Err(Failure::msg(format!(
                "{what} needs the keyring: set key_file in [source], --key-file or OPLOG_KEY_FILE"
            )));
        }
    }
    init_logs(&config.agent.log_format);
    let listen = listen.or(config.agent.listen);
    let agent = Agent::new(config, source.clone(), keyring);
    let stop = agent.stop_flag();
    ctrlc::set_handler(move || stop.store(true, Ordering::Relaxed))
        .map_err(|e| Failure::msg(format!("cannot install the Ctrl-C/SIGTERM handler: {e}")))?;
    let server = match listen {
        Some(addr) => {
            let route = router(source, agent.config(), Some((agent.id(), agent.shared())));
            let server = Server::start(addr, route)
                .map_err(|e| Failure::msg(format!("cannot listen on {addr}: {e}")))?;
            tracing::info!(addr = %server.local_addr(), "serving /, /status, /metrics and /healthz");
            Some(server)
        }
        None => None,
    };
    let result = agent.run();
    if let Some(server) = server {
        server.stop();
    }
    result.map_err(Failure::from)
}

/// The source: `[source] database_url` when the configuration gives one,
/// else `--database-url`.
fn source(ctx: &Context, config: Option<&Config>) -> Result<Database, Failure> {
    match config.and_then(|c| c.source.database_url.as_deref()) {
        Some(url) => {
            Database::parse(url).map_err(|e| Failure::msg(format!("[source] database_url: {e}")))
        }
        None => Ok(ctx.database()?.clone()),
    }
}

/// What among `config`'s workers and jobs reads entries, so needs the
/// keyring.
fn needs_keys(config: &Config) -> Option<String> {
    if let Some(f) = config.followers.first() {
        return Some(format!("follower {}", f.name));
    }
    if let Some(s) = config.subscriptions.first() {
        return Some(format!("subscription {}", s.name));
    }
    config
        .jobs
        .iter()
        .find(|j| matches!(j.kind, JobKind::Verify { .. } | JobKind::Rewrap { .. }))
        .map(|j| format!("job {}", j.name))
}

fn init_logs(format: &LogFormat) {
    use std::io::IsTerminal as _;
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false);
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// The HTTP routes: each request reads the source on a connection kept
/// between requests (opened again after a failure).
fn router(
    source: Database,
    config: Arc<Config>,
    local: Option<(uuid::Uuid, Arc<Shared>)>,
) -> Route {
    let client: Mutex<Option<postgres::Client>> = Mutex::new(None);
    Arc::new(move |path: &str| {
        if !matches!(path, "/" | "/status" | "/metrics" | "/healthz") {
            return None;
        }
        let status = {
            let Ok(mut slot) = client.lock() else {
                return Some(text(
                    500,
                    "the status connection's lock is poisoned\n".into(),
                ));
            };
            let gathered = (|| {
                if slot.is_none() {
                    *slot = Some(source.connect()?);
                }
                let c = slot
                    .as_mut()
                    .ok_or_else(|| oplog::Error::Config("no connection".into()))?;
                let local = local.as_ref().map(|(id, shared)| Local { id: *id, shared });
                gather::status(c, Some(&config), local.as_ref())
            })();
            match gathered {
                Ok(status) => status,
                Err(e) => {
                    *slot = None;
                    Status {
                        generated_at: gather::time(std::time::SystemTime::now()),
                        ready: false,
                        not_ready: vec![format!("cannot read the source: {e}")],
                        ..Status::default()
                    }
                }
            }
        };
        let response = match path {
            "/healthz" if status.ready => text(200, "ready\n".into()),
            "/healthz" => text(503, format!("not ready: {}\n", status.not_ready.join("; "))),
            "/status" => Response {
                status: if status.ready { 200 } else { 503 },
                content_type: "application/json",
                body: render::json(&status).into_bytes(),
            },
            "/metrics" => Response {
                status: 200,
                content_type: "text/plain; version=0.0.4; charset=utf-8",
                body: render::metrics(&status).into_bytes(),
            },
            _ => Response {
                status: 200,
                content_type: "text/html; charset=utf-8",
                body: render::page(&status).into_bytes(),
            },
        };
        tracing::info!(path = %path, status = response.status, "served");
        Some(response)
    })
}

fn text(status: u16, body: String) -> Response {
    Response {
        status,
        content_type: "text/plain; charset=utf-8",
        body: body.into_bytes(),
    }
}

/// `oplog status`: agents, what each holds, jobs and their last runs,
/// consumers with lag (and, with a configuration, workers and next due
/// times).
pub fn status(ctx: &Context, out: &mut Output, config: Option<&Path>) -> Result<(), Failure> {
    let config = match config {
        Some(path) => Some(Config::load(path).map_err(|e| Failure::msg(e.to_string()))?),
        None => None,
    };
    let mut c = source(ctx, config.as_ref())?.connect()?;
    let status = gather::status(&mut c, config.as_ref(), None)?;
    if out.json() {
        return out.json_line(&status);
    }
    out.line(format_args!("agents:"))?;
    for a in &status.agents {
        out.line(format_args!(
            "  {} ({} pid {}, {}) {}, heartbeat {:.1} s ago, holds: {}",
            a.name,
            a.host,
            a.pid,
            a.version,
            a.state,
            a.heartbeat_age_s,
            if a.holds.is_empty() {
                "nothing".into()
            } else {
                a.holds.join(", ")
            }
        ))?;
    }
    if !status.workers.is_empty() {
        out.line(format_args!("workers:"))?;
        for w in &status.workers {
            out.line(format_args!(
                "  {} {}: {}",
                w.kind,
                w.name,
                w.held_by
                    .as_deref()
                    .map_or("held by no agent".to_string(), |a| format!("held by {a}"))
            ))?;
        }
    }
    out.line(format_args!("jobs:"))?;
    for j in &status.jobs {
        let last = j.runs.first();
        out.line(format_args!(
            "  {} {} {}: last {}{}",
            j.name,
            j.kind,
            j.schedule,
            last.map_or("never run".to_string(), |r| format!(
                "{} (slot {})",
                r.state, r.expected_at
            )),
            j.next_due
                .as_deref()
                .map_or(String::new(), |n| format!(", next due {n}"))
        ))?;
        if let Some(r) = last.filter(|r| r.state == "failed") {
            out.line(format_args!("    {}", r.detail))?;
        }
    }
    out.line(format_args!("consumers:"))?;
    for c in &status.consumers {
        out.line(format_args!(
            "  {}: {} entries behind on {} aggregates, oldest {:.1} s{}{}",
            c.name,
            c.entries_behind,
            c.aggregates_behind,
            c.oldest_seconds,
            if c.parked > 0 {
                format!(", {} parked", c.parked)
            } else {
                String::new()
            },
            if c.stalled { ", stalled" } else { "" }
        ))?;
    }
    Ok(())
}
