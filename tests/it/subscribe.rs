//! Subscriptions: handlers as consumers of the log, at least once or with
//! exactly-once effect in a database of their own, parking an aggregate
//! whose handler keeps failing.

use std::collections::{BTreeMap, HashSet};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Duration;

use oplog::{
    Batch, Keyring, Oplog, RetryPolicy, Selection, SubscribeOptions, Subscription, TrimOptions,
};

use crate::support::{create_users, TestDb};

fn options(name: &str, selection: Selection) -> SubscribeOptions {
    SubscribeOptions {
        selection,
        batch_entries: 4,
        until_caught_up: true,
        retry: RetryPolicy {
            max_attempts: 3,
            base_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(5),
        },
        ..SubscribeOptions::new(name)
    }
}

/// Seqs delivered per aggregate.
type Seen = BTreeMap<String, Vec<i64>>;

fn collect(seen: &mut Seen, batch: &Batch) {
    let seqs = seen.entry(batch.aggregate.clone()).or_default();
    seqs.extend(batch.entries.iter().map(|e| e.seq));
}

#[test]
fn a_subscription_delivers_what_it_selects_in_order_and_then_only_what_is_new() {
    let db = TestDb::new();
    let log = Oplog::new(oplog::demo::user_catalog(), Keyring::generate());
    for a in ["shop-1", "shop-2", "other"] {
        create_users(&db.url, &log, a, (0..10).map(|i| format!("{a}-{i}")));
    }
    let mut seen = Seen::new();
    let report = Subscription::new(
        &log,
        db.url.as_str(),
        options("by-prefix", Selection::Prefix("shop-".into())),
    )
    .run(|batch| {
        collect(&mut seen, batch);
        Ok::<_, String>(())
    })
    .unwrap();
    assert_eq!(report.delivered, 20);
    assert_eq!(seen.keys().collect::<Vec<_>>(), ["shop-1", "shop-2"]);
    assert!(
        seen.values().all(|s| *s == (1..=10).collect::<Vec<_>>()),
        "{seen:?}"
    );

    // A list; then only what came since.
    let list = Selection::Aggregates(vec!["other".into(), "shop-2".into()]);
    let mut seen = Seen::new();
    Subscription::new(&log, db.url.as_str(), options("by-list", list.clone()))
        .run(|batch| {
            collect(&mut seen, batch);
            Ok::<_, String>(())
        })
        .unwrap();
    assert_eq!(seen.keys().collect::<Vec<_>>(), ["other", "shop-2"]);
    create_users(
        &db.url,
        &log,
        "other",
        (10..13).map(|i| format!("other-{i}")),
    );
    create_users(&db.url, &log, "shop-1", ["shop-1-x".to_string()]);
    let mut seen = Seen::new();
    Subscription::new(&log, db.url.as_str(), options("by-list", list))
        .run(|batch| {
            collect(&mut seen, batch);
            Ok::<_, String>(())
        })
        .unwrap();
    assert_eq!(seen, Seen::from([("other".to_string(), vec![11, 12, 13])]));

    // Registered consumers: trimming keeps what "by-list" has not had.
    let deleted = oplog::trim(
        &mut db.client(),
        &TrimOptions {
            older_than: Duration::ZERO,
            ..TrimOptions::default()
        },
        &mut |_, _| {},
    )
    .unwrap()
    .deleted;
    // Both have had all of "shop-2"; "by-prefix" has not had "other", nor
    // "by-list" the last of "shop-1".
    assert_eq!(deleted, 10);
    assert_eq!(
        db.scalar::<i64>("SELECT count(*) FROM oplog_entry WHERE aggregate_name = 'shop-2'"),
        0
    );
    assert_eq!(
        db.scalar::<i64>("SELECT count(*) FROM oplog_entry"),
        11 + 13
    );
}

