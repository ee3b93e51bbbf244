//! Cache invalidation across hosts through the log.
//!
//! Two "hosts" (two processes, this program started again with `host A`
//! and `host B`) each keep a cache of users and change users of their own.
//! Every change is a transaction with its oplog entry. A relay publishes the
//! log to NATS JetStream; each host reads the stream and drops the cached
//! users the *other* host changed, so no host keeps serving a stale value.
//! Each host exits once it has seen every change the other made, checked
//! in order per aggregate by the stream reader.
//!
//! ```text
//! DATABASE_URL=postgres://postgres@127.0.0.1/app NATS_URL=nats://127.0.0.1:4222 \
//!     cargo run --example invalidation
//! ```
//! Without DATABASE_URL it uses (and creates) the database
//! `oplog_example` on the local server; without NATS_URL,
//! nats://127.0.0.1:4222 (with JetStream).

use std::collections::HashSet;
use std::path::Path;
use std::process::{Command, ExitCode};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use oplog::demo::User;
use oplog::relay::{tail, Relay, RelayOptions, StreamItem, TailOptions};
use oplog::{Keyring, NewEntry, Oplog};

/// Changes each host makes.
const CHANGES: usize = 50;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let outcome = match args.get(1).map(String::as_str) {
        Some("host") => host(&args[2..]),
        _ => coordinate(),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("invalidation: {e}");
            ExitCode::FAILURE
        }
    }
}

type Failure = Box<dyn std::error::Error>;

/// Sets up the database, the keys and the relay, starts both hosts and
/// waits for them.
fn coordinate() -> Result<(), Failure> {
    let url = database_url()?;
    oplog::migrate_url(&url)?;
    postgres::Client::connect(&url, postgres::NoTls)?.batch_execute(oplog::demo::SCHEMA)?;
    let run = format!("{:08x}", std::process::id() ^ rand_bits());
    let dir = std::env::temp_dir().join(format!("oplog-invalidation-{run}"));
    std::fs::create_dir_all(&dir)?;
    let keys = dir.join("keys.json");
    Keyring::generate().save(&keys)?;
    let opts = RelayOptions {
        nats_url: nats_url(),
        stream: format!("INVALIDATION_{run}"),
        subject_prefix: format!("inval{run}"),
        aggregates: vec![format!("host-A-{run}"), format!("host-B-{run}")],
        ..RelayOptions::default()
    };

    // The relay runs beside the hosts until both are done.
    let mut source = postgres::Client::connect(&url, postgres::NoTls)?;
    let mut relay = Relay::connect(&mut source, opts.clone())?;
    let stop = AtomicBool::new(false);
    let result = std::thread::scope(|s| {
        let relaying = s.spawn(|| -> Result<u64, oplog::Error> {
            let mut relayed = 0;
            while !stop.load(Ordering::Relaxed) {
                relayed += relay.pass(&mut source)?.entries;
                std::thread::sleep(Duration::from_millis(10));
            }
            Ok(relayed + relay.pass(&mut source)?.entries)
        });
        let hosts: Vec<_> = ["A", "B"]
            .iter()
            .map(|name| {
                Command::new(std::env::current_exe()?)
                    .args(["host", name, &url, &run])
                    .arg(&keys)
                    .args([&opts.stream, &opts.subject_prefix])
                    .spawn()
            })
            .collect::<Result<_, _>>()?;
        let mut failed = Vec::new();
        for (name, mut child) in ["A", "B"].iter().zip(hosts) {
            if !child.wait()?.success() {
                failed.push(*name);
            }
        }
        stop.store(true, Ordering::Relaxed);
        let relayed = relaying.join().map_err(|_| "the relay thread panicked")??;
        if !failed.is_empty() {
            return Err(format!("host(s) {failed:?} failed").into());
        }
        println!(
            "invalidation: 2 hosts x {CHANGES} changes, {relayed} entries relayed; \
             each host dropped every user the other changed"
        );
        Ok::<_, Failure>(())
    });
    let _ = std::fs::remove_dir_all(&dir);
    let _ = oplog::relay::delete_stream(&opts);
    result
}

