//! Relaying the log to NATS JetStream and reading it back, against a real
//! nats-server with JetStream (NATS_URL, or 127.0.0.1:4222) and a real
//! PostgreSQL: each test has its own stream and subjects, deleted at the
//! end.

use std::collections::BTreeMap;

use oplog::relay::{tail, Relay, RelayOptions, StreamFinding, StreamItem, TailOptions};
use oplog::{Keyring, NewEntry, Oplog};

use crate::support::{create_users, superuser_exec, user, TestDb};

fn nats_url() -> String {
    std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

/// A stream of its own for one test, removed when dropped.
struct TestStream {
    opts: RelayOptions,
}

impl TestStream {
    fn new() -> TestStream {
        let id = uuid::Uuid::new_v4().simple().to_string();
        TestStream {
            opts: RelayOptions {
                nats_url: nats_url(),
                stream: format!("OPLOG_TEST_{}", &id[..12]),
                subject_prefix: format!("t{}", &id[..12]),
                ..RelayOptions::default()
            },
        }
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    /// The JetStream context and the stream.
    async fn stream(
        &self,
    ) -> (
        async_nats::jetstream::Context,
        async_nats::jetstream::stream::Stream,
    ) {
        let client = async_nats::connect(&self.opts.nats_url).await.unwrap();
        let js = async_nats::jetstream::new(client);
        let stream = js.get_stream(&self.opts.stream).await.unwrap();
        (js, stream)
    }

    /// Messages the stream holds on entry subjects: all of them but the
    /// one catalog the tests write with.
    fn entry_messages(&self) -> u64 {
        Self::runtime().block_on(async {
            let (_, mut stream) = self.stream().await;
            stream.info().await.unwrap().state.messages - 1
        })
    }

    /// Publishes `payload` on `subject` as anyone could, without the
    /// relay's headers.
    fn publish_raw(&self, subject: &str, payload: Vec<u8>) {
        Self::runtime().block_on(async {
            let (js, _) = self.stream().await;
            js.publish(subject.to_string(), payload.into())
                .await
                .unwrap()
                .await
                .unwrap();
        })
    }

    /// The payload of stream message `seq`.
    fn payload(&self, seq: u64) -> Vec<u8> {
        Self::runtime().block_on(async {
            let (_, stream) = self.stream().await;
            stream.get_raw_message(seq).await.unwrap().payload.to_vec()
        })
    }

    fn tail(&self, log: &Oplog) -> (BTreeMap<String, Vec<i64>>, Vec<StreamFinding>) {
        let mut seqs: BTreeMap<String, Vec<i64>> = BTreeMap::new();
        let mut findings = Vec::new();
        tail(
            log,
            &TailOptions {
                relay: self.opts.clone(),
                aggregate: None,
                follow: false,
                idle: std::time::Duration::from_millis(700),
            },
            |item| {
                match item {
                    StreamItem::Entry { entry, .. } => seqs
                        .entry(entry.aggregate.clone())
                        .or_default()
                        .push(entry.seq),
                    StreamItem::Finding(f) => findings.push(f),
                    StreamItem::Waiting(why) => panic!("not following, yet waiting: {why}"),
                }
                true
            },
        )
        .unwrap();
        (seqs, findings)
    }
}

impl Drop for TestStream {
    fn drop(&mut self) {
        let _ = oplog::relay::delete_stream(&self.opts);
    }
}

fn shared_key() -> String {
    Keyring::generate().to_json().to_string()
}

fn oplog_with(keys: &str) -> Oplog {
    Oplog::new(
        oplog::demo::user_catalog(),
        Keyring::from_json(keys).unwrap(),
    )
}

/// Four writers on four aggregates while the relay passes over and over,
/// then two readers of the stream: each sees every entry once, in seq
/// order per aggregate, every chain and authentication check passing; the
/// relay's consumer positions are where the log ends.
#[test]
fn writers_a_relay_and_two_readers_see_every_entry_once_in_order() {
    const WRITERS: usize = 4;
    const WRITES: usize = 40;
    let db = TestDb::new();
    let keys = shared_key();
    let log = oplog_with(&keys);
    let stream = TestStream::new();
    let mut source = db.client();
    let mut relay = Relay::connect(&mut source, stream.opts.clone()).unwrap();
    let done = std::sync::atomic::AtomicBool::new(false);
    let total = i64::try_from(WRITERS * WRITES).unwrap();
    let per_writer = i64::try_from(WRITES).unwrap();
    let relayed = std::thread::scope(|s| {
        for w in 0..WRITERS {
            let (url, log) = (db.url.clone(), &log);
            s.spawn(move || {
                for i in 0..WRITES {
                    create_users(&url, log, &format!("agg-{w}"), [format!("u{w}-{i}")]);
                }
            });
        }
        let watcher = s.spawn(|| {
            let mut relayed = 0;
            loop {
                let finished = done.load(std::sync::atomic::Ordering::SeqCst);
                relayed += relay.pass(&mut source).unwrap().entries;
                if finished {
                    return relayed;
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        });
        // The scope's writers end first; then one last pass.
        while db.scalar::<i64>("SELECT count(*) FROM oplog_entry") < total {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        watcher.join().unwrap()
    });
    assert_eq!(relayed, (WRITERS * WRITES) as u64);
    assert_eq!(stream.entry_messages(), (WRITERS * WRITES) as u64);
    for reader in [oplog_with(&keys), oplog_with(&keys)] {
        let (seqs, findings) = stream.tail(&reader);
        assert!(findings.is_empty(), "{findings:?}");
        assert_eq!(seqs.len(), WRITERS);
        for (aggregate, seqs) in seqs {
            assert_eq!(seqs, (1..=per_writer).collect::<Vec<_>>(), "{aggregate}");
        }
    }
    let lag = oplog::lag(&mut db.client(), &stream.opts.consumer_name()).unwrap();
    assert!(lag.iter().all(|l| l.entries == 0), "{lag:?}");
    let positions: i64 = db.scalar(&format!(
        "SELECT count(*) FROM oplog_consumer_position WHERE consumer = '{}' AND seq = {WRITES}",
        stream.opts.consumer_name()
    ));
    assert_eq!(positions, i64::try_from(WRITERS).unwrap());
}

/// A relay that starts again with its registered positions behind what it
/// published (it died between the stream's acknowledgement and its
/// report), and a second relay whose remembered places are stale: neither
/// duplicates nor skips an entry.
#[test]
fn relays_started_again_or_side_by_side_neither_duplicate_nor_skip() {
    let db = TestDb::new();
    let keys = shared_key();
    let log = oplog_with(&keys);
    let stream = TestStream::new();
    for a in ["a", "b"] {
        create_users(&db.url, &log, a, (0..15).map(|i| format!("{a}{i}")));
    }
    let mut source = db.client();
    let mut first = Relay::connect(&mut source, stream.opts.clone()).unwrap();
    assert_eq!(first.pass(&mut source).unwrap().entries, 30);
    // Died before reporting: the registry is behind the stream.
    superuser_exec(
        &db,
        "UPDATE oplog_consumer_position SET seq = 3 WHERE consumer LIKE 'relay.%'",
    );
    create_users(&db.url, &log, "a", (15..20).map(|i| format!("a{i}")));
    let mut second = Relay::connect(&mut source, stream.opts.clone()).unwrap();
    let report = second.pass(&mut source).unwrap();
    assert_eq!(report.entries, 5, "{report:?}");
    // The first relay still thinks "a" ends at 15 in the stream.
    create_users(&db.url, &log, "a", (20..23).map(|i| format!("a{i}")));
    create_users(&db.url, &log, "b", (15..17).map(|i| format!("b{i}")));
    let report = first.pass(&mut source).unwrap();
    assert_eq!(report.entries, 5, "{report:?}");
    assert!(report.already_published >= 1, "{report:?}");
    assert_eq!(second.pass(&mut source).unwrap().entries, 0);
    assert_eq!(stream.entry_messages(), 23 + 17);
    let (seqs, findings) = stream.tail(&oplog_with(&keys));
    assert!(findings.is_empty(), "{findings:?}");
    assert_eq!(seqs["a"], (1..=23).collect::<Vec<_>>());
    assert_eq!(seqs["b"], (1..=17).collect::<Vec<_>>());
}

/// Messages published on an aggregate's subject by someone else (a copy
/// of an earlier one, an altered ciphertext, something that is no entry)
/// are findings naming the aggregate and seq, and the relay refuses to
/// publish after a message that is not an entry of its log.
#[test]
fn forged_and_duplicated_messages_in_the_stream_are_findings() {
    let db = TestDb::new();
    let keys = shared_key();
    let log = oplog_with(&keys);
    let stream = TestStream::new();
    create_users(&db.url, &log, "acct", (0..4).map(|i| format!("u{i}")));
    let mut source = db.client();
    let mut relay = Relay::connect(&mut source, stream.opts.clone()).unwrap();
    relay.pass(&mut source).unwrap();
    let subject = oplog::relay::entry_subject(&stream.opts.subject_prefix, "acct");
    // Stream sequence 1 is the catalog, 2..=5 the entries.
    let second = stream.payload(3);
    stream.publish_raw(&subject, second.clone());
    let mut altered: serde_json::Value = serde_json::from_slice(&stream.payload(5)).unwrap();
    let data = altered["data"].as_str().unwrap().to_string();
    let flipped = if data.ends_with('0') { "1" } else { "0" };
    altered["data"] = format!("{}{flipped}", &data[..data.len() - 1]).into();
    altered["seq"] = 5.into();
    stream.publish_raw(&subject, serde_json::to_vec(&altered).unwrap());
    stream.publish_raw(&subject, b"not an entry".to_vec());

    let (seqs, findings) = stream.tail(&oplog_with(&keys));
    assert_eq!(seqs["acct"], [1, 2, 3, 4]);
    assert!(
        findings.iter().any(|f| matches!(f,
            StreamFinding::OutOfOrder { aggregate, seq: 2, expected: 5 } if aggregate == "acct")),
        "{findings:?}"
    );
    assert!(
        findings.iter().any(|f| matches!(f,
            StreamFinding::Altered { aggregate, seq: 5, .. } if aggregate == "acct")),
        "{findings:?}"
    );
    assert!(
        findings
            .iter()
            .any(|f| matches!(f, StreamFinding::Unreadable { .. })),
        "{findings:?}"
    );
    // The relay does not build on what it did not publish.
    create_users(&db.url, &log, "acct", ["u9".to_string()]);
    let err = Relay::connect(&mut source, stream.opts.clone())
        .unwrap()
        .pass(&mut source)
        .unwrap_err();
    assert!(err.to_string().contains("not the relay's"), "{err}");
    // Teardown: the stream goes, once.
    assert!(oplog::relay::delete_stream(&stream.opts).unwrap());
    assert!(!oplog::relay::delete_stream(&stream.opts).unwrap());
}

/// Entries under a data subject's key travel sealed: the stream carries no
/// subject key, so a reader with the keyring hands them over without
/// operations, checks their seq and chain all the same, and finds a
/// changed ciphertext.
#[test]
fn entries_of_a_data_subject_travel_sealed_and_stay_checked() {
    let db = TestDb::new();
    let keys = shared_key();
    let log = oplog_with(&keys);
    let stream = TestStream::new();
    let mut source = db.client();
    for id in ["s1", "s2"] {
        let mut tx = source.transaction().unwrap();
        let mut entry = NewEntry::new("acct");
        entry.subject("user-7").create(&user(id)).unwrap();
        log.write(&mut tx, &entry).unwrap();
        tx.commit().unwrap();
    }
    create_users(&db.url, &log, "acct", ["plain".to_string()]);
    let mut relay = Relay::connect(&mut source, stream.opts.clone()).unwrap();
    relay.pass(&mut source).unwrap();
    let payload = String::from_utf8(stream.payload(2)).unwrap();
    assert!(!payload.contains("user-7"), "{payload}");
    let mut operations = Vec::new();
    let mut findings = Vec::new();
    tail(
        &oplog_with(&keys),
        &TailOptions {
            relay: stream.opts.clone(),
            aggregate: None,
            follow: false,
            idle: std::time::Duration::from_millis(700),
        },
        |item| {
            match item {
                StreamItem::Entry { entry, .. } => {
                    operations.push((entry.seq, entry.format, entry.operations.len()))
                }
                StreamItem::Finding(f) => findings.push(f),
                StreamItem::Waiting(why) => panic!("not following, yet waiting: {why}"),
            }
            true
        },
    )
    .unwrap();
    assert!(findings.is_empty(), "{findings:?}");
    assert_eq!(operations, [(1, 2, 0), (2, 2, 0), (3, 1, 1)]);
    // A changed ciphertext of a sealed entry is a finding on the stream too:
    // its digest is over the ciphertext.
    let mut tx = source.transaction().unwrap();
    let mut entry = NewEntry::new("acct");
    entry.subject("user-7").create(&user("s3")).unwrap();
    log.write(&mut tx, &entry).unwrap();
    tx.commit().unwrap();
    superuser_exec(
        &db,
        "UPDATE oplog_entry SET data = data || '\\x00'::bytea WHERE aggregate_name = 'acct' AND seq = 4",
    );
    relay.pass(&mut source).unwrap();
    let (seqs, findings) = stream.tail(&oplog_with(&keys));
    assert_eq!(seqs["acct"], [1, 2, 3]);
    assert!(
        findings.iter().any(|f| matches!(f,
            StreamFinding::Altered { aggregate, seq: 4, reason } if aggregate == "acct"
                && reason.contains("does not match the ciphertext"))),
        "{findings:?}"
    );
}

/// `oplog relay` killed with SIGKILL at random moments while writers
/// write, and started again each time, then `oplog tail`: the stream
/// holds every entry exactly once, in order, and the tail finds nothing.
#[test]
fn the_relay_command_killed_at_random_moments_neither_duplicates_nor_skips() {
    use crate::cli::{oplog_cmd, success, TempDir};
    const WRITERS: usize = 3;
    const WRITES: usize = 60;
    let db = TestDb::new();
    let dir = TempDir::new();
    let keys = dir.join("keys.json");
    let keyring = Keyring::generate();
    keyring.save(&keys).unwrap();
    let log = Oplog::new(oplog::demo::user_catalog(), Keyring::load(&keys).unwrap());
    let stream = TestStream::new();
    let relay_args = |once: bool| {
        let mut cmd = oplog_cmd();
        cmd.args([
            "relay",
            "--nats",
            &stream.opts.nats_url,
            "--stream",
            &stream.opts.stream,
            "--subject-prefix",
            &stream.opts.subject_prefix,
            "--poll",
            "5ms",
            "--database-url",
            &db.url,
        ]);
        if once {
            cmd.arg("--once");
        }
        cmd
    };
    let kills =
        crate::support::kill_repeatedly_while_writing(&db, &log, (WRITERS, WRITES), "k", || {
            relay_args(false)
        });
    assert!(kills >= 2, "the relay was killed {kills} times");
    let out = success(&relay_args(true).output().unwrap());
    assert!(out.contains("relayed"), "{out}");
    let total = u64::try_from(WRITERS * WRITES).unwrap();
    assert_eq!(stream.entry_messages(), total);
    let tailed = oplog_cmd()
        .args([
            "tail",
            "--nats",
            &stream.opts.nats_url,
            "--stream",
            &stream.opts.stream,
            "--subject-prefix",
            &stream.opts.subject_prefix,
            "--json",
            "--key-file",
        ])
        .arg(&keys)
        .output()
        .unwrap();
    let lines = success(&tailed);
    let mut seqs: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for line in lines.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert!(v.get("finding").is_none(), "{line}");
        seqs.entry(v["aggregate"].as_str().unwrap().to_string())
            .or_default()
            .push(v["seq"].as_i64().unwrap());
    }
    assert_eq!(seqs.len(), WRITERS);
    for (aggregate, seqs) in seqs {
        assert_eq!(
            seqs,
            (1..=i64::try_from(WRITES).unwrap()).collect::<Vec<_>>(),
            "{aggregate}"
        );
    }
}

/// `oplog bench relay` runs end to end on scratch databases and streams
/// and reports its figures.
#[test]
fn the_relay_benchmark_runs_and_reports() {
    let out = crate::cli::oplog_cmd()
        .args([
            "bench",
            "relay",
            "--entries",
            "300",
            "--aggregates",
            "7",
            "--rate",
            "200",
            "--seconds",
            "0.5",
            "--json",
            "--nats",
            &nats_url(),
            "--database-url",
            &crate::support::admin_url(),
        ])
        .output()
        .unwrap();
    let report: serde_json::Value = serde_json::from_str(crate::cli::success(&out).trim()).unwrap();
    assert_eq!(report["entries"], 300);
    assert!(report["rate_per_s"].as_f64().unwrap() > 0.0, "{report}");
    // However slow a loaded machine makes the writer, the lag phase
    // measured what it wrote, through both paths.
    assert!(report["lag_entries"].as_u64().unwrap() >= 1, "{report}");
    assert!(
        report["follower_lag_p99_ms"].as_f64().unwrap() > 0.0,
        "{report}"
    );
}

/// A nats-server of the test's own, with JetStream, on a free port.
struct PrivateNats {
    port: u16,
    dir: crate::cli::TempDir,
    child: Option<std::process::Child>,
    args: Vec<String>,
}

impl PrivateNats {
    fn start() -> PrivateNats {
        PrivateNats::start_with(&[])
    }

    /// Started with these further arguments (credentials, say).
    fn start_with(args: &[&str]) -> PrivateNats {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut nats = PrivateNats {
            port,
            dir: crate::cli::TempDir::new(),
            child: None,
            args: args.iter().map(|a| a.to_string()).collect(),
        };
        nats.restart();
        nats
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Starts (again) on the same port and store, and waits until it
    /// answers.
    fn restart(&mut self) {
        let child = std::process::Command::new("nats-server")
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(self.dir.join("store"))
            .args(&self.args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("nats-server on PATH");
        self.child = Some(child);
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        panic!("the private nats-server did not start");
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for PrivateNats {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A stream reader that follows waits while NATS is down, says so, and
/// goes on where it was once NATS is back: every entry once, in order, no
/// finding.
#[test]
fn a_following_reader_waits_out_nats_going_away_and_goes_on_where_it_was() {
    let db = TestDb::new();
    let keys = shared_key();
    let log = oplog_with(&keys);
    let mut nats = PrivateNats::start();
    let opts = RelayOptions {
        nats_url: nats.url(),
        ..TestStream::new().opts.clone()
    };
    create_users(&db.url, &log, "acct", (0..5).map(|i| format!("u{i}")));
    let mut source = db.client();
    Relay::connect(&mut source, opts.clone())
        .unwrap()
        .pass(&mut source)
        .unwrap();
    let reader_log = oplog_with(&keys);
    let (seen, waited) = std::thread::scope(|s| {
        let reader = s.spawn(|| {
            let mut seqs = Vec::new();
            let mut waited = 0;
            tail(
                &reader_log,
                &TailOptions {
                    relay: opts.clone(),
                    aggregate: None,
                    follow: true,
                    idle: std::time::Duration::from_secs(1),
                },
                |item| {
                    match item {
                        StreamItem::Entry { entry, .. } => seqs.push(entry.seq),
                        StreamItem::Finding(f) => panic!("{f}"),
                        StreamItem::Waiting(_) => waited += 1,
                    }
                    seqs.len() < 10
                },
            )
            .unwrap();
            (seqs, waited)
        });
        // The reader has the first five; NATS goes away for a while.
        std::thread::sleep(std::time::Duration::from_millis(700));
        nats.kill();
        std::thread::sleep(std::time::Duration::from_secs(3));
        nats.restart();
        create_users(&db.url, &log, "acct", (5..10).map(|i| format!("u{i}")));
        let mut relay = None;
        for _ in 0..50 {
            match Relay::connect(&mut source, opts.clone()) {
                Ok(r) => {
                    relay = Some(r);
                    break;
                }
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(100)),
            }
        }
        relay.unwrap().pass(&mut source).unwrap();
        reader.join().unwrap()
    });
    assert_eq!(seen, (1..=10).collect::<Vec<_>>());
    assert!(waited >= 1, "the reader never said it was waiting");
}

/// The relay's live loop waits out NATS going away and its PostgreSQL
/// sessions being terminated, says what it waits for, and goes on: the
/// stream ends up with every entry once, in order.
#[test]
fn a_running_relay_waits_out_nats_and_postgres_going_away_and_goes_on() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};

    let db = TestDb::new();
    let keys = shared_key();
    let log = oplog_with(&keys).with_notify(true);
    let mut nats = PrivateNats::start();
    let opts = RelayOptions {
        nats_url: nats.url(),
        timeout: std::time::Duration::from_secs(2),
        ..TestStream::new().opts.clone()
    };
    create_users(&db.url, &log, "acct", (0..5).map(|i| format!("u{i}")));
    let stop = Arc::new(AtomicBool::new(false));
    let said: Mutex<Vec<String>> = Mutex::default();
    let relayed_through = |seq: i64| {
        crate::support::eventually(30, || {
            db.client()
                .query_opt(
                    "SELECT 1 FROM oplog_consumer_position \
                     WHERE consumer LIKE 'relay.%' AND aggregate_name = 'acct' AND seq >= $1",
                    &[&seq],
                )
                .unwrap()
                .is_some()
        })
    };
    let report = std::thread::scope(|s| {
        let running = s.spawn(|| {
            oplog::relay::run(
                db.url.as_str(),
                opts.clone(),
                oplog::LiveOptions {
                    poll_interval: std::time::Duration::from_millis(100),
                    max_backoff: std::time::Duration::from_millis(500),
                    ..oplog::LiveOptions::default()
                },
                stop.clone(),
                &mut |event| {
                    if let oplog::LiveEvent::Reconnecting { error, .. } = event {
                        said.lock().unwrap().push(error.to_string());
                    }
                },
            )
        });
        assert!(relayed_through(5));
        nats.kill();
        create_users(&db.url, &log, "acct", (5..10).map(|i| format!("u{i}")));
        assert!(crate::support::eventually(20, || !said
            .lock()
            .unwrap()
            .is_empty()));
        nats.restart();
        assert!(relayed_through(10));
        let mut client = db.client();
        client
            .execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE datname = current_database() AND pid <> pg_backend_pid()",
                &[],
            )
            .unwrap();
        create_users(&db.url, &log, "acct", (10..15).map(|i| format!("u{i}")));
        assert!(relayed_through(15));
        stop.store(true, Ordering::Relaxed);
        running.join().unwrap().unwrap()
    });
    let said = said.into_inner().unwrap();
    assert!(said.iter().any(|e| e.contains("NATS")), "{said:?}");
    assert!(said.iter().any(|e| !e.contains("NATS")), "{said:?}");
    assert_eq!(report.entries, 15, "{report:?}");
    let stream = TestStream { opts: opts.clone() };
    let (seqs, findings) = stream.tail(&oplog_with(&keys));
    assert!(findings.is_empty(), "{findings:?}");
    assert_eq!(seqs["acct"], (1..=15).collect::<Vec<_>>());
}

/// A NATS server that wants credentials: the relay without them, or with
/// a wrong password in the URL, is refused with an error that names the
/// server and never the secret; with them (library and command, user and
/// password or token read from a file) it relays.
#[test]
fn the_relay_authenticates_to_nats_and_never_shows_the_secret() {
    use oplog::relay::NatsAuth;

    let db = TestDb::new();
    let log = oplog_with(&shared_key());
    create_users(&db.url, &log, "acct", (0..3).map(|i| format!("u{i}")));
    let nats = PrivateNats::start_with(&["--user", "relay", "--pass", "s3cret-pw"]);
    let opts = RelayOptions {
        nats_url: nats.url(),
        timeout: std::time::Duration::from_secs(2),
        ..TestStream::new().opts.clone()
    };
    let mut source = db.client();
    let mut refused = |opts: RelayOptions| match Relay::connect(&mut source, opts) {
        Ok(_) => panic!("connected without the right credentials"),
        Err(e) => e.to_string(),
    };
    let without = refused(opts.clone());
    assert!(without.contains("connecting to NATS at"), "{without}");
    let in_url = RelayOptions {
        nats_url: format!("nats://relay:wrong-pw-in-url@127.0.0.1:{}", nats.port),
        ..opts.clone()
    };
    let wrong = refused(in_url.clone());
    assert!(!wrong.contains("wrong-pw-in-url"), "{wrong}");
    assert!(!format!("{in_url:?}").contains("wrong-pw-in-url"));
    let with = RelayOptions {
        auth: NatsAuth::UserPassword {
            user: "relay".into(),
            password: "s3cret-pw".into(),
        },
        ..opts.clone()
    };
    assert!(!format!("{with:?}").contains("s3cret-pw"));
    let mut relay = Relay::connect(&mut source, with).unwrap();
    assert_eq!(relay.pass(&mut source).unwrap().entries, 3);

    // The command, with the password and then a token read from files.
    let dir = crate::cli::TempDir::new();
    std::fs::write(dir.join("pw"), "s3cret-pw\n").unwrap();
    std::fs::write(dir.join("token"), "t0ken-value\n").unwrap();
    create_users(&db.url, &log, "acct", (3..5).map(|i| format!("u{i}")));
    let command = |url: &str, stream: &str, auth: &[&str]| {
        let mut cmd = crate::cli::oplog_cmd();
        cmd.args([
            "relay",
            "--once",
            "--nats",
            url,
            "--stream",
            stream,
            "--subject-prefix",
            &opts.subject_prefix,
            "--database-url",
            &db.url,
        ])
        .args(auth);
        cmd.output().unwrap()
    };
    let pw = dir.join("pw");
    let out = command(
        &nats.url(),
        &opts.stream,
        &[
            "--nats-user",
            "relay",
            "--nats-password-file",
            pw.to_str().unwrap(),
        ],
    );
    assert!(crate::cli::success(&out).contains("relayed 2 entries"));
    drop(nats);

    let nats = PrivateNats::start_with(&["--auth", "t0ken-value"]);
    let token = dir.join("token");
    // Another stream (and so another registered relay) on the new server.
    let stream = format!("{}_T", opts.stream);
    let refused = command(&nats.url(), &stream, &[]);
    assert!(!refused.status.success());
    let said = String::from_utf8_lossy(&refused.stderr).to_string();
    assert!(said.contains("NATS"), "{said}");
    let out = command(
        &nats.url(),
        &stream,
        &["--nats-token-file", token.to_str().unwrap()],
    );
    assert!(crate::cli::success(&out).contains("relayed 5 entries"));
    let leaked = String::from_utf8_lossy(&out.stderr).contains("t0ken-value");
    assert!(!leaked);
}