#[test]
fn a_failing_handler_parks_its_aggregate_and_the_others_go_on_until_resumed() {
    let db = TestDb::new();
    let log = Oplog::new(oplog::demo::user_catalog(), Keyring::generate());
    for a in ["good", "poison"] {
        create_users(&db.url, &log, a, (0..6).map(|i| format!("{a}-{i}")));
    }
    let mut calls = 0;
    let mut seen = Seen::new();
    let report = Subscription::new(&log, db.url.as_str(), options("picky", Selection::All))
        .run(|batch| {
            if batch.aggregate == "poison" && batch.entries.iter().any(|e| e.seq == 5) {
                calls += 1;
                return Err("cannot handle poison 5".to_string());
            }
            collect(&mut seen, batch);
            Ok(())
        })
        .unwrap();
    assert_eq!(calls, 3, "three attempts");
    assert_eq!(report.retries, 2);
    assert_eq!(report.parked, ["poison"]);
    assert_eq!(seen["good"], (1..=6).collect::<Vec<_>>());
    assert_eq!(seen["poison"], [1, 2, 3, 4]);

    let mut client = db.client();
    let info = oplog::consumers(&mut client, Duration::MAX).unwrap();
    assert_eq!(info.iter().find(|c| c.name == "picky").unwrap().parked, 1);
    let lag = oplog::lag(&mut client, "picky").unwrap();
    let poison = lag.iter().find(|l| l.aggregate == "poison").unwrap();
    assert_eq!((poison.applied_seq, poison.parked_seq), (4, Some(5)));
    assert!(
        poison
            .parked_reason
            .as_deref()
            .unwrap()
            .contains("cannot handle poison 5"),
        "{poison:?}"
    );
    // Parked stays parked: nothing is delivered until it is resumed.
    let report = Subscription::new(&log, db.url.as_str(), options("picky", Selection::All))
        .run(|_| Err::<(), _>("not called"))
        .unwrap();
    assert_eq!((report.delivered, report.batches), (0, 0));
    assert!(oplog::resume_consumer(&mut client, "picky", "poison").unwrap());
    let mut seen = Seen::new();
    Subscription::new(&log, db.url.as_str(), options("picky", Selection::All))
        .run(|batch| {
            collect(&mut seen, batch);
            Ok::<_, String>(())
        })
        .unwrap();
    assert_eq!(seen, Seen::from([("poison".to_string(), vec![5, 6])]));
}

/// At least once: a process that dies after its handler ran and before
/// the position moved sees that batch again, and the entry UUID tells the
/// handler it already has it.
#[test]
fn at_least_once_redelivers_after_a_crash_and_the_uuid_deduplicates() {
    let db = TestDb::new();
    let log = Oplog::new(oplog::demo::user_catalog(), Keyring::generate());
    create_users(&db.url, &log, "acct", (0..12).map(|i| format!("u{i}")));
    let mut effects: HashSet<uuid::Uuid> = HashSet::new();
    let mut redelivered = 0;
    let mut batches = 0;
    let crashed = catch_unwind(AssertUnwindSafe(|| {
        Subscription::new(&log, db.url.as_str(), options("effects", Selection::All)).run(|batch| {
            for e in &batch.entries {
                effects.insert(e.uuid);
            }
            batches += 1;
            assert!(
                batches < 2,
                "the process dies after the second batch's effects"
            );
            Ok::<_, String>(())
        })
    }));
    assert!(crashed.is_err());
    Subscription::new(&log, db.url.as_str(), options("effects", Selection::All))
        .run(|batch| {
            for e in &batch.entries {
                if !effects.insert(e.uuid) {
                    redelivered += 1;
                }
            }
            Ok::<_, String>(())
        })
        .unwrap();
    assert_eq!(redelivered, 4, "the second batch came again");
    assert_eq!(effects.len(), 12);
}

