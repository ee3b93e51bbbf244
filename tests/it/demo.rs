//! `oplog demo` and `oplog bench replay`, run as subprocesses: against a
//! database made for the test, and on the private cluster they start
//! without one (in a temporary directory of the test's own, so that what
//! they leave behind can be checked).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use oplog::{Keyring, NewEntry, OpType, Oplog, Wrapper};
use serde_json::Value;

use crate::cli::{failure, oplog_cmd, save_keyring, success, text, TempDir};
use crate::support::{admin_url, user, TestDb};

fn json(stdout: &str) -> Value {
    assert_eq!(stdout.lines().count(), 1, "one JSON document: {stdout}");
    serde_json::from_str(stdout.trim()).unwrap()
}

/// The binary with its temporary directory set to `tmp`, where a private
/// cluster is created.
fn in_tmp(tmp: &TempDir) -> Command {
    let mut cmd = oplog_cmd();
    cmd.env("TMPDIR", tmp.join(""));
    cmd
}

/// Processes (not zombies) whose command line mentions `path`.
fn processes_mentioning(path: &Path) -> Vec<String> {
    let needle = path.to_string_lossy().into_owned();
    let mut found = Vec::new();
    for entry in fs::read_dir("/proc").unwrap().flatten() {
        let dir = entry.path();
        let Ok(cmdline) = fs::read(dir.join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        let zombie = fs::read_to_string(dir.join("stat"))
            .ok()
            .and_then(|s| {
                s.rsplit_once(')')
                    .map(|(_, rest)| rest.trim_start().starts_with('Z'))
            })
            .unwrap_or(true);
        if cmdline.contains(&needle) && !zombie {
            found.push(cmdline);
        }
    }
    found
}

fn database_exists(name: &str) -> bool {
    let mut admin = postgres::Client::connect(&admin_url(), postgres::NoTls).unwrap();
    admin
        .query_one(
            "SELECT count(*) FROM pg_database WHERE datname = $1",
            &[&name],
        )
        .unwrap()
        .get::<_, i64>(0)
        == 1
}

#[test]
fn demo_json_writes_replays_and_verifies_into_a_replica_it_drops() {
    // An empty database: the demo migrates it and creates its tables.
    let db = TestDb::empty();
    let dir = TempDir::new();
    let ring = Keyring::generate();
    let keys = save_keyring(&ring, &dir.join("keys.json"));
    let out = oplog_cmd()
        .args(["--database-url", &db.url, "--key-file", &keys, "--json"])
        .args([
            "demo",
            "--writers",
            "2",
            "--entries",
            "20",
            "--aggregates",
            "2",
        ])
        .output()
        .unwrap();
    let report = json(&success(&out));
    for field in [
        "entries_written",
        "retries",
        "aggregates",
        "write_rate_per_s",
        "replayed",
        "verify_findings",
        "replica_matches",
        "elapsed_s",
    ] {
        assert!(report.get(field).is_some(), "{field} missing: {report}");
    }
    assert_eq!(report["entries_written"], 40, "{report}");
    assert_eq!(report["replayed"], 40, "{report}");
    assert_eq!(report["aggregates"], 2);
    assert_eq!(report["verify_findings"], 0, "{report}");
    assert_eq!(report["replica_matches"], true, "{report}");
    assert_eq!(report["server"]["embedded"], false);
    assert!(report["write_rate_per_s"].as_f64().unwrap() > 0.0);
    assert!(report["elapsed_s"].as_f64().unwrap() > 0.0);
    // Each writer's opening round does every action once.
    let actions = report["actions"].as_object().unwrap();
    assert_eq!(actions.len(), 10, "{report}");
    assert_eq!(
        actions.values().map(|n| n.as_u64().unwrap()).sum::<u64>(),
        40
    );
    // The replica was made for the run and is gone.
    let replica = report["replica_database"].as_str().unwrap();
    assert!(replica.starts_with("oplog_demo_replica_"), "{replica}");
    assert!(!database_exists(replica), "{replica} was not dropped");

    // The log: one entry per transaction on two aggregates, each with its
    // actor and request id, holding every kind of operation.
    assert_eq!(db.scalar::<i64>("SELECT count(*) FROM oplog_entry"), 40);
    assert_eq!(
        db.scalar::<i64>("SELECT count(DISTINCT aggregate_name) FROM oplog_entry"),
        2
    );
    for key in ["actor", "request_id", "action"] {
        let with_key: i64 = db
            .client()
            .query_one(
                "SELECT count(DISTINCT entry_id) FROM oplog_metadata WHERE key = $1",
                &[&key],
            )
            .unwrap()
            .get(0);
        assert_eq!(with_key, 40, "{key}");
    }
    let reader = Oplog::new(
        oplog::demo::user_catalog(),
        Keyring::load(Path::new(&keys)).unwrap(),
    );
    let entries = reader.list(&mut db.client(), None, 0, None).unwrap();
    let ops: Vec<_> = entries.iter().flat_map(|e| &e.operations).collect();
    for kind in [
        OpType::Create,
        OpType::CreateItems,
        OpType::Update,
        OpType::Delete,
        OpType::DeleteItems,
    ] {
        assert!(ops.iter().any(|o| o.op == kind), "no {kind:?}");
    }
    assert!(ops.iter().any(|o| !o.null_mask.is_empty()), "no null path");
    assert!(ops.iter().any(|o| o.type_name == "demo.v1.Invoice"));
    // The domain rows are really there.
    assert!(db.scalar::<i64>("SELECT count(*) FROM demo_account") > 0);
}

#[test]
fn demo_no_replay_only_writes_and_retries_lost_races() {
    let db = TestDb::new();
    let dir = TempDir::new();
    let keys = save_keyring(&Keyring::generate(), &dir.join("keys.json"));
    let out = oplog_cmd()
        .args(["--database-url", &db.url, "--key-file", &keys])
        .args(["--json", "demo", "--no-replay"])
        .args([
            "--optimistic",
            "--writers",
            "3",
            "--entries",
            "15",
            "--aggregates",
            "1",
        ])
        .output()
        .unwrap();
    let report = json(&success(&out));
    assert_eq!(report["entries_written"], 45, "{report}");
    assert_eq!(report["lock_mode"], "optimistic");
    assert_eq!(report["replayed"], 0);
    assert_eq!(report["replica_database"], Value::Null);
    assert_eq!(report["verify_findings"], Value::Null);
    assert_eq!(report["replica_matches"], Value::Null);
    // Every commit left exactly one entry and one ticket version, however
    // many attempts it took.
    assert_eq!(db.scalar::<i64>("SELECT count(*) FROM oplog_entry"), 45);
    assert_eq!(
        db.scalar::<i64>("SELECT max(version) FROM oplog_ticket WHERE name LIKE 'tenant-%'"),
        45
    );

    // Text: a summary without a replay, adding to the log with its keys.
    let out = oplog_cmd()
        .args(["--database-url", &db.url, "--key-file", &keys])
        .args(["demo", "--no-replay"])
        .args(["--writers", "1", "--entries", "3"])
        .output()
        .unwrap();
    let stdout = success(&out);
    assert!(
        stdout.starts_with("demo: 1 writer x 3 transactions on 4 tenants (pessimistic locking)"),
        "{stdout}"
    );
    assert!(stdout.contains("wrote     3 entries"), "{stdout}");
    assert!(stdout.contains("no replay (--no-replay)"), "{stdout}");
}

#[test]
fn demo_without_a_database_url_runs_on_a_private_cluster_and_removes_it() {
    let tmp = TempDir::new();
    let out = in_tmp(&tmp)
        .args(["demo", "--json", "--writers", "2", "--entries", "15"])
        .output()
        .unwrap();
    let report = json(&success(&out));
    assert_eq!(report["server"]["embedded"], true, "{report}");
    assert_eq!(report["entries_written"], 30);
    assert_eq!(report["replayed"], 30);
    assert_eq!(report["replica_matches"], true, "{report}");
    assert_eq!(report["verify_findings"], 0);
    let dir = PathBuf::from(report["server"]["cluster_dir"].as_str().unwrap());
    assert!(dir.starts_with(tmp.join("")), "{}", dir.display());
    assert!(!dir.exists(), "{} is left behind", dir.display());
    assert_eq!(processes_mentioning(&dir), Vec::<String>::new());
}

#[test]
fn demo_keep_leaves_a_stopped_cluster_that_starts_again() {
    let tmp = TempDir::new();
    let out = in_tmp(&tmp)
        .args([
            "demo",
            "--json",
            "--keep",
            "--writers",
            "1",
            "--entries",
            "12",
        ])
        .output()
        .unwrap();
    let report = json(&success(&out));
    let server = &report["server"];
    assert_eq!(server["kept"], true, "{report}");
    let dir = PathBuf::from(server["cluster_dir"].as_str().unwrap());
    let data = dir.join("data");
    assert!(data.join("PG_VERSION").exists());
    assert!(!data.join("postmaster.pid").exists(), "stopped");
    assert_eq!(processes_mentioning(&dir), Vec::<String>::new());

    // The command it printed starts it again, with the demo's data.
    let start = server["start_command"].as_str().unwrap();
    let status = Command::new("sh")
        .args(["-c", start])
        .current_dir(tmp.join(""))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "{start}");
    let url = oplog::bench::with_database(server["url"].as_str().unwrap(), "oplog_demo");
    let entries: i64 = postgres::Client::connect(&url, postgres::NoTls)
        .unwrap()
        .query_one("SELECT count(*) FROM oplog_entry", &[])
        .unwrap()
        .get(0);
    assert_eq!(entries, 12);
    // Stop it (fast shutdown); the temporary directory goes with `tmp`.
    let pid = fs::read_to_string(data.join("postmaster.pid")).unwrap();
    let pid = pid.lines().next().unwrap();
    assert!(Command::new("kill")
        .args(["-INT", pid])
        .status()
        .unwrap()
        .success());
    let deadline = Instant::now() + Duration::from_secs(30);
    while data.join("postmaster.pid").exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!data.join("postmaster.pid").exists());
}

