//! Replay and follow at the scale real services run: more aggregates with
//! pending entries than a batch holds, identity ids handed out out of seq
//! order by a cached sequence, replicas set up by several followers at once.

use std::sync::{Arc, Barrier};
use std::thread;

use oplog::{
    verify, FollowOptions, Follower, Keyring, NewEntry, Oplog, ReplayOptions, Replayer, Target,
    VerifyOptions,
};

use crate::support::{create_users, table_rows, user, TestDb};

fn oplog() -> Oplog {
    Oplog::new(oplog::demo::user_catalog(), Keyring::generate())
}

fn small_batches(n: usize) -> ReplayOptions {
    ReplayOptions {
        batch_size: n,
        ..ReplayOptions::default()
    }
}

#[test]
fn more_aggregates_than_a_batch_holds_are_all_replayed_and_followed() {
    let source = TestDb::new();
    let log = oplog();
    for tenant in ["t-a", "t-b", "t-c"] {
        create_users(
            &source.url,
            &log,
            tenant,
            (0..2).map(|i| format!("{tenant}-{i}")),
        );
    }
    let replica = TestDb::empty();
    let report = Replayer::connect(
        &log,
        &source.url,
        Target::database(&replica.url),
        small_batches(2),
    )
    .unwrap()
    .run(&mut |_| {})
    .unwrap();
    assert!(report.is_complete(), "{:?}", report.stopped);
    assert_eq!(report.entries_applied, 6);
    assert_eq!(
        table_rows(&replica.url, "demo_user"),
        table_rows(&source.url, "demo_user")
    );

    // A follower with the same batch size keeps up with all three.
    for tenant in ["t-a", "t-b", "t-c"] {
        create_users(&source.url, &log, tenant, [format!("{tenant}-late")]);
    }
    let followed = TestDb::empty();
    let options = FollowOptions {
        until_caught_up: true,
        batch_size: 2,
        ..FollowOptions::default()
    };
    let report = Follower::new(&log, &source.url, Target::database(&followed.url), options)
        .run(&mut |_| {})
        .unwrap();
    assert_eq!(report.entries_applied, 9);
    assert_eq!(
        table_rows(&followed.url, "demo_user"),
        table_rows(&source.url, "demo_user")
    );
}

