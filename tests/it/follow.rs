//! Follow and trim against a real PostgreSQL: a follower beside running
//! writers, terminated backends, the follower lock, consumers and trimming.

use std::sync::atomic::Ordering;
use std::thread;
use std::time::Duration;

use oplog::{
    consumers, trim, verify, Error, FollowEvent, FollowOptions, Follower, Keyring, Oplog, Target,
    TrimOptions, VerifyOptions,
};

use crate::support::{create_users, eventually, table_rows, TestDb};

fn oplog() -> Oplog {
    Oplog::new(oplog::demo::user_catalog(), Keyring::generate())
}

fn ids(prefix: &str, n: usize) -> impl Iterator<Item = String> + '_ {
    (0..n).map(move |i| format!("{prefix}-{i}"))
}

/// Sum of the replica's checkpoint seqs (0 without a checkpoint table).
fn applied(replica: &TestDb) -> i64 {
    let mut c = replica.client();
    let exists: bool = c
        .query_one("SELECT to_regclass('oplog_checkpoint') IS NOT NULL", &[])
        .unwrap()
        .get(0);
    if !exists {
        return 0;
    }
    c.query_one(
        "SELECT coalesce(sum(seq), 0)::bigint FROM oplog_checkpoint",
        &[],
    )
    .unwrap()
    .get(0)
}

fn assert_replica_matches(log: &Oplog, source: &TestDb, replica: &TestDb) {
    assert_eq!(
        table_rows(&replica.url, "demo_user"),
        table_rows(&source.url, "demo_user")
    );
    let report = verify(
        log,
        &source.url,
        &VerifyOptions {
            against: Some(Target::database(&replica.url)),
            ..VerifyOptions::default()
        },
    )
    .unwrap();
    assert!(report.is_clean(), "{:?}", report.findings);
}

/// Runs a follower on a thread until `stop` is set; returns its report
/// and how many reconnections it announced.
fn spawn_follower(
    log: &Oplog,
    source_url: &str,
    replica_url: &str,
    options: FollowOptions,
) -> (
    std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread::JoinHandle<(oplog::Result<oplog::FollowReport>, u32)>,
) {
    let mut follower = Follower::new(log, source_url, Target::database(replica_url), options);
    let stop = follower.stop_flag();
    let handle = thread::spawn(move || {
        let mut reconnects = 0;
        let result = follower.run(&mut |e| {
            if matches!(e, FollowEvent::Reconnecting { .. }) {
                reconnects += 1;
            }
        });
        (result, reconnects)
    });
    (stop, handle)
}

#[test]
fn a_follower_keeps_up_with_running_writers_and_registers_as_a_consumer() {
    let source = TestDb::new();
    let replica = TestDb::empty();
    let log = oplog();
    let options = FollowOptions {
        name: Some("replica-1".into()),
        ..FollowOptions::default()
    };
    let (stop, follower) = spawn_follower(&log, &source.url, &replica.url, options);
    thread::scope(|s| {
        for w in 0..4 {
            let (url, log) = (&source.url, &log);
            s.spawn(move || {
                create_users(
                    url,
                    log,
                    &format!("tenant-{}", w % 2),
                    ids(&format!("w{w}"), 50),
                )
            });
        }
    });
    assert!(
        eventually(30, || applied(&replica) == 200),
        "applied {}",
        applied(&replica)
    );
    stop.store(true, Ordering::Relaxed);
    let (report, _) = follower.join().unwrap();
    let report = report.unwrap();
    assert_eq!(report.entries_applied, 200);
    assert_eq!(report.consumer, "replica-1");
    assert_replica_matches(&log, &source, &replica);
    let registered = consumers(&mut source.client(), Duration::from_secs(60)).unwrap();
    assert_eq!(registered.len(), 1);
    assert_eq!(
        (registered[0].name.as_str(), registered[0].entries_behind),
        ("replica-1", 0)
    );
}

#[test]
fn a_follower_reconnects_after_its_backends_are_terminated() {
    let source = TestDb::new();
    let replica = TestDb::empty();
    let log = oplog();
    // The follower's own connections carry a name, so that only they are
    // terminated, not the writers'.
    let tag = |url: &str| format!("{url}?application_name=oplog_follower_under_test");
    let (stop, follower) = spawn_follower(
        &log,
        &tag(&source.url),
        &tag(&replica.url),
        FollowOptions::default(),
    );
    thread::scope(|s| {
        let (url, log) = (&source.url, &log);
        s.spawn(move || create_users(url, log, "tenant", ids("u", 300)));
        for round in 0..3 {
            assert!(eventually(30, || applied(&replica) > round * 60));
            let mut admin = source.client();
            admin
                .execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                     WHERE application_name = 'oplog_follower_under_test' AND pid <> pg_backend_pid()",
                    &[],
                )
                .unwrap();
        }
    });
    assert!(
        eventually(30, || applied(&replica) == 300),
        "applied {}",
        applied(&replica)
    );
    stop.store(true, Ordering::Relaxed);
    let (report, reconnects) = follower.join().unwrap();
    report.unwrap();
    assert!(reconnects >= 1, "the follower reconnected");
    assert_replica_matches(&log, &source, &replica);
}