/// Exactly-once effect: the handler's rows and the position commit in one
/// transaction of the target; a handler that dies half way leaves neither,
/// and the next run neither repeats nor skips an entry.
#[test]
fn exactly_once_in_a_target_survives_a_crash_without_a_double_effect() {
    let db = TestDb::new();
    let target = TestDb::empty();
    let log = Oplog::new(oplog::demo::user_catalog(), Keyring::generate());
    for a in ["a", "b"] {
        create_users(&db.url, &log, a, (0..9).map(|i| format!("{a}{i}")));
    }
    let mut t = target.client();
    t.batch_execute("CREATE TABLE effect (entry uuid PRIMARY KEY, aggregate text, seq bigint)")
        .unwrap();
    let apply = |tx: &mut postgres::Transaction<'_>, batch: &Batch| {
        for e in &batch.entries {
            tx.execute(
                "INSERT INTO effect VALUES ($1::text::uuid, $2, $3)",
                &[&e.uuid.to_string(), &e.aggregate, &e.seq],
            )?;
        }
        Ok::<_, postgres::Error>(())
    };
    let mut batches = 0;
    let crashed = catch_unwind(AssertUnwindSafe(|| {
        Subscription::new(&log, db.url.as_str(), options("effects", Selection::All)).run_in(
            &mut t,
            |tx, batch| {
                apply(tx, batch)?;
                batches += 1;
                // Dies inside the third transaction, after its rows.
                assert!(batches < 3, "the process dies");
                Ok::<_, postgres::Error>(())
            },
        )
    }));
    assert!(crashed.is_err());
    drop(t);
    let mut t = target.client();
    let report = Subscription::new(&log, db.url.as_str(), options("effects", Selection::All))
        .run_in(&mut t, apply)
        .unwrap();
    assert_eq!(
        report.delivered,
        18 - 8,
        "what the first run committed is not repeated"
    );
    let rows: Vec<(String, i64)> = t
        .query(
            "SELECT aggregate, seq FROM effect ORDER BY aggregate, seq",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let expected: Vec<(String, i64)> = ["a", "b"]
        .iter()
        .flat_map(|a| (1..=9).map(move |s| (a.to_string(), s)))
        .collect();
    assert_eq!(rows, expected);
    let lag = oplog::lag(&mut db.client(), "effects").unwrap();
    assert!(lag.iter().all(|l| l.entries == 0), "{lag:?}");
}

/// `oplog subscribe --into` killed with SIGKILL at random moments while
/// writers write, and started again each time: every entry is in the
/// target exactly once (a repeated one would break the table's keys and
/// park its aggregate), and nothing is parked.
#[test]
fn the_subscribe_command_killed_at_random_moments_delivers_each_entry_once() {
    use crate::cli::{oplog_cmd, TempDir};
    const WRITERS: usize = 3;
    const WRITES: usize = 60;
    let db = TestDb::new();
    let target = TestDb::empty();
    let dir = TempDir::new();
    let keys = dir.join("keys.json");
    Keyring::generate().save(&keys).unwrap();
    let log = Oplog::new(oplog::demo::user_catalog(), Keyring::load(&keys).unwrap());
    let subscribe = |until_caught_up: bool| {
        let mut cmd = oplog_cmd();
        cmd.args(["subscribe", "--name", "archive", "--into", &target.url])
            .args(["--batch", "5", "--poll", "5ms", "--database-url", &db.url])
            .arg("--key-file")
            .arg(&keys);
        if until_caught_up {
            cmd.arg("--until-caught-up");
        }
        cmd
    };
    let kills =
        crate::support::kill_repeatedly_while_writing(&db, &log, (WRITERS, WRITES), "s", || {
            subscribe(false)
        });
    assert!(kills >= 2, "killed {kills} times");
    let out = subscribe(true).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Vec<(String, i64)> = target
        .client()
        .query(
            "SELECT aggregate_name, seq FROM oplog_delivered ORDER BY aggregate_name, seq",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let expected: Vec<(String, i64)> = (0..WRITERS)
        .flat_map(|w| (1..=i64::try_from(WRITES).unwrap()).map(move |s| (format!("s-{w}"), s)))
        .collect();
    assert_eq!(rows, expected);
    let info = oplog::consumers(&mut db.client(), Duration::MAX).unwrap();
    assert_eq!(info.iter().find(|c| c.name == "archive").unwrap().parked, 0);

    // To standard output, at least once: every entry of the selection as
    // a JSON line, in order per aggregate; a second run has nothing new.
    let print = || {
        oplog_cmd()
            .args([
                "subscribe",
                "--name",
                "printer",
                "--aggregate",
                "s-1",
                "--until-caught-up",
            ])
            .args(["--database-url", &db.url, "--key-file"])
            .arg(&keys)
            .output()
            .unwrap()
    };
    let out = print();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seqs: Vec<i64> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            assert_eq!(v["aggregate"], "s-1");
            v["seq"].as_i64().unwrap()
        })
        .collect();
    assert_eq!(
        seqs,
        (1..=i64::try_from(WRITES).unwrap()).collect::<Vec<_>>()
    );
    assert!(print().stdout.is_empty());
}

