//! The `oplog` binary, run as a subprocess: keys, migrations, listing the
//! log, and the one-line errors that exit with status 2.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use oplog::demo::{Account, User};
use oplog::{Keyring, NewEntry, Oplog, TableInfo, Wrapper, Written};
use serde_json::{json, Value};

use crate::support::{user, TestDb};

/// A directory of its own under the system's temporary directory, removed
/// when dropped.
pub(crate) struct TempDir(PathBuf);

impl TempDir {
    pub(crate) fn new() -> TempDir {
        let path =
            std::env::temp_dir().join(format!("oplog-cli-{}", uuid::Uuid::new_v4().simple()));
        fs::create_dir(&path).unwrap();
        TempDir(path)
    }

    pub(crate) fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// The binary, with the connection settings of the test environment
/// removed so that every test says what it uses.
pub(crate) fn oplog_cmd() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_oplog"));
    cmd.env_remove("DATABASE_URL").env_remove("OPLOG_KEY_FILE");
    cmd
}

fn run(args: &[&str]) -> Output {
    oplog_cmd().args(args).output().unwrap()
}

/// Runs `oplog <args> --database-url URL --key-file KEYS`.
pub(crate) fn run_against(url: &str, keys: &str, args: &[&str]) -> Output {
    oplog_cmd()
        .args(args)
        .args(["--database-url", url, "--key-file", keys])
        .output()
        .unwrap()
}

pub(crate) fn text(bytes: &[u8]) -> String {
    String::from_utf8(bytes.to_vec()).unwrap()
}

/// Asserts a clean success and returns standard output.
pub(crate) fn success(out: &Output) -> String {
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout: {}\nstderr: {}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert_eq!(text(&out.stderr), "");
    text(&out.stdout)
}

/// Asserts exit status 2 with exactly one line on standard error, in the
/// `oplog: error: ` form, mentioning each of `needles`; returns the line.
pub(crate) fn failure(out: &Output, needles: &[&str]) -> String {
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.ends_with('\n'), "{stderr:?}");
    assert!(stderr.starts_with("oplog: error: "), "{stderr}");
    for needle in needles {
        assert!(stderr.contains(needle), "expected {needle:?} in {stderr}");
    }
    assert_eq!(text(&out.stdout), "", "nothing on stdout after an error");
    stderr.trim_end().to_string()
}