#[test]
fn trimming_keeps_what_a_lagging_consumer_needs_and_verify_stays_clean() {
    let source = TestDb::new();
    let replica = TestDb::empty();
    let log = oplog();
    create_users(&source.url, &log, "agg", ids("a", 20));
    let catch_up = |name: &str, replica: &TestDb| {
        Follower::new(
            &log,
            &source.url,
            Target::database(&replica.url),
            FollowOptions {
                name: Some(name.into()),
                until_caught_up: true,
                ..FollowOptions::default()
            },
        )
        .run(&mut |_| {})
    };
    catch_up("r1", &replica).unwrap();
    create_users(&source.url, &log, "agg", ids("b", 10));
    let everything = TrimOptions {
        older_than: Duration::ZERO,
        ..TrimOptions::default()
    };

    // Young entries are kept whatever the consumers say.
    let young = trim(
        &mut source.client(),
        &TrimOptions {
            older_than: Duration::from_secs(3600),
            ..TrimOptions::default()
        },
        &mut |_, _| {},
    )
    .unwrap();
    assert_eq!(young.deleted, 0);

    // The consumer has applied 20 of 30: only those go.
    let dry = trim(
        &mut source.client(),
        &TrimOptions {
            dry_run: true,
            ..everything.clone()
        },
        &mut |_, _| {},
    )
    .unwrap();
    assert_eq!((dry.deleted, dry.aggregates[0].to_seq), (20, 20));
    assert_eq!(
        source.scalar::<i64>("SELECT count(*) FROM oplog_entry"),
        30,
        "a dry run deletes nothing"
    );
    let first = trim(&mut source.client(), &everything, &mut |_, _| {}).unwrap();
    assert_eq!(first.deleted, 20);
    assert_eq!(first.aggregates[0].held_back_at, Some(20));
    assert_eq!(source.scalar::<i64>("SELECT min(seq) FROM oplog_entry"), 21);
    // Each trimmed entry's metadata went with it, and only theirs.
    let metadata = |db: &TestDb| {
        db.scalar::<i64>(
            "SELECT count(*) FROM oplog_metadata m \
             WHERE NOT EXISTS (SELECT 1 FROM oplog_entry e WHERE e.id = m.entry_id)",
        )
    };
    assert_eq!(metadata(&source), 0, "metadata of trimmed entries is left");
    assert_eq!(
        source.scalar::<i64>("SELECT count(DISTINCT entry_id) FROM oplog_metadata"),
        10
    );
    let clean = verify(&log, &source.url, &VerifyOptions::default()).unwrap();
    assert!(clean.is_clean(), "{:?}", clean.findings);

    // Once it catches up, the rest can go too.
    catch_up("r1", &replica).unwrap();
    let second = trim(&mut source.client(), &everything, &mut |_, _| {}).unwrap();
    assert_eq!((second.deleted, second.aggregates[0].to_seq), (10, 30));
    let clean = verify(&log, &source.url, &VerifyOptions::default()).unwrap();
    assert!(clean.is_clean(), "{:?}", clean.findings);
    assert_replica_matches(&log, &source, &replica);

    // A new replica starting below the trim point learns that coverage is
    // lost, instead of skipping what it never saw.
    let late = TestDb::empty();
    let err = catch_up("r2", &late).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Gap {
                missing: 1,
                trimmed_through: Some(30),
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("coverage lost"), "{err}");
}

