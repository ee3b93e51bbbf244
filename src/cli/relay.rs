//! `oplog relay` and `oplog tail`: the log to NATS JetStream, and back.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use oplog::relay::{self, tail, NatsAuth, Relay, RelayOptions, StreamItem, TailOptions};
use oplog::LiveOptions;

use super::render::EntryView;
use super::{read_failure, with_hint, Context, Failure, Output};

/// Relays every entry to the stream, then (unless `once`) keeps relaying
/// new ones every `poll` until Ctrl-C or SIGTERM. While PostgreSQL or
/// NATS is down it says what it waits for on standard error and tries
/// again; with `once` the first failure ends it.
pub fn run(
    ctx: &Context,
    out: &mut Output,
    opts: RelayOptions,
    once: bool,
    poll: Duration,
) -> Result<(), Failure> {
    let stop = Arc::new(AtomicBool::new(false));
    if !once {
        let flag = stop.clone();
        ctrlc::set_handler(move || flag.store(true, Ordering::Relaxed))
            .map_err(|e| Failure::msg(format!("cannot install the Ctrl-C/SIGTERM handler: {e}")))?;
    }
    let started = Instant::now();
    let total = if once {
        let mut source = ctx.connect()?;
        let mut relay = Relay::connect(&mut source, opts.clone()).map_err(read_failure)?;
        relay.pass(&mut source).map_err(read_failure)?
    } else {
        let live = LiveOptions {
            poll_interval: poll,
            ..LiveOptions::default()
        };
        relay::run(
            ctx.database()?.clone(),
            opts.clone(),
            live,
            stop,
            &mut super::waiting_said("relay"),
        )
        .map_err(read_failure)?
    };
    if out.json() {
        return out.json_line(&serde_json::json!({
            "stream": opts.stream,
            "consumer": opts.consumer_name(),
            "entries": total.entries,
            "already_published": total.already_published,
            "catalogs": total.catalogs,
            "elapsed_s": started.elapsed().as_secs_f64(),
        }));
    }
    out.line(format_args!(
        "relayed {} entries to stream {} ({} already there), {} catalogs, in {:.1} s",
        total.entries,
        opts.stream,
        total.already_published,
        total.catalogs,
        started.elapsed().as_secs_f64()
    ))
}

/// NATS credentials as the command line (or a configuration file) names
/// them: a `.creds` file, or a token or a user's password read from a
/// file (so that no secret is in the process list).
pub fn nats_auth(
    creds: Option<std::path::PathBuf>,
    token_file: Option<&std::path::Path>,
    user: Option<String>,
    password_file: Option<&std::path::Path>,
) -> Result<NatsAuth, Failure> {
    let secret = |path: &std::path::Path, what: &str| {
        std::fs::read_to_string(path)
            .map(|s| s.trim_end_matches(['\r', '\n']).to_string())
            .map_err(|e| {
                Failure::msg(format!(
                    "cannot read the NATS {what} from {}: {e}",
                    path.display()
                ))
            })
    };
    Ok(if let Some(creds) = creds {
        NatsAuth::CredentialsFile(creds)
    } else if let Some(path) = token_file {
        NatsAuth::Token(secret(path, "token")?)
    } else if let (Some(user), Some(path)) = (user, password_file) {
        NatsAuth::UserPassword {
            user,
            password: secret(path, "password")?,
        }
    } else {
        NatsAuth::None
    })
}

/// Prints the stream's entries (as `log` does) and findings, in stream
/// order; exit status 1 when anything was found.
pub fn tail_run(ctx: &Context, out: &mut Output, opts: TailOptions) -> Result<(), Failure> {
    let oplog = super::reader(ctx.keyring()?);
    let mut found = 0u64;
    let mut failure = None;
    let mut first = true;
    tail(&oplog, &opts, |item| {
        let printed = match item {
            StreamItem::Entry { entry, .. } => EntryView::decode(&entry).and_then(|view| {
                if out.json() {
                    out.json_line(&view.json())
                } else {
                    if !first {
                        out.line(format_args!(""))?;
                    }
                    view.write_text(out)
                }
            }),
            StreamItem::Waiting(why) => {
                let _ = writeln!(std::io::stderr(), "oplog: tail: waiting for NATS ({why})");
                Ok(())
            }
            StreamItem::Finding(f) => {
                found += 1;
                if out.json() {
                    out.json_line(&f)
                } else if first {
                    out.line(format_args!("finding: {f}"))
                } else {
                    out.line(format_args!("\nfinding: {f}"))
                }
            }
        };
        first = false;
        match printed {
            Ok(()) => !out.closed(),
            Err(e) => {
                failure = Some(e);
                false
            }
        }
    })
    .map_err(|e| Failure::msg(with_hint(&e)))?;
    if let Some(e) = failure {
        return Err(e);
    }
    if found > 0 {
        return Err(Failure::Found);
    }
    Ok(())
}
