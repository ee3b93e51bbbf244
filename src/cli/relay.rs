//! `oplog relay` and `oplog tail`: the log to NATS JetStream, and back.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use oplog::relay::{tail, Relay, RelayOptions, RelayReport, StreamItem, TailOptions};

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
    let mut total = RelayReport::default();
    let mut relay: Option<(postgres::Client, Relay)> = None;
    let mut waiting = false;
    while !stop.load(Ordering::Relaxed) {
        let pass = (|| {
            if relay.is_none() {
                let mut source = ctx.connect()?;
                let r = Relay::connect(&mut source, opts.clone()).map_err(read_failure)?;
                relay = Some((source, r));
            }
            let (source, r) = relay.as_mut().expect("connected above");
            r.pass(source).map_err(read_failure)
        })();
        match pass {
            Ok(report) => {
                if waiting {
                    let _ = writeln!(std::io::stderr(), "oplog: relay: resumed");
                    waiting = false;
                }
                add(&mut total, &report);
                if once {
                    break;
                }
            }
            Err(failure) if once => return Err(failure),
            Err(failure) => {
                relay = None;
                let _ = writeln!(
                    std::io::stderr(),
                    "oplog: relay: waiting ({}); trying again in 1 s",
                    match &failure {
                        Failure::Error(m) => m.as_str(),
                        Failure::Found => "a check failed",
                    }
                );
                waiting = true;
                sleep_unless(&stop, Duration::from_secs(1));
                continue;
            }
        }
        sleep_unless(&stop, poll);
    }
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

fn add(total: &mut RelayReport, pass: &RelayReport) {
    total.entries += pass.entries;
    total.already_published += pass.already_published;
    total.catalogs += pass.catalogs;
    total.aggregates += pass.aggregates;
}

fn sleep_unless(stop: &AtomicBool, pause: Duration) {
    let until = Instant::now() + pause;
    while !stop.load(Ordering::Relaxed) && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(20).min(pause));
    }
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