#[test]
fn entries_whose_ids_run_against_their_seqs_replay_in_seq_order() {
    let source = TestDb::new();
    // A common tuning: each session takes 20 ids at a time, so concurrent
    // writers commit entries whose ids are out of seq order.
    source
        .client()
        .batch_execute("ALTER TABLE oplog_entry ALTER COLUMN id SET CACHE 20")
        .unwrap();
    let log = oplog();
    let writers = 4;
    let each = 15;
    let start = Arc::new(Barrier::new(writers));
    let handles: Vec<_> = (0..writers)
        .map(|w| {
            let (url, log, start) = (source.url.clone(), log.clone(), start.clone());
            thread::spawn(move || {
                let mut client = postgres::Client::connect(&url, postgres::NoTls).unwrap();
                start.wait();
                for i in 0..each {
                    let u = user(&format!("w{w}-{i}"));
                    let mut tx = client.transaction().unwrap();
                    tx.execute(oplog::demo::INSERT_USER, &u.params()).unwrap();
                    let mut entry = NewEntry::new("tenant-1");
                    entry.create(&u).unwrap();
                    log.write(&mut tx, &entry).unwrap();
                    tx.commit().unwrap();
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let inversions: i64 = source.scalar(
        "SELECT count(*) FROM (SELECT id < lag(id) OVER (ORDER BY seq) AS back \
         FROM oplog_entry WHERE aggregate_name = 'tenant-1') s WHERE back",
    );
    assert!(inversions > 0, "the ids should run against the seqs");

    let replica = TestDb::empty();
    let report = Replayer::connect(
        &log,
        &source.url,
        Target::database(&replica.url),
        small_batches(7),
    )
    .unwrap()
    .run(&mut |_| {})
    .unwrap();
    assert!(report.is_complete(), "{:?}", report.stopped);
    assert_eq!(report.entries_applied, (writers * each) as u64);
    let checked = verify(
        &log,
        &source.url,
        &VerifyOptions {
            against: Some(Target::database(&replica.url)),
            ..VerifyOptions::default()
        },
    )
    .unwrap();
    assert!(checked.is_clean(), "{checked:?}");
}

/// Writes a user row and the entry that creates it on each tenant
/// aggregate of `tenants` (`tenant-00000`, ...), a thousand entries per
/// transaction.
fn write_tenants(db: &TestDb, log: &Oplog, tenants: impl IntoIterator<Item = usize>, round: &str) {
    let mut client = db.client();
    let mut tx = client.transaction().unwrap();
    for (n, a) in tenants.into_iter().enumerate() {
        if n > 0 && n % 1000 == 0 {
            tx.commit().unwrap();
            tx = client.transaction().unwrap();
        }
        let u = user(&format!("u{a}-{round}"));
        tx.execute(oplog::demo::INSERT_USER, &u.params()).unwrap();
        let mut entry = NewEntry::new(format!("tenant-{a:05}"));
        entry.create(&u).unwrap();
        log.write(&mut tx, &entry).unwrap();
    }
    tx.commit().unwrap();
}

#[test]
fn five_thousand_tenants_replay_follow_verify_trim_and_report_lag() {
    let source = TestDb::new();
    let log = oplog();
    let tenants = 5000;
    write_tenants(&source, &log, 0..tenants, "first");
    let total = tenants as u64;

    let replica = TestDb::empty();
    let report = Replayer::connect(
        &log,
        &source.url,
        Target::database(&replica.url),
        ReplayOptions::default(),
    )
    .unwrap()
    .run(&mut |_| {})
    .unwrap();
    assert!(report.is_complete(), "{:?}", &report.stopped[..1]);
    assert_eq!(report.entries_applied, total);
    assert_eq!(report.aggregates.len(), tenants);

    // A follower registers as a consumer and catches up all of them.
    let followed = TestDb::empty();
    let options = FollowOptions {
        until_caught_up: true,
        name: Some("big".into()),
        ..FollowOptions::default()
    };
    let followed_report =
        Follower::new(&log, &source.url, Target::database(&followed.url), options)
            .run(&mut |_| {})
            .unwrap();
    assert_eq!(followed_report.entries_applied, total);
    let mut client = source.client();
    let consumers = oplog::consumers(&mut client, std::time::Duration::from_secs(60)).unwrap();
    assert_eq!(consumers.len(), 1);
    assert_eq!(consumers[0].entries_behind, 0);
    assert!(oplog::lag(&mut client, "big").unwrap().is_empty());

    // New entries on some tenants: lag names exactly those.
    write_tenants(&source, &log, [3, 4999], "late");
    let lag = oplog::lag(&mut client, "big").unwrap();
    assert_eq!(
        lag.iter().map(|l| l.aggregate.as_str()).collect::<Vec<_>>(),
        ["tenant-00003", "tenant-04999"]
    );

    for replica_url in [&replica.url, &followed.url] {
        let checked = verify(
            &log,
            &source.url,
            &VerifyOptions {
                against: Some(Target::database(replica_url)),
                ..VerifyOptions::default()
            },
        )
        .unwrap();
        assert_eq!(checked.entries_checked, total + 2);
        assert_eq!(checked.aggregates_checked, tenants as u64);
        // The two late entries are all the replicas lack.
        assert!(
            checked
                .findings
                .iter()
                .all(|f| f.kind == oplog::FindingKind::ReplicaBehind),
            "{:?}",
            &checked.findings[..checked.findings.len().min(3)]
        );
    }

    // Trimming everything older than now keeps what the follower lacks.
    let trimmed = oplog::trim(
        &mut client,
        &oplog::TrimOptions {
            older_than: std::time::Duration::ZERO,
            ..oplog::TrimOptions::default()
        },
        &mut |_, _| {},
    )
    .unwrap();
    assert_eq!(trimmed.deleted, i64::try_from(total).unwrap());
    let left: i64 = source.scalar("SELECT count(*) FROM oplog_entry");
    assert_eq!(left, 2, "the entries the follower has not applied");
    let checked = verify(&log, &source.url, &VerifyOptions::default()).unwrap();
    assert!(checked.is_clean(), "{:?}", &checked.findings[..1]);
}

/// Limits a quarter of a megabyte wide, so that entries near them are
/// cheap to write in a test: the benchmark runs the full-size ones.
fn small_limits() -> oplog::Limits {
    oplog::Limits {
        max_frame_bytes: 256 << 10,
        max_queue_bytes: 1 << 20,
        ..oplog::Limits::default()
    }
}

#[test]
fn entries_near_the_size_limit_are_written_replayed_and_verified_in_bounded_batches() {
    let source = TestDb::new();
    let log = oplog().with_limits(small_limits());
    let limits = small_limits();
    let mut client = source.client();
    // An operation over the frame limit is refused when written, since no
    // reader would decode it.
    let mut huge = user("huge");
    huge.avatar = vec![1; limits.max_frame_bytes + 1];
    let mut entry = NewEntry::new("tenant-big");
    entry.create(&huge).unwrap();
    let mut tx = client.transaction().unwrap();
    let err = log.write(&mut tx, &entry).unwrap_err();
    assert!(matches!(err, oplog::Error::LimitExceeded { .. }), "{err}");
    drop(tx);
    // Entries of four operations just under the frame limit: just under
    // the queue limit, each over the replay's byte budget below.
    let near = limits.max_frame_bytes - 1024;
    for n in 0..3 {
        let mut tx = client.transaction().unwrap();
        let mut entry = NewEntry::new(if n == 2 { "tenant-other" } else { "tenant-big" });
        for i in 0..4 {
            let mut big = user(&format!("big{n}-{i}"));
            big.avatar = vec![0xa5; near];
            tx.execute(oplog::demo::INSERT_USER, &big.params()).unwrap();
            entry.create(&big).unwrap();
        }
        let written = log.write(&mut tx, &entry).unwrap();
        tx.commit().unwrap();
        let size: i32 = source.scalar(&format!(
            "SELECT length(data) FROM oplog_entry WHERE id = {}",
            written.id
        ));
        assert!(
            usize::try_from(size).unwrap() > limits.max_queue_bytes - 16 * 1024,
            "{size}"
        );
    }
    create_users(&source.url, &log, "tenant-big", ["after".to_string()]);

    let replica = TestDb::empty();
    let report = Replayer::connect(
        &log,
        &source.url,
        Target::database(&replica.url),
        ReplayOptions {
            max_batch_bytes: 512 << 10,
            ..ReplayOptions::default()
        },
    )
    .unwrap()
    .run(&mut |_| {})
    .unwrap();
    assert!(report.is_complete(), "{:?}", report.stopped);
    assert_eq!(report.entries_applied, 4);
    assert!(
        report.transactions >= 3,
        "each large entry goes alone: {} transactions",
        report.transactions
    );
    assert_eq!(
        table_rows(&replica.url, "demo_user"),
        table_rows(&source.url, "demo_user")
    );
    let checked = verify(
        &log,
        &source.url,
        &VerifyOptions {
            against: Some(Target::database(&replica.url)),
            ..VerifyOptions::default()
        },
    )
    .unwrap();
    assert!(checked.is_clean(), "{checked:?}");
}