#[test]
fn entries_are_deleted_only_by_trimming_and_never_past_a_consumer() {
    let source = TestDb::new();
    let log = oplog();
    create_users(&source.url, &log, "agg", ids("a", 5));
    let mut c = source.client();
    let err = Error::from(
        c.execute("DELETE FROM oplog_entry WHERE seq = 1", &[])
            .unwrap_err(),
    );
    assert!(
        err.to_string().contains("can only be deleted by trimming"),
        "{err}"
    );
    let err = Error::from(c.execute("DELETE FROM oplog_metadata", &[]).unwrap_err());
    assert!(
        err.to_string().contains("can only be deleted by trimming"),
        "{err}"
    );
    // A registered consumer at seq 2 caps even a direct call of the
    // database function.
    c.batch_execute(
        "INSERT INTO oplog_consumer (name) VALUES ('slow'); \
         INSERT INTO oplog_consumer_position (consumer, aggregate_name, seq) VALUES ('slow', 'agg', 2)",
    )
    .unwrap();
    let row = c
        .query_one(
            "SELECT o_deleted, o_trim_seq FROM oplog_trim('agg', 5, 100, interval '0')",
            &[],
        )
        .unwrap();
    assert_eq!((row.get::<_, i64>(0), row.get::<_, i64>(1)), (2, 2));
    // Stalled consumers are reported, not dropped; removing one lets
    // trimming go on.
    let report = trim(
        &mut c,
        &TrimOptions {
            older_than: Duration::ZERO,
            stalled_after: Duration::ZERO,
            ..TrimOptions::default()
        },
        &mut |_, _| {},
    )
    .unwrap();
    assert_eq!(report.deleted, 0);
    assert_eq!(report.stalled.len(), 1);
    assert_eq!(
        (
            report.stalled[0].name.as_str(),
            report.stalled[0].entries_behind
        ),
        ("slow", 3)
    );
    assert!(oplog::remove_consumer(&mut c, "slow").unwrap());
    let report = trim(
        &mut c,
        &TrimOptions {
            older_than: Duration::ZERO,
            ..TrimOptions::default()
        },
        &mut |_, _| {},
    )
    .unwrap();
    assert_eq!(report.deleted, 3);
    assert!(verify(&log, &source.url, &VerifyOptions::default())
        .unwrap()
        .is_clean());
}

/// A running `oplog follow` whose standard error is collected line by line.
struct FollowProcess {
    child: std::process::Child,
    lines: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl FollowProcess {
    fn start(source: &TestDb, replica: &TestDb, keys: &str, extra: &[&str]) -> FollowProcess {
        use std::io::BufRead;
        let mut child = crate::cli::oplog_cmd()
            .args([
                "follow",
                "--into",
                &replica.url,
                "--database-url",
                &source.url,
                "--key-file",
                keys,
            ])
            .args(extra)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = lines.clone();
        thread::spawn(move || {
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                sink.lock().unwrap().push(line);
            }
        });
        FollowProcess { child, lines }
    }

    fn said(&self, needle: &str) -> bool {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains(needle))
    }

    fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

/// A source, an empty replica, a key file (in a directory that lives as long
/// as the returned value) and an oplog with the same keys.
fn cli_fixture() -> (TestDb, TestDb, crate::cli::TempDir, String, Oplog) {
    let ring = Keyring::generate();
    let dir = crate::cli::TempDir::new();
    let keys = crate::cli::save_keyring(&ring, &dir.join("keys.json"));
    let log = Oplog::new(oplog::demo::user_catalog(), ring);
    (TestDb::new(), TestDb::empty(), dir, keys, log)
}

#[test]
fn a_follower_killed_at_random_points_while_writers_run_converges_without_duplicates() {
    use rand::Rng;
    let (source, replica, _dir, keys, log) = cli_fixture();
    thread::scope(|s| {
        let (url, log) = (&source.url, &log);
        let writers = s.spawn(move || {
            for round in 0..6 {
                create_users(
                    url,
                    log,
                    &format!("tenant-{}", round % 3),
                    ids(&format!("r{round}"), 60),
                );
                thread::sleep(Duration::from_millis(50));
            }
        });
        let mut kills = 0;
        while !writers.is_finished() {
            let follower = FollowProcess::start(&source, &replica, &keys, &[]);
            thread::sleep(Duration::from_millis(rand::thread_rng().gen_range(50..400)));
            follower.kill();
            kills += 1;
            // Killed at any moment, the replica holds exactly the rows its
            // checkpoints cover: nothing half-applied, nothing twice.
            let created: bool = replica
                .client()
                .query_one("SELECT to_regclass('demo_user') IS NOT NULL", &[])
                .unwrap()
                .get(0);
            if created {
                let count: i64 = replica.scalar("SELECT count(*) FROM demo_user");
                assert_eq!(count, applied(&replica), "after kill {kills}");
            }
        }
        assert!(kills >= 2, "killed {kills} times");
    });
    let out = crate::cli::oplog_cmd()
        .args([
            "follow",
            "--into",
            &replica.url,
            "--until-caught-up",
            "--json",
        ])
        .args(["--database-url", &source.url, "--key-file", &keys])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        crate::cli::text(&out.stderr)
    );
    assert_eq!(applied(&replica), 360);
    assert_replica_matches(&log, &source, &replica);
}