/// A subscription checks what it hands over: an entry deleted from the
/// middle of an aggregate, or one that does not authenticate, parks that
/// aggregate there (after what came before it), while a prefix trimmed
/// before the subscription existed is where it simply starts.
#[test]
fn a_missing_or_altered_entry_parks_its_aggregate_and_a_trimmed_prefix_does_not() {
    let db = TestDb::new();
    let log = Oplog::new(oplog::demo::user_catalog(), Keyring::generate());
    for a in ["gap", "tampered", "trimmed"] {
        create_users(&db.url, &log, a, (0..6).map(|i| format!("{a}-{i}")));
    }
    crate::support::superuser_exec(
        &db,
        "SELECT oplog_trim('trimmed', 3, 1000, interval '0'); \
         SET oplog.trimming = 'on'; \
         DELETE FROM oplog_entry WHERE aggregate_name = 'gap' AND seq = 3; \
         RESET oplog.trimming; \
         UPDATE oplog_entry SET data = overlay(data placing '\\x00' from length(data) - 3 for 1) \
          WHERE aggregate_name = 'tampered' AND seq = 2",
    );
    let mut seen = Seen::new();
    let report = Subscription::new(&log, db.url.as_str(), options("checks", Selection::All))
        .run(|batch| {
            collect(&mut seen, batch);
            Ok::<_, String>(())
        })
        .unwrap();
    assert_eq!(seen["trimmed"], [4, 5, 6]);
    assert_eq!(seen["gap"], [1, 2]);
    assert_eq!(seen["tampered"], [1]);
    let mut parked = report.parked.clone();
    parked.sort();
    assert_eq!(parked, ["gap", "tampered"]);
    let lag = oplog::lag(&mut db.client(), "checks").unwrap();
    let at = |a: &str| lag.iter().find(|l| l.aggregate == a).unwrap().clone();
    assert_eq!(at("gap").parked_seq, Some(3));
    assert!(at("gap")
        .parked_reason
        .unwrap()
        .contains("seq 3 is missing"));
    assert_eq!(at("tampered").parked_seq, Some(2));
    assert!(
        at("tampered")
            .parked_reason
            .unwrap()
            .contains("authentication"),
        "{:?}",
        at("tampered")
    );
}

/// A subscription in a target registers again from the target's positions
/// each time it starts; an aggregate it parked stays parked at the same
/// entry, for the same reason, until it is resumed.
#[test]
fn a_parked_aggregate_stays_parked_with_its_reason_when_a_target_subscription_starts_again() {
    let db = TestDb::new();
    let target = TestDb::empty();
    let log = Oplog::new(oplog::demo::user_catalog(), Keyring::generate());
    create_users(&db.url, &log, "acct", (0..6).map(|i| format!("u{i}")));
    let mut t = target.client();
    let refuse_5 = |_: &mut postgres::Transaction<'_>, batch: &Batch| {
        if batch.entries.iter().any(|e| e.seq == 5) {
            return Err("no seq 5 here");
        }
        Ok(())
    };
    let report = Subscription::new(&log, db.url.as_str(), options("t", Selection::All))
        .run_in(&mut t, refuse_5)
        .unwrap();
    assert_eq!((report.delivered, report.parked.len()), (4, 1));
    let parked = |db: &TestDb| {
        let lag = oplog::lag(&mut db.client(), "t").unwrap();
        let l = lag.iter().find(|l| l.aggregate == "acct").unwrap().clone();
        (l.applied_seq, l.parked_seq, l.parked_reason)
    };
    let before = parked(&db);
    assert_eq!((before.0, before.1), (4, Some(5)));
    assert!(before.2.as_deref().unwrap().contains("no seq 5 here"));
    let report = Subscription::new(&log, db.url.as_str(), options("t", Selection::All))
        .run_in(&mut t, refuse_5)
        .unwrap();
    assert_eq!((report.delivered, report.batches), (0, 0));
    assert_eq!(parked(&db), before);
}