/// One host: changes its own users while dropping from its cache the
/// users the other host changes, as the stream reports them.
fn host(args: &[String]) -> Result<(), Failure> {
    let [name, url, run, keys, stream, prefix] = args else {
        return Err("usage: invalidation host NAME URL RUN KEYS STREAM PREFIX".into());
    };
    let log = Oplog::new(oplog::demo::user_catalog(), Keyring::load(Path::new(keys))?);
    let mine = format!("host-{name}-{run}");
    let other = format!("host-{}-{run}", if name == "A" { "B" } else { "A" });
    // The cache starts warm with every user either host will change.
    let mut cache: HashSet<String> = (0..CHANGES)
        .flat_map(|i| [format!("{mine}-u{i}"), format!("{other}-u{i}")])
        .collect();
    let opts = TailOptions {
        relay: RelayOptions {
            nats_url: nats_url(),
            stream: stream.clone(),
            subject_prefix: prefix.clone(),
            ..RelayOptions::default()
        },
        aggregate: Some(other.clone()),
        follow: true,
        idle: Duration::from_secs(1),
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    std::thread::scope(|s| {
        let writer = s.spawn(|| -> Result<(), oplog::Error> {
            let mut client = oplog::connect(&oplog::Database::parse(url)?)?;
            for i in 0..CHANGES {
                let user = User {
                    id: format!("{mine}-u{i}"),
                    tenant_id: mine.clone(),
                    account_id: "a1".into(),
                    email: format!("{mine}-u{i}@example.com"),
                    display_name: format!("User {i} of {name}"),
                    active: true,
                    ..Default::default()
                };
                let mut tx = client.transaction()?;
                tx.execute(oplog::demo::INSERT_USER, &user.params())?;
                let mut entry = NewEntry::new(&mine);
                entry.metadata("host", name.as_str()).create(&user)?;
                log.write(&mut tx, &entry)?;
                tx.commit()?;
            }
            Ok(())
        });
        // Each change of the other host's users drops them here.
        let mut seen = 0;
        let mut problem = None;
        tail(&log, &opts, |item| {
            match item {
                StreamItem::Entry { entry, .. } => {
                    for op in &entry.operations {
                        if let Ok(user) = op.decode::<User>() {
                            cache.remove(&user.id);
                        }
                    }
                    seen += 1;
                }
                StreamItem::Finding(f) => problem = Some(f.to_string()),
                StreamItem::Waiting(why) => eprintln!("host {name}: waiting for NATS ({why})"),
            }
            problem.is_none() && seen < CHANGES && Instant::now() < deadline
        })?;
        writer.join().map_err(|_| "the writer panicked")??;
        if let Some(problem) = problem {
            return Err(format!("host {name}: the stream is not the log: {problem}").into());
        }
        let stale = (0..CHANGES)
            .filter(|i| cache.contains(&format!("{other}-u{i}")))
            .count();
        if seen < CHANGES || stale > 0 {
            return Err(format!(
                "host {name}: saw {seen} of the other host's {CHANGES} changes; {stale} stale users cached"
            )
            .into());
        }
        println!("host {name}: dropped all {CHANGES} users that {other} changed");
        Ok(())
    })
}

fn nats_url() -> String {
    std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

fn rand_bits() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0)
}

fn database_url() -> Result<String, Failure> {
    if let Ok(url) = std::env::var("DATABASE_URL") {
        return Ok(url);
    }
    let mut admin = postgres::Client::connect(
        "postgres://postgres@127.0.0.1:5432/postgres",
        postgres::NoTls,
    )?;
    if admin
        .query_opt(
            "SELECT 1 FROM pg_database WHERE datname = 'oplog_example'",
            &[],
        )?
        .is_none()
    {
        admin.batch_execute("CREATE DATABASE oplog_example")?;
    }
    Ok("postgres://postgres@127.0.0.1:5432/oplog_example".into())
}
