//! Replay and follow at the scale real services run: more aggregates with
//! pending entries than a batch holds, identity ids handed out out of seq
//! order by a cached sequence, replicas set up by several followers at once.

use std::sync::{Arc, Barrier};
use std::thread;

use oplog::{
    verify, FollowOptions, Follower, Keyring, NewEntry, Oplog, ReplayOptions, Replayer, Target,
    TypeCatalog, VerifyOptions,
};

use crate::support::{create_users, table_rows, user, TestDb};

fn oplog() -> Oplog {
    Oplog::new(TypeCatalog::demo(), Keyring::generate())
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