#[test]
fn a_second_follower_waits_for_the_first_and_takes_over_when_it_dies() {
    let (source, replica, _dir, keys, log) = cli_fixture();
    let first = FollowProcess::start(&source, &replica, &keys, &["--name", "shared"]);
    assert!(
        eventually(20, || first.said("following as consumer")),
        "{:?}",
        first.lines
    );
    let second = FollowProcess::start(&source, &replica, &keys, &["--name", "shared"]);
    assert!(
        eventually(20, || second.said("waiting for the follower lock")),
        "{:?}",
        second.lines
    );
    // With --no-wait a third gives up at once, naming the holder.
    let out = crate::cli::oplog_cmd()
        .args(["follow", "--into", &replica.url, "--no-wait"])
        .args(["--database-url", &source.url, "--key-file", &keys])
        .output()
        .unwrap();
    let stderr = crate::cli::text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr
            .contains("another follower is already applying to this replica (replica backend pid"),
        "{stderr}"
    );

    create_users(&source.url, &log, "agg", ids("a", 10));
    assert!(eventually(20, || applied(&replica) == 10));
    assert!(
        !second.said("following as consumer"),
        "only one follower applies"
    );
    first.kill();
    assert!(
        eventually(20, || second.said("following as consumer")),
        "{:?}",
        second.lines
    );
    create_users(&source.url, &log, "agg", ids("b", 10));
    assert!(eventually(20, || applied(&replica) == 20));
    second.kill();
    assert_replica_matches(&log, &source, &replica);
}

#[test]
fn consumers_and_trim_on_the_command_line() {
    let (source, replica, _dir, keys, log) = cli_fixture();
    create_users(&source.url, &log, "agg", ids("a", 6));
    let run = |args: &[&str]| crate::cli::run_against(&source.url, &keys, args);
    let out = run(&[
        "follow",
        "--into",
        &replica.url,
        "--name",
        "r1",
        "--until-caught-up",
        "--json",
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        crate::cli::text(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (
            report["consumer"].as_str(),
            report["entries_applied"].as_u64()
        ),
        (Some("r1"), Some(6))
    );
    create_users(&source.url, &log, "agg", ids("b", 4));

    let listed = crate::cli::success(&run(&["consumers", "--json"]));
    let r1: serde_json::Value = serde_json::from_str(listed.trim()).unwrap();
    assert_eq!(
        (r1["name"].as_str(), r1["entries_behind"].as_i64()),
        (Some("r1"), Some(4))
    );
    assert!(crate::cli::success(&run(&["consumers"]))
        .starts_with("r1: 4 entries behind in 1 aggregates"));

    let dry = crate::cli::success(&run(&["trim", "--older-than", "0s", "--dry-run"]));
    assert!(dry.contains("agg: would delete 6 entries (trim point 0 -> 6); a consumer has only applied up to seq 6"), "{dry}");
    let done: serde_json::Value = serde_json::from_str(
        crate::cli::success(&run(&["trim", "--older-than", "0s", "--json"])).trim(),
    )
    .unwrap();
    assert_eq!(done["deleted"], 6);
    assert_eq!(
        crate::cli::success(&run(&["consumers", "remove", "r1"])),
        "removed consumer r1\n"
    );
    crate::cli::failure(
        &run(&["consumers", "remove", "r1"]),
        &["no consumer named \"r1\""],
    );
    crate::cli::failure(&run(&["trim"]), &["--older-than"]);
}

#[test]
fn lag_is_counted_in_entries_and_in_the_age_of_the_oldest_waiting_entry() {
    let source = TestDb::new();
    let log = oplog();
    create_users(&source.url, &log, "a", ids("a", 5));
    create_users(&source.url, &log, "b", ids("b", 2));
    let mut c = source.client();
    c.batch_execute(
        "INSERT INTO oplog_consumer (name) VALUES ('r'); \
         INSERT INTO oplog_consumer_position VALUES ('r', 'a', 3, now()), ('r', 'b', 2, now())",
    )
    .unwrap();
    thread::sleep(Duration::from_millis(300));
    let lag = oplog::lag(&mut c, "r").unwrap();
    assert_eq!(lag.len(), 1, "b is caught up: {lag:?}");
    assert_eq!(
        (
            lag[0].aggregate.as_str(),
            lag[0].source_seq,
            lag[0].applied_seq,
            lag[0].entries
        ),
        ("a", 5, 3, 2)
    );
    assert!(lag[0].seconds >= 0.3, "{lag:?}");
    let listed = consumers(&mut c, Duration::from_secs(3600)).unwrap();
    assert_eq!(
        (
            listed[0].entries_behind,
            listed[0].aggregates_behind,
            listed[0].stalled
        ),
        (2, 1, false)
    );
    assert!(listed[0].lag_s >= 0.3);
}