#[test]
fn an_interrupted_demo_removes_its_private_cluster() {
    let tmp = TempDir::new();
    let mut child = in_tmp(&tmp)
        .args(["demo", "--writers", "2", "--entries", "1000000"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the cluster's server runs and the writers have started.
    let deadline = Instant::now() + Duration::from_secs(60);
    let dir = loop {
        let found = fs::read_dir(tmp.join(""))
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .find(|p| p.join("data/postmaster.pid").exists());
        if let Some(dir) = found {
            break dir;
        }
        assert!(Instant::now() < deadline, "no cluster started");
        assert!(child.try_wait().unwrap().is_none(), "the demo ended early");
        std::thread::sleep(Duration::from_millis(50));
    };
    std::thread::sleep(Duration::from_millis(1500));
    assert!(!processes_mentioning(&dir).is_empty(), "the server runs");

    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap()
        .success());
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the demo did not stop");
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = child.wait_with_output().unwrap();
    assert_eq!(status.code(), Some(130), "{}", text(&out.stderr));
    assert!(!dir.exists(), "{} is left behind", dir.display());
    assert_eq!(processes_mentioning(&dir), Vec::<String>::new());
}

#[test]
fn demo_errors_are_one_line_saying_what_to_do() {
    failure(
        &oplog_cmd()
            .args([
                "demo",
                "--database-url",
                "postgres://postgres@127.0.0.1:1/nope",
            ])
            .output()
            .unwrap(),
        &["connect"],
    );

    // No server binaries where OPLOG_PG_BIN points: how to get them.
    let tmp = TempDir::new();
    failure(
        &in_tmp(&tmp)
            .env("OPLOG_PG_BIN", tmp.join(""))
            .args(["demo", "--writers", "1", "--entries", "1"])
            .output()
            .unwrap(),
        &[
            "no PostgreSQL server binaries",
            "apt-get install postgresql",
            "--database-url",
        ],
    );
    assert_eq!(
        fs::read_dir(tmp.join("")).unwrap().count(),
        0,
        "nothing created"
    );

    failure(
        &oplog_cmd()
            .args(["demo", "--writers", "0"])
            .output()
            .unwrap(),
        &["--writers"],
    );
}

#[test]
fn demo_adds_to_an_existing_log_only_with_its_key_file() {
    // A log written by an application: one user, with its row.
    let db = TestDb::new();
    let dir = TempDir::new();
    let ring = Keyring::generate();
    let key_id = ring.key_id().to_string();
    let keys = save_keyring(&ring, &dir.join("keys.json"));
    let other = save_keyring(&Keyring::generate(), &dir.join("other.json"));
    let writer = Oplog::new(oplog::demo::user_catalog(), ring);
    let mut client = db.client();
    let mut tx = client.transaction().unwrap();
    let u = user("u1");
    tx.execute(oplog::demo::INSERT_USER, &u.params()).unwrap();
    let mut entry = NewEntry::new("tenant-x");
    entry.create(&u).unwrap();
    let id = writer.write(&mut tx, &entry).unwrap().id;
    tx.commit().unwrap();
    let tickets = || db.scalar::<i64>("SELECT count(*) FROM oplog_ticket");
    let before = tickets();
    let demo = |key_file: Option<&str>, replay: bool| {
        let mut cmd = oplog_cmd();
        cmd.args(["--database-url", &db.url, "--json"]).args([
            "demo",
            "--writers",
            "1",
            "--entries",
            "3",
        ]);
        if let Some(keys) = key_file {
            cmd.args(["--key-file", keys]);
        }
        if !replay {
            cmd.arg("--no-replay");
        }
        cmd.output().unwrap()
    };

    // Without a key file, the demo would write under a throwaway key that
    // no reader of this log holds: refused, with and without replay.
    for replay in [false, true] {
        failure(
            &demo(None, replay),
            &[
                "already holds an oplog",
                &format!("newest entry, id {id}, is under key {key_id}"),
                "pass the key file that wrote the log (--key-file)",
            ],
        );
    }
    // A key file without the log's key is refused as well.
    failure(
        &demo(Some(&other), false),
        &[
            &format!("under key {key_id}, which the key file does not hold"),
            "--key-file",
        ],
    );
    // Nothing was written: no entry, no ticket.
    assert_eq!(db.scalar::<i64>("SELECT count(*) FROM oplog_entry"), 1);
    assert_eq!(tickets(), before);

    // With the log's own key file the demo adds to it, and its replay and
    // verification cover the earlier entry too.
    let report = json(&success(&demo(Some(&keys), false)));
    assert_eq!(report["entries_written"], 3, "{report}");
    let report = json(&success(&demo(Some(&keys), true)));
    assert_eq!(report["replayed"], 7, "{report}");
    assert_eq!(report["verify_findings"], 0, "{report}");
    assert_eq!(report["replica_matches"], true, "{report}");
    let verify = oplog_cmd()
        .args(["verify", "--database-url", &db.url, "--key-file", &keys])
        .output()
        .unwrap();
    success(&verify);
}

#[test]
fn bench_replay_json_reports_its_rate_against_its_baseline() {
    let check = |report: &Value| {
        assert_eq!(report["scenario"], "replay", "{report}");
        let rate = report["rate_per_s"].as_f64().unwrap();
        let baseline = report["baseline_per_s"].as_f64().unwrap();
        assert!(rate > 0.0 && baseline > 0.0, "{report}");
        let ratio = report["ratio"].as_f64().unwrap();
        assert!((ratio - rate / baseline).abs() < 1e-9, "{report}");
    };
    let out = oplog_cmd()
        .args(["--database-url", &admin_url(), "--json", "bench", "replay"])
        .args(["--entries", "200", "--aggregates", "2"])
        .output()
        .unwrap();
    let report = json(&success(&out));
    check(&report);
    assert_eq!(report["entries"], 200);
    assert_eq!(report["aggregates"], 2);

    // Without a URL, on a private cluster that is removed afterwards.
    let tmp = TempDir::new();
    let out = in_tmp(&tmp)
        .args(["--json", "bench", "replay", "--entries", "50"])
        .output()
        .unwrap();
    check(&json(&success(&out)));
    assert_eq!(
        fs::read_dir(tmp.join("")).unwrap().count(),
        0,
        "cluster removed"
    );
}

#[test]
fn bench_follow_json_reports_lag_and_catch_up_next_to_logical_replication() {
    let out = oplog_cmd()
        .args(["--database-url", &admin_url(), "--json", "bench", "follow"])
        .args(["--seconds", "0.5", "--rate", "100", "--writers", "2"])
        .arg("--notify")
        .output()
        .unwrap();
    let report = json(&success(&out));
    assert_eq!(report["scenario"], "follow", "{report}");
    assert_eq!(report["notify"], true, "{report}");
    assert!(report["rate_per_s"].as_f64().unwrap() > 0.0, "{report}");
    let follower = &report["follower"];
    assert_eq!(follower["method"], "oplog follow");
    assert!(follower["lag_p99_ms"].as_f64().unwrap() >= follower["lag_p50_ms"].as_f64().unwrap());
    match report["logical"].as_object() {
        // Built-in logical replication ran beside the follower.
        Some(logical) => {
            assert_eq!(logical["method"], "logical replication");
            let ratio = report["ratio"].as_f64().unwrap();
            let rate = report["rate_per_s"].as_f64().unwrap();
            let baseline = report["baseline_per_s"].as_f64().unwrap();
            assert!((ratio - rate / baseline).abs() < 1e-9, "{report}");
        }
        // The server cannot: the report says why.
        None => assert!(
            report["logical_unavailable"]
                .as_str()
                .unwrap()
                .contains("wal_level"),
            "{report}"
        ),
    }
}

#[test]
fn bench_verify_json_reports_verify_against_replay_and_the_memory_of_large_entries() {
    let out = oplog_cmd()
        .args(["--database-url", &admin_url(), "--json", "bench", "verify"])
        .args([
            "--entries",
            "600",
            "--small-entries",
            "200",
            "--aggregates",
            "30",
        ])
        .args(["--big-entries", "2", "--big-entry-mib", "2"])
        .output()
        .unwrap();
    let report = json(&success(&out));
    assert_eq!(report["scenario"], "verify", "{report}");
    assert_eq!(report["entries"], 600);
    let rate = report["rate_per_s"].as_f64().unwrap();
    let replay = report["baseline_per_s"].as_f64().unwrap();
    assert!(rate > 0.0 && replay > 0.0, "{report}");
    assert!((report["ratio"].as_f64().unwrap() - rate / replay).abs() < 1e-9);
    let small = report["small_rate_per_s"].as_f64().unwrap();
    assert!((report["cost_ratio"].as_f64().unwrap() - small / rate).abs() < 1e-9);
    assert!(report["replay_ratio"].as_f64().unwrap() > 0.0, "{report}");
    // The children's memory was measured, and holds at least the entries
    // they read.
    assert!(report["max_rss_mb"].as_f64().unwrap() > 2.0, "{report}");
}