pub(crate) fn save_keyring(ring: &Keyring, path: &Path) -> String {
    ring.save(path).unwrap();
    path.to_str().unwrap().to_string()
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn write(db: &TestDb, ring: Keyring, entry: &NewEntry) -> Written {
    let oplog = Oplog::new(oplog::demo::user_catalog(), ring);
    let mut client = db.client();
    let mut tx = client.transaction().unwrap();
    let written = oplog.write(&mut tx, entry).unwrap();
    tx.commit().unwrap();
    written
}

/// A migrated database with three entries written through the library,
/// and the key file that encrypted them.
struct Fixture {
    db: TestDb,
    dir: TempDir,
    keys: String,
    key_id: String,
    written: Vec<Written>,
}

impl Fixture {
    fn new() -> Fixture {
        let db = TestDb::new();
        let dir = TempDir::new();
        let ring = Keyring::generate();
        let key_id = ring.key_id().to_string();
        let keys = save_keyring(&ring, &dir.join("keys.json"));
        let load = || Keyring::load(Path::new(&keys)).unwrap();

        let mut first = NewEntry::new("tenant-a");
        first
            .metadata("tag", "red")
            .metadata("actor", "alice")
            .metadata("tag", "blue");
        first.create(&user("u1")).unwrap();
        first
            .create(&Account {
                id: "a1".into(),
                tenant_id: "t1".into(),
                name: "Acme".into(),
                plan: "pro".into(),
                balance_cents: 1500,
                ..Default::default()
            })
            .unwrap();

        let mut second = NewEntry::new("tenant-a");
        second.metadata("actor", "bob");
        let changed = User {
            email: "new@example.com".into(),
            display_name: "New Name".into(),
            phone: None,
            ..user("u1")
        };
        second
            .update(&changed, &["email", "display_name"], &["phone"])
            .unwrap();

        let mut third = NewEntry::new("tenant-b");
        third.metadata("actor", "carol");
        third
            .delete(&User {
                id: "u2".into(),
                ..Default::default()
            })
            .unwrap();

        let written = [first, second, third]
            .iter()
            .map(|e| write(&db, load(), e))
            .collect();
        Fixture {
            db,
            dir,
            keys,
            key_id,
            written,
        }
    }

    /// Runs `oplog <args> --database-url .. --key-file ..`.
    fn run(&self, args: &[&str]) -> Output {
        run_against(&self.db.url, &self.keys, args)
    }

    /// `oplog log --json <args>`, one value per line.
    fn log_json(&self, args: &[&str]) -> Vec<Value> {
        let out = self.run(&[&["log", "--json"][..], args].concat());
        success(&out)
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect()
    }
}

fn seqs(entries: &[Value]) -> Vec<(String, i64)> {
    entries
        .iter()
        .map(|e| {
            (
                e["aggregate"].as_str().unwrap().to_string(),
                e["seq"].as_i64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn keys_generate_out_writes_an_owner_only_file_and_refuses_to_overwrite_it() {
    let dir = TempDir::new();
    let path = dir.join("keys.json");
    let path_str = path.to_str().unwrap();

    let stdout = success(&run(&["keys", "generate", "--out", path_str]));
    assert_eq!(mode(&path), 0o600);
    let ring = Keyring::load(&path).unwrap();
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert!(stdout.contains(ring.key_id()), "{stdout}");
    let file: Value = serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
    let material = file["keys"][0]["key"].as_str().unwrap();
    assert!(
        !stdout.contains(material),
        "the confirmation must not show the key"
    );

    failure(
        &run(&["keys", "generate", "--out", path_str]),
        &["already exists", path_str, "--force"],
    );
    assert_eq!(
        Keyring::load(&path).unwrap().key_id(),
        ring.key_id(),
        "the existing file is untouched"
    );

    let stdout = success(&run(&[
        "keys", "generate", "--out", path_str, "--force", "--json",
    ]));
    let replaced = Keyring::load(&path).unwrap();
    assert_ne!(replaced.key_id(), ring.key_id());
    let summary: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(
        summary,
        json!({"path": path_str, "active_key": replaced.key_id(), "keys": [replaced.key_id()]})
    );
    assert_eq!(mode(&path), 0o600);
}

#[test]
fn keys_generate_without_out_prints_only_the_keyring() {
    let plain = success(&run(&["keys", "generate"]));
    let json = success(&run(&["--json", "keys", "generate"]));
    let a = Keyring::from_json(&plain).unwrap();
    let b = Keyring::from_json(&json).unwrap();
    assert_ne!(a.key_id(), b.key_id(), "every run generates a new key");
    assert_eq!(
        a.to_json().as_str(),
        plain,
        "stdout holds the keyring file and nothing else"
    );
}

#[test]
fn keys_rotate_adds_an_active_key_and_old_entries_still_decrypt() {
    let f = Fixture::new();
    let path = Path::new(&f.keys);

    let out = oplog_cmd()
        .args(["keys", "rotate", "--json", "--key-file", &f.keys])
        .output()
        .unwrap();
    let summary: Value = serde_json::from_str(&success(&out)).unwrap();
    let ring = Keyring::load(path).unwrap();
    let new_id = ring.key_id().to_string();
    assert_ne!(new_id, f.key_id);
    assert_eq!(
        summary,
        json!({"active_key": new_id, "keys": [f.key_id, new_id]})
    );
    assert_eq!(mode(path), 0o600);

    // The key file can also come from the environment.
    let out = oplog_cmd()
        .args(["keys", "rotate"])
        .env("OPLOG_KEY_FILE", &f.keys)
        .output()
        .unwrap();
    let stdout = success(&out);
    let ring = Keyring::load(path).unwrap();
    assert!(
        stdout.contains(ring.key_id()) && stdout.contains("3 keys"),
        "{stdout}"
    );
    assert_eq!(
        ring.key_ids().collect::<Vec<_>>()[..2],
        [f.key_id.as_str(), new_id.as_str()]
    );

    let mut entry = NewEntry::new("tenant-a");
    entry.create(&user("u9")).unwrap();
    write(&f.db, Keyring::load(path).unwrap(), &entry);

    let entries = f.log_json(&["--aggregate", "tenant-a"]);
    let keys: Vec<&str> = entries
        .iter()
        .map(|e| e["key_id"].as_str().unwrap())
        .collect();
    assert_eq!(keys, [f.key_id.as_str(), f.key_id.as_str(), ring.key_id()]);
    assert_eq!(entries[0]["messages"][0]["message"]["id"], "u1");
    assert_eq!(entries[2]["messages"][0]["message"]["id"], "u9");
}

#[test]
fn migrate_applies_the_schema_once() {
    let db = TestDb::empty();
    let exists = "SELECT to_regclass('oplog_entry') IS NOT NULL";
    assert!(!db.scalar::<bool>(exists));

    let stdout = success(&run(&["migrate", "--database-url", &db.url]));
    assert!(stdout.starts_with("applied migration "), "{stdout}");
    assert!(db.scalar::<bool>(exists));

    // The URL can also come from the environment.
    let out = oplog_cmd()
        .arg("migrate")
        .env("DATABASE_URL", &db.url)
        .output()
        .unwrap();
    assert_eq!(success(&out), "schema is up to date\n");

    let stdout = success(&run(&["--json", "migrate", "--database-url", &db.url]));
    assert_eq!(
        serde_json::from_str::<Value>(&stdout).unwrap(),
        json!({"applied": []})
    );
}

#[test]
fn log_json_shows_every_field_of_every_entry() {
    let f = Fixture::new();
    let out = f.run(&["log", "--json"]);
    let stdout = success(&out);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{stdout}");
    let entries: Vec<Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();

    for (entry, written) in entries.iter().zip(&f.written) {
        assert_eq!(entry["id"], written.id);
        assert_eq!(entry["uuid"], written.uuid.to_string());
        assert_eq!(entry["aggregate"], written.aggregate);
        assert_eq!(entry["seq"], written.seq);
        assert_eq!(entry["key_id"], f.key_id);
        let created = humantime::parse_rfc3339(entry["created_at"].as_str().unwrap()).unwrap();
        let age = std::time::SystemTime::now()
            .duration_since(created)
            .unwrap_or_default();
        assert!(age.as_secs() < 600, "created_at {created:?} is recent");
    }
    assert_eq!(
        seqs(&entries),
        [
            ("tenant-a".into(), 1),
            ("tenant-a".into(), 2),
            ("tenant-b".into(), 1)
        ]
    );

    // Metadata: an object of arrays, keys in order of first appearance.
    assert_eq!(
        entries[0]["metadata"],
        json!({"tag": ["red", "blue"], "actor": ["alice"]})
    );
    assert!(
        lines[0].contains(r#""metadata":{"tag":["red","blue"],"actor":["alice"]}"#),
        "{}",
        lines[0]
    );

    let created = &entries[0]["messages"];
    assert_eq!(created.as_array().unwrap().len(), 2);
    assert_eq!(created[0]["type_name"], "demo.v1.User");
    assert_eq!(created[0]["op"], "OP_TYPE_CREATE");
    assert_eq!(created[0]["field_mask"], json!([]));
    assert_eq!(created[0]["null_mask"], json!([]));
    let u1 = &created[0]["message"];
    assert_eq!(u1["id"], "u1");
    assert_eq!(u1["email"], "u1@example.com");
    assert_eq!(u1["display_name"], "User u1");
    assert_eq!(u1["phone"], "+1 555 0100");
    assert_eq!(u1["age"], 42);
    assert_eq!(u1["active"], true);
    assert_eq!(u1["avatar"], "AQID");
    let a1 = &created[1];
    assert_eq!(
        (a1["type_name"].as_str(), a1["op"].as_str()),
        (Some("demo.v1.Account"), Some("OP_TYPE_CREATE"))
    );
    assert_eq!(a1["message"]["name"], "Acme");
    assert_eq!(
        a1["message"]["balance_cents"], "1500",
        "64-bit integers are strings"
    );

    let update = &entries[1]["messages"][0];
    assert_eq!(entries[1]["metadata"], json!({"actor": ["bob"]}));
    assert_eq!(update["op"], "OP_TYPE_UPDATE");
    assert_eq!(update["field_mask"], json!(["email", "display_name"]));
    assert_eq!(update["null_mask"], json!(["phone"]));
    assert_eq!(update["message"]["email"], "new@example.com");
    assert_eq!(update["message"]["display_name"], "New Name");
    assert!(
        update["message"].get("phone").is_none(),
        "an unset optional field is left out"
    );

    let delete = &entries[2]["messages"][0];
    assert_eq!(delete["op"], "OP_TYPE_DELETE");
    assert_eq!(delete["message"]["id"], "u2");
    // Fields at their default value are printed, so every message is complete.
    assert_eq!(delete["message"]["email"], "");
    assert_eq!(delete["message"]["active"], false);
}

#[test]
fn log_filters_by_aggregate_after_and_limit() {
    let f = Fixture::new();
    let a = |seq: i64| ("tenant-a".to_string(), seq);
    let b = |seq: i64| ("tenant-b".to_string(), seq);

    assert_eq!(
        seqs(&f.log_json(&["--aggregate", "tenant-a"])),
        [a(1), a(2)]
    );
    assert_eq!(seqs(&f.log_json(&["--aggregate", "tenant-b"])), [b(1)]);
    assert_eq!(
        seqs(&f.log_json(&["--aggregate", "tenant-a", "--after", "1"])),
        [a(2)]
    );
    assert!(f
        .log_json(&["--aggregate", "tenant-a", "--after", "2"])
        .is_empty());
    assert_eq!(
        seqs(&f.log_json(&["--aggregate", "tenant-a", "--limit", "1"])),
        [a(1)]
    );
    assert_eq!(seqs(&f.log_json(&["--limit", "2"])), [a(1), a(2)]);
    assert_eq!(seqs(&f.log_json(&["--after", "1"])), [a(2)]);
    assert!(f.log_json(&["--aggregate", "nope"]).is_empty());

    // Global options work before the command as well as after it.
    let before = oplog_cmd()
        .args([
            "--json",
            "--key-file",
            &f.keys,
            "--database-url",
            &f.db.url,
            "log",
            "--limit",
            "1",
        ])
        .output()
        .unwrap();
    let line: Value = serde_json::from_str(&success(&before)).unwrap();
    assert_eq!(line["id"], f.written[0].id);
}

#[test]
fn log_text_shows_a_block_per_entry() {
    let f = Fixture::new();
    let stdout = success(&f.run(&["log"]));
    let blocks: Vec<&str> = stdout.trim_end().split("\n\n").collect();
    assert_eq!(blocks.len(), 3, "{stdout}");
    for (block, w) in blocks.iter().zip(&f.written) {
        let header = format!("#{} {} seq {} key {} ", w.id, w.aggregate, w.seq, f.key_id);
        assert!(block.starts_with(&header), "{block}");
    }

    let first: Vec<&str> = blocks[0].lines().collect();
    assert_eq!(first.len(), 4, "{}", blocks[0]);
    assert_eq!(first[1], "  tag=red actor=alice tag=blue");
    assert!(
        first[2].starts_with(r#"  OP_TYPE_CREATE demo.v1.User {"id":"u1","#),
        "{}",
        first[2]
    );
    assert!(
        first[3].starts_with(r#"  OP_TYPE_CREATE demo.v1.Account {"id":"a1","#),
        "{}",
        first[3]
    );

    let update = blocks[1].lines().nth(2).unwrap();
    assert!(
        update.starts_with("  OP_TYPE_UPDATE demo.v1.User mask: email,display_name null: phone {"),
        "{update}"
    );
    assert!(update.contains(r#""email":"new@example.com""#), "{update}");
}

/// A pipe whose only reader has exited, as when `oplog log | head -1` has
/// read its line: every write to it fails with EPIPE.
pub(crate) fn closed_pipe() -> Stdio {
    let mut reader = Command::new("true").stdin(Stdio::piped()).spawn().unwrap();
    let pipe = reader.stdin.take().unwrap();
    reader.wait().unwrap();
    Stdio::from(pipe)
}

/// Runs `cmd` to its end, or kills it and fails the test when it has not
/// ended within `secs` seconds (a command that blocks on its input).
pub(crate) fn run_bounded(cmd: &mut Command, secs: u64) -> Output {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            child.kill().unwrap();
            let out = child.wait_with_output().unwrap();
            panic!(
                "{cmd:?} did not end within {secs} s; stderr: {}",
                text(&out.stderr)
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

#[test]
fn output_into_a_closed_pipe_exits_quietly() {
    let f = Fixture::new();
    for args in [
        &["log"][..],
        &["log", "--json"],
        &["keys", "generate"],
        &["--help"],
    ] {
        let out = oplog_cmd()
            .args(args)
            .args(["--database-url", &f.db.url, "--key-file", &f.keys])
            .stdout(closed_pipe())
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{args:?}: {}",
            text(&out.stderr)
        );
        assert_eq!(text(&out.stderr), "", "{args:?}");
    }
}

#[test]
fn unreachable_or_missing_database_is_a_one_line_error() {
    let dir = TempDir::new();
    let keys = save_keyring(&Keyring::generate(), &dir.join("keys.json"));
    let unreachable = "postgres://postgres@127.0.0.1:1/nope";

    failure(
        &run(&["log", "--database-url", unreachable, "--key-file", &keys]),
        &["database", "connect"],
    );
    failure(
        &run(&["migrate", "--database-url", unreachable]),
        &["cannot connect"],
    );

    let no_url = "no database URL: pass --database-url or set DATABASE_URL";
    assert_eq!(
        failure(&run(&["migrate"]), &[]),
        format!("oplog: error: {no_url}")
    );
    failure(&run(&["log", "--key-file", &keys]), &[no_url]);

    // A database without the oplog's tables says how to create them.
    let db = TestDb::empty();
    failure(
        &run(&["log", "--database-url", &db.url, "--key-file", &keys]),
        &["oplog_entry", "oplog migrate"],
    );
}

#[test]
fn key_file_problems_are_one_line_errors() {
    let f = Fixture::new();
    let missing = f.dir.join("missing.json");
    let missing = missing.to_str().unwrap();
    let url = f.db.url.as_str();

    failure(
        &run(&["log", "--database-url", url]),
        &["no key file: pass --key-file or set OPLOG_KEY_FILE"],
    );
    failure(&run(&["keys", "rotate"]), &["no key file"]);
    failure(
        &run(&["log", "--database-url", url, "--key-file", missing]),
        &["cannot read key file", missing, "oplog keys generate"],
    );
    failure(
        &run(&["keys", "rotate", "--key-file", missing]),
        &["cannot read key file", missing],
    );

    fs::set_permissions(&f.keys, fs::Permissions::from_mode(0o644)).unwrap();
    failure(
        &run(&["log", "--database-url", url, "--key-file", &f.keys]),
        &["readable by group or others", "chmod 600"],
    );
    failure(
        &run(&["keys", "rotate", "--key-file", &f.keys]),
        &["chmod 600"],
    );
    fs::set_permissions(&f.keys, fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(
        Keyring::load(Path::new(&f.keys)).unwrap().key_ids().count(),
        1,
        "a refused rotation changes nothing"
    );
}

#[test]
fn a_wrong_key_is_an_error_naming_the_entry() {
    let f = Fixture::new();
    let first = format!("entry {} (aggregate \"tenant-a\", seq 1)", f.written[0].id);

    // Another keyring does not hold the key the entries were written with;
    // the command line says which option brings it.
    let other = save_keyring(&Keyring::generate(), &f.dir.join("other.json"));
    let out = run(&["log", "--database-url", &f.db.url, "--key-file", &other]);
    failure(
        &out,
        &[
            &format!("key {:?} is not in the keyring", f.key_id),
            &first,
            "pass a key file that holds it with --key-file",
        ],
    );

    // A key with the right id but the wrong material fails authentication.
    let forged = Keyring::from_key(&f.key_id, [7; 32]).unwrap();
    let forged = save_keyring(&forged, &f.dir.join("forged.json"));
    let out = run(&[
        "log",
        "--json",
        "--database-url",
        &f.db.url,
        "--key-file",
        &forged,
    ]);
    failure(
        &out,
        &[
            &first,
            "failed authentication",
            "run `oplog verify` to find every entry affected",
        ],
    );
}

#[test]
fn usage_errors_exit_2_with_one_line() {
    failure(&run(&["nope"]), &["unrecognized subcommand 'nope'"]);
    failure(&run(&["log", "--nope"]), &["unexpected argument '--nope'"]);
    failure(&run(&[]), &["requires a subcommand"]);
    failure(&run(&["keys"]), &["'oplog keys' requires a subcommand"]);
    failure(&run(&["log", "--limit", "-1"]), &["--limit"]);
    failure(&run(&["log", "--after", "x"]), &["--after"]);
    failure(&run(&["keys", "generate", "--force"]), &["--out"]);

    // Help and version are not errors.
    let help = success(&run(&["--help"]));
    assert!(
        help.contains("Usage: oplog") && help.contains("--database-url"),
        "{help}"
    );
    let version = success(&run(&["--version"]));
    assert_eq!(version, format!("oplog {}\n", env!("CARGO_PKG_VERSION")));
}

#[test]
fn bench_write_reports_rates_against_its_baseline() {
    let url = crate::support::admin_url();
    let out = run(&[
        "--database-url",
        &url,
        "--json",
        "bench",
        "write",
        "--seconds",
        "0.3",
    ]);
    let report: Value = serde_json::from_str(success(&out).trim()).unwrap();
    assert_eq!(report["scenario"], "write");
    let rate = report["rate_per_s"].as_f64().unwrap();
    let baseline = report["baseline_per_s"].as_f64().unwrap();
    assert!(rate > 0.0 && baseline > 0.0, "{report}");
    let ratio = report["ratio"].as_f64().unwrap();
    assert!((ratio - rate / baseline).abs() < 1e-9, "{report}");
    // The same over tokio-postgres, against that driver's bare transaction.
    let tokio_rate = report["tokio_with_entry"]["rate_per_s"].as_f64().unwrap();
    let tokio_baseline = report["tokio_bare"]["rate_per_s"].as_f64().unwrap();
    assert!(tokio_rate > 0.0 && tokio_baseline > 0.0, "{report}");
    let tokio_ratio = report["tokio_ratio"].as_f64().unwrap();
    assert!(
        (tokio_ratio - tokio_rate / tokio_baseline).abs() < 1e-9,
        "{report}"
    );
    // And over sqlx.
    let sqlx_rate = report["sqlx_with_entry"]["rate_per_s"].as_f64().unwrap();
    let sqlx_baseline = report["sqlx_bare"]["rate_per_s"].as_f64().unwrap();
    assert!(sqlx_rate > 0.0 && sqlx_baseline > 0.0, "{report}");
    let sqlx_ratio = report["sqlx_ratio"].as_f64().unwrap();
    assert!(
        (sqlx_ratio - sqlx_rate / sqlx_baseline).abs() < 1e-9,
        "{report}"
    );
    // The scratch database is gone afterwards.
    let mut admin = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    let left: i64 = admin
        .query_one(
            "SELECT count(*) FROM pg_database WHERE datname LIKE 'oplog_bench_%'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(left, 0);

    let out = run(&[
        "--database-url",
        &url,
        "bench",
        "contention",
        "--seconds",
        "0",
        "--writers",
        "2",
    ]);
    failure(&out, &["seconds must be a positive number"]);
}

#[test]
fn replay_reports_what_it_applied_and_exits_2_naming_a_stopped_aggregate() {
    let f = Fixture::new();
    let out = f.run(&["replay", "--suffix", "_r", "--json"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("oplog: error: replay of aggregate \"tenant-b\" stopped at seq 1"),
        "{stderr}"
    );
    assert!(
        stderr.contains("DELETE matched no row on table demo_user_r"),
        "{stderr}"
    );
    // The report comes first, on stdout: tenant-a applied, tenant-b stopped.
    let report: Value = serde_json::from_str(text(&out.stdout).trim()).unwrap();
    assert_eq!(report["entries_applied"], 2);
    assert_eq!(
        report["aggregates"],
        json!([{"aggregate": "tenant-a", "from_seq": 0, "to_seq": 2}])
    );
    assert_eq!(report["stopped"][0]["aggregate"], "tenant-b");
    assert_eq!(
        report["tables_created"],
        json!(["demo_account_r", "demo_user_r"])
    );
    let email: String = f.db.scalar("SELECT email FROM demo_user_r WHERE id = 'u1'");
    assert_eq!(email, "new@example.com");

    // A replay needs a target.
    failure(&f.run(&["replay"]), &["--into", "--suffix"]);
    failure(
        &f.run(&["replay", "--suffix", "_r\"; --"]),
        &["suffix", "letters, digits and underscores"],
    );
}

/// Writes `n` entries of one user each, round-robin over `aggregates`, with
/// their rows.
fn write_users(db: &TestDb, ring: &Keyring, aggregates: &[&str], n: usize) {
    let oplog = Oplog::new(
        oplog::demo::user_catalog(),
        Keyring::from_json(&ring.to_json()).unwrap(),
    );
    let mut client = db.client();
    for i in 0..n {
        let u = user(&format!("u{i}"));
        let mut tx = client.transaction().unwrap();
        tx.execute(
            "INSERT INTO demo_user (id, tenant_id, account_id, email, avatar) VALUES ($1, $2, $3, $4, '')",
            &[&u.id, &u.tenant_id, &u.account_id, &u.email],
        )
        .unwrap();
        let mut entry = NewEntry::new(aggregates[i % aggregates.len()]);
        entry
            .create(&User {
                display_name: String::new(),
                phone: None,
                age: None,
                avatar: Vec::new(),
                ..u
            })
            .unwrap();
        oplog.write(&mut tx, &entry).unwrap();
        tx.commit().unwrap();
    }
}

#[test]
fn replay_killed_with_sigkill_and_resumed_applies_every_entry_exactly_once() {
    const ENTRIES: i64 = 600;
    let db = TestDb::new();
    let replica = TestDb::empty();
    let dir = TempDir::new();
    let ring = Keyring::generate();
    let keys = save_keyring(&ring, &dir.join("keys.json"));
    write_users(
        &db,
        &ring,
        &["tenant-a", "tenant-b", "tenant-c"],
        usize::try_from(ENTRIES).unwrap(),
    );
    let replay = || {
        oplog_cmd()
            .args(["replay", "--into", &replica.url, "--batch-size", "1"])
            .args(["--database-url", &db.url, "--key-file", &keys])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let applied = || -> i64 {
        let mut c = replica.client();
        c.query_one(
            "SELECT coalesce(sum(seq), 0)::bigint FROM oplog_checkpoint WHERE to_regclass('oplog_checkpoint') IS NOT NULL",
            &[],
        )
        .map(|r| r.get(0))
        .unwrap_or(0)
    };
    let mut kills = 0;
    for round in 1..=3_i64 {
        let mut child = replay();
        // Kill it once it has committed some entries of this round.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while applied() < round * 60 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap();
            kills += 1;
        }
        child.wait().unwrap();
        // Whatever the moment of the kill, the replica holds exactly the
        // rows its checkpoints cover.
        let rows: i64 = replica.scalar("SELECT count(*) FROM demo_user");
        assert_eq!(rows, applied(), "round {round}");
    }
    assert!(
        kills >= 1,
        "the replay should have been killed at least once"
    );
    assert!(applied() < ENTRIES, "killed before the end");
    let out = oplog_cmd()
        .args([
            "replay",
            "--into",
            &replica.url,
            "--database-url",
            &db.url,
            "--key-file",
            &keys,
        ])
        .output()
        .unwrap();
    success(&out);
    let rows = |c: &mut postgres::Client| -> Vec<String> {
        c.query(
            "SELECT row_to_json(t)::text FROM demo_user t ORDER BY id",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
    };
    assert_eq!(rows(&mut replica.client()), rows(&mut db.client()));
    assert_eq!(applied(), ENTRIES);
}

#[test]
fn commands_read_only_the_catalogs_stored_in_the_database() {
    // An application whose catalog maps demo.v1.Account onto its own table,
    // and which has a table of its own named demo_user that no catalog of
    // its log mentions.
    let db = TestDb::empty();
    oplog::migrate_url(&db.url).unwrap();
    db.client()
        .batch_execute(
            "CREATE TABLE shop_account (id text PRIMARY KEY, tenant_id text NOT NULL, \
             name text NOT NULL, plan text NOT NULL DEFAULT 'free', \
             balance_cents bigint NOT NULL DEFAULT 0, created_at timestamptz, closed_reason text);
             CREATE TABLE demo_user (id bigint PRIMARY KEY, nickname text);
             INSERT INTO demo_user VALUES (1, 'not a demo user');",
        )
        .unwrap();
    let mut catalog = oplog::demo::catalog_of(&[]);
    catalog
        .register_table("demo.v1.Account", TableInfo::new("shop_account", &["id"]))
        .unwrap();
    let dir = TempDir::new();
    let ring = Keyring::generate();
    let keys = save_keyring(&ring, &dir.join("keys.json"));
    let shop = Oplog::new(catalog, ring);
    let mut client = db.client();
    let mut tx = client.transaction().unwrap();
    tx.batch_execute("INSERT INTO shop_account (id, tenant_id, name) VALUES ('a1', 't1', 'Acme')")
        .unwrap();
    let mut entry = NewEntry::new("shop-1");
    entry
        .create(&Account {
            id: "a1".into(),
            tenant_id: "t1".into(),
            name: "Acme".into(),
            plan: "free".into(),
            ..Default::default()
        })
        .unwrap();
    shop.write(&mut tx, &entry).unwrap();
    tx.commit().unwrap();

    let replica = TestDb::empty();
    let out = run_against(
        &db.url,
        &keys,
        &["replay", "--into", &replica.url, "--json"],
    );
    let report: Value = serde_json::from_str(&success(&out)).unwrap();
    assert_eq!(report["tables_created"], json!(["shop_account"]));

    // Only the stored catalog's table is compared: the application's own
    // demo_user is none of the log's business, and there is no demo_account.
    let out = run_against(
        &db.url,
        &keys,
        &["verify", "--against", &replica.url, "--json"],
    );
    let report: Value = serde_json::from_str(&success(&out)).unwrap();
    let tables: Vec<&str> = report["tables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["table"].as_str().unwrap())
        .collect();
    assert_eq!(tables, ["shop_account"], "{report}");
    let stdout = success(&run_against(
        &db.url,
        &keys,
        &["verify", "--against", &replica.url],
    ));
    assert!(!stdout.contains("demo_"), "{stdout}");
    assert!(stdout.ends_with("clean\n"), "{stdout}");

    // The log is read with the catalog stored with it.
    let out = run_against(&db.url, &keys, &["log", "--json"]);
    let entry: Value = serde_json::from_str(&success(&out)).unwrap();
    assert_eq!(entry["messages"][0]["message"]["name"], "Acme");
}

/// Makes a FIFO at `path` with mode 0600, so that only its kind can refuse it.
pub(crate) fn mkfifo(path: &Path) {
    let made = Command::new("mkfifo").arg(path).status().unwrap();
    assert!(made.success());
    fs::set_permissions(path, fs::Permissions::from_mode(0o600)).unwrap();
}

#[test]
fn key_and_anchor_files_must_be_regular_files_of_bounded_size() {
    let f = Fixture::new();
    let fifo = f.dir.join("pipe");
    mkfifo(&fifo);
    let fifo = fifo.to_str().unwrap();
    let url = f.db.url.as_str();

    // Nobody ever writes to the FIFO: reading it would wait for ever.
    for args in [
        &["log", "--database-url", url][..],
        &["verify", "--database-url", url],
        &["keys", "rotate"],
    ] {
        let out = run_bounded(oplog_cmd().args(args).args(["--key-file", fifo]), 20);
        failure(&out, &["key file", fifo, "is a FIFO, not a regular file"]);
    }
    let out = run_bounded(
        oplog_cmd().args([
            "keys",
            "rotate",
            "--key-file",
            f.dir.join("").to_str().unwrap(),
        ]),
        20,
    );
    failure(&out, &["is a directory, not a regular file"]);

    let verify = |anchor: &str| {
        run_bounded(
            oplog_cmd().args(["verify", "--anchor", anchor]).args([
                "--database-url",
                url,
                "--key-file",
                &f.keys,
            ]),
            20,
        )
    };
    failure(
        &verify(fifo),
        &["anchor file", fifo, "is a FIFO, not a regular file"],
    );
    // A device that never ends is refused before a byte is read.
    failure(
        &verify("/dev/zero"),
        &["anchor file /dev/zero is a character device, not a regular file"],
    );
    // A regular file over the limit: the limit is in the error.
    let big = f.dir.join("big.anchor");
    fs::File::create(&big)
        .unwrap()
        .set_len((64 << 20) + 1)
        .unwrap();
    failure(
        &verify(big.to_str().unwrap()),
        &["anchor file", "over the limit of 67108864 bytes (64 MiB)"],
    );

    // Nothing was changed: the key file is as it was, the FIFO a FIFO.
    assert_eq!(
        Keyring::load(Path::new(&f.keys)).unwrap().key_ids().count(),
        1
    );
    use std::os::unix::fs::FileTypeExt;
    assert!(fs::symlink_metadata(fifo).unwrap().file_type().is_fifo());

    // A good anchor file still works.
    let heads = success(&f.run(&["head", "--json"]));
    let good = f.dir.join("heads.jsonl");
    fs::write(&good, heads).unwrap();
    success(&verify(good.to_str().unwrap()));
}

#[test]
fn suffixes_over_62_bytes_are_refused_before_anything_is_created() {
    let f = Fixture::new();
    let replica = TestDb::empty();
    // With the table name, any suffix over 62 bytes makes a name over
    // PostgreSQL's 63 bytes, which it would truncate.
    let long = format!("_{}", "s".repeat(62));
    let tables = |db: &TestDb| -> i64 {
        db.scalar("SELECT count(*) FROM pg_class WHERE relkind = 'r' AND relnamespace = 'public'::regnamespace")
    };
    let (source_tables, replica_tables) = (tables(&f.db), tables(&replica));
    for args in [
        &["replay", "--suffix", &long][..],
        &["replay", "--into", &replica.url, "--suffix", &long],
        &[
            "follow",
            "--into",
            &replica.url,
            "--suffix",
            &long,
            "--until-caught-up",
        ],
        &["verify", "--suffix", &long],
        &["verify", "--against", &replica.url, "--suffix", &long],
    ] {
        let out = run_bounded(
            oplog_cmd()
                .args(args)
                .args(["--database-url", &f.db.url, "--key-file", &f.keys]),
            60,
        );
        failure(&out, &["suffix", "is 63 bytes", "at most 62"]);
    }
    let checkpoint = "SELECT to_regclass('oplog_checkpoint') IS NULL";
    assert!(
        f.db.scalar::<bool>(checkpoint),
        "no checkpoint table in the source"
    );
    assert!(replica.scalar::<bool>(checkpoint), "nor in the replica");
    assert_eq!(tables(&f.db), source_tables);
    assert_eq!(tables(&replica), replica_tables);

    // A suffix that fits, into a replica database.
    success(&f.run(&[
        "replay",
        "--into",
        &replica.url,
        "--suffix",
        "_copy",
        "--aggregate",
        "tenant-a",
    ]));
    let email: String = replica.scalar("SELECT email FROM demo_user_copy WHERE id = 'u1'");
    assert_eq!(email, "new@example.com");
}

#[test]
fn urls_of_other_databases_are_refused_by_name_by_every_command() {
    let f = Fixture::new();
    let mysql = "mysql://root@127.0.0.1:3306/app";
    let refused = ["\"mysql\" is not PostgreSQL's", "postgres://"];
    // A keyring with an older key that `keys remove` may remove once it has
    // checked the database.
    let mut rotated = Keyring::load(Path::new(&f.keys)).unwrap();
    let old = f.key_id.clone();
    rotated.rotate();
    let rotated = save_keyring(&rotated, &f.dir.join("rotated.json"));

    // As the database.
    for args in [
        &["log"][..],
        &["head"],
        &["migrate"],
        &["consumers"],
        &["consumers", "remove", "replica-1"],
        &["trim", "--older-than", "1day"],
        &["grant", "reader", "nobody"],
        &["keys", "rewrap"],
        &["verify"],
        &["replay", "--suffix", "_r"],
        &[
            "follow",
            "--into",
            &f.db.url,
            "--suffix",
            "_r",
            "--until-caught-up",
        ],
        &["demo", "--writers", "1", "--entries", "1"],
        &["bench", "write", "--seconds", "0.1"],
    ] {
        let out = run_bounded(
            oplog_cmd()
                .args(args)
                .args(["--database-url", mysql, "--key-file", &f.keys]),
            60,
        );
        failure(&out, &refused);
    }
    let out = oplog_cmd()
        .args(["keys", "remove", &old, "--key-file", &rotated])
        .args(["--database-url", mysql])
        .output()
        .unwrap();
    failure(&out, &refused);
    assert_eq!(
        Keyring::load(Path::new(&rotated))
            .unwrap()
            .key_ids()
            .count(),
        2,
        "the key stays when the database could not be checked"
    );

    // As the replica, with a good source: refused before anything is
    // written anywhere.
    let empty = TestDb::empty();
    for (url, args) in [
        (&f.db.url, &["replay", "--into", mysql][..]),
        (&f.db.url, &["follow", "--into", mysql, "--until-caught-up"]),
        (&f.db.url, &["verify", "--against", mysql]),
        (
            &empty.url,
            &["demo", "--into", mysql, "--writers", "1", "--entries", "1"],
        ),
    ] {
        let out = run_bounded(
            oplog_cmd()
                .args(args)
                .args(["--database-url", url, "--key-file", &f.keys]),
            60,
        );
        failure(&out, &refused);
    }
    assert!(f
        .db
        .scalar::<bool>("SELECT to_regclass('oplog_checkpoint') IS NULL"));
    assert_eq!(f.db.scalar::<i64>("SELECT count(*) FROM oplog_consumer"), 0);
    assert!(
        empty.scalar::<bool>("SELECT to_regclass('oplog_entry') IS NULL"),
        "the demo neither migrated nor wrote"
    );

    // Library users get the same check.
    let e = oplog::migrate_url(mysql).unwrap_err().to_string();
    assert!(e.contains("\"mysql\" is not PostgreSQL's"), "{e}");
    let e = oplog::connect(mysql).err().unwrap().to_string();
    assert!(e.contains("\"mysql\" is not PostgreSQL's"), "{e}");
}

/// A log of `n` aggregates with one entry each that deletes a user no
/// table holds: every aggregate's replay stops at its entry.
fn undeletable_log(n: usize) -> (TestDb, TempDir, String) {
    let db = TestDb::new();
    let dir = TempDir::new();
    let ring = Keyring::generate();
    let keys = save_keyring(&ring, &dir.join("keys.json"));
    let oplog = Oplog::new(oplog::demo::user_catalog(), ring);
    let mut client = db.client();
    let mut tx = client.transaction().unwrap();
    for i in 0..n {
        let mut entry = NewEntry::new(format!("tenant-with-a-rather-long-name-{i:05}"));
        entry
            .delete(&User {
                id: format!("nobody-{i}"),
                ..Default::default()
            })
            .unwrap();
        oplog.write(&mut tx, &entry).unwrap();
    }
    tx.commit().unwrap();
    (db, dir, keys)
}

#[test]
fn the_exit_status_says_what_happened_when_nobody_reads_standard_output() {
    let (db, _dir, keys) = undeletable_log(500);
    let into_closed_pipe = |args: &[&str]| {
        oplog_cmd()
            .args(args)
            .args(["--database-url", &db.url, "--key-file", &keys])
            .stdout(closed_pipe())
            .output()
            .unwrap()
    };

    // Every aggregate stops: exit 2 and the one-line error, whether or not
    // anyone reads the report. The report is far longer than a pipe holds,
    // so that, as with `| head -1`, the pipe breaks while it is written.
    for json in [false, true] {
        let args: &[&str] = if json {
            &["replay", "--suffix", "_r", "--json"]
        } else {
            &["replay", "--suffix", "_r"]
        };
        let read = run_against(&db.url, &keys, args);
        assert_eq!(read.status.code(), Some(2), "{}", text(&read.stderr));
        assert!(read.stdout.len() > 64 * 1024, "{}", read.stdout.len());
        let out = into_closed_pipe(args);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(
            stderr.contains("stopped at seq 1") && stderr.contains("499 more aggregates stopped"),
            "{stderr}"
        );
    }

    // The tickets say one more entry than each aggregate holds: a finding
    // per aggregate, exit 1 however the report is read.
    crate::support::superuser_exec(
        &db,
        "UPDATE oplog_ticket SET version = version + 1 WHERE name LIKE 'tenant-%'",
    );
    for args in [&["verify"][..], &["verify", "--json"]] {
        let read = run_against(&db.url, &keys, args);
        assert_eq!(read.status.code(), Some(1), "{}", text(&read.stderr));
        assert!(read.stdout.len() > 64 * 1024, "{}", read.stdout.len());
        let out = into_closed_pipe(args);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{args:?}: {}",
            text(&out.stderr)
        );
        assert_eq!(text(&out.stderr), "");
    }

    // Clean runs exit 0 into a closed pipe, quietly.
    let f = Fixture::new();
    for args in [
        &["verify"][..],
        &["verify", "--json"],
        &["replay", "--suffix", "_r", "--aggregate", "tenant-a"],
        &["head"],
    ] {
        let out = oplog_cmd()
            .args(args)
            .args(["--database-url", &f.db.url, "--key-file", &f.keys])
            .stdout(closed_pipe())
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{args:?}: {}",
            text(&out.stderr)
        );
        assert_eq!(text(&out.stderr), "", "{args:?}");
    }
}

#[test]
fn skip_needs_a_well_formed_entry_and_a_reason() {
    let f = Fixture::new();
    for command in [
        &["replay", "--suffix", "_r"][..],
        &[
            "follow",
            "--into",
            &f.db.url,
            "--suffix",
            "_r",
            "--until-caught-up",
        ],
    ] {
        let run = |extra: &[&str]| f.run(&[command, extra].concat());
        failure(&run(&["--skip", "tenant-b:1"]), &["--reason"]);
        failure(&run(&["--reason", "row deleted by hand"]), &["--skip"]);
        for (spec, why) in [
            ("tenant-b", "expected AGGREGATE:SEQ"),
            ("tenant-b:0", "SEQ must be a positive whole number"),
            ("tenant-b:x", "SEQ must be a positive whole number"),
            (":1", "the aggregate name must be 1 to 256 bytes"),
        ] {
            let out = run(&["--skip", spec, "--reason", "row deleted by hand"]);
            failure(&out, &["--skip", spec, why]);
        }
        let out = run(&["--skip", "tenant-b:1", "--reason", " "]);
        failure(&out, &["--reason", "must say why"]);
        // One bad entry among good ones is enough to refuse them all.
        let out = run(&[
            "--skip",
            "tenant-b:1",
            "--skip",
            "tenant-a",
            "--reason",
            "row deleted by hand",
        ]);
        failure(&out, &["expected AGGREGATE:SEQ"]);

        let help = success(&f.run(&[command[0], "--help"]));
        assert!(
            help.contains("--skip <AGGREGATE:SEQ>") && help.contains("--reason <TEXT>"),
            "{help}"
        );
    }
    // Usage errors come before any connection: nothing was created.
    assert!(f
        .db
        .scalar::<bool>("SELECT to_regclass('oplog_checkpoint') IS NULL"));
    assert!(f
        .db
        .scalar::<bool>("SELECT to_regclass('demo_user_r') IS NULL"));
}