/// A live subscription is woken by a resume (no write needed: its polling
/// interval here is far longer than the test), and comes back on its own
/// after its database sessions are terminated, delivering what was written
/// while it was away exactly from where it stood.
#[test]
fn a_live_subscription_wakes_on_resume_and_comes_back_after_its_sessions_are_terminated() {
    use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
    use std::sync::Mutex;

    let db = TestDb::new();
    let log = Oplog::new(oplog::demo::user_catalog(), Keyring::generate());
    create_users(&db.url, &log, "a", (0..5).map(|i| format!("a-{i}")));
    create_users(&db.url, &log, "b", (0..5).map(|i| format!("b-{i}")));
    let seen: Mutex<Seen> = Mutex::default();
    let fail_b = AtomicBool::new(true);
    let reconnects = AtomicU32::new(0);
    let opts = SubscribeOptions {
        until_caught_up: false,
        poll_interval: Duration::from_secs(60),
        retry: RetryPolicy {
            max_attempts: 1,
            ..RetryPolicy::default()
        },
        ..options("live", Selection::All)
    };
    let mut sub = Subscription::new(&log, db.url.as_str(), opts).on_event(|event| {
        if matches!(event, oplog::LiveEvent::Reconnecting { .. }) {
            reconnects.fetch_add(1, Ordering::Relaxed);
        }
    });
    let stop = sub.stop_flag();
    let delivered = |aggregate: &str, upto: i64| {
        seen.lock().unwrap().get(aggregate).cloned() == Some((1..=upto).collect::<Vec<_>>())
    };
    std::thread::scope(|s| {
        let running = s.spawn(|| {
            sub.run(|batch| {
                if batch.aggregate == "b" && fail_b.load(Ordering::Relaxed) {
                    return Err("b is not wanted yet".to_string());
                }
                collect(&mut seen.lock().unwrap(), batch);
                Ok(())
            })
        });
        let mut client = db.client();
        assert!(crate::support::eventually(20, || delivered("a", 5)
            && oplog::consumers(&mut client, Duration::from_secs(3600))
                .unwrap()
                .iter()
                .any(|c| c.name == "live" && c.parked == 1)));
        fail_b.store(false, Ordering::Relaxed);
        assert!(oplog::resume_consumer(&mut client, "live", "b").unwrap());
        assert!(
            crate::support::eventually(10, || delivered("b", 5)),
            "the resumed aggregate was not delivered before the next poll: {:?}",
            seen.lock().unwrap()
        );

        // Every session of the subscription is cut.
        let cut: i64 = client
            .query_one(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
                 WHERE datname = current_database() AND pid <> pg_backend_pid()",
                &[],
            )
            .unwrap()
            .get(0);
        assert!(cut >= 1);
        assert!(crate::support::eventually(20, || reconnects
            .load(Ordering::Relaxed)
            >= 1));
        let notifying = log.clone().with_notify(true);
        create_users(&db.url, &notifying, "a", (5..8).map(|i| format!("a-{i}")));
        assert!(
            crate::support::eventually(20, || delivered("a", 8)),
            "{:?}",
            seen.lock().unwrap()
        );
        stop.store(true, Ordering::Relaxed);
        let report = running.join().unwrap().unwrap();
        assert!(report.reconnects >= 1, "{report:?}");
        assert_eq!(report.delivered, 13, "{report:?}");
    });
}
