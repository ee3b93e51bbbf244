//! Key lifecycle against a real PostgreSQL: rotation, re-encryption of old
//! entries to the active key ("rewrap") while writers go on, removal of
//! the old key, the entry trigger's one permitted change, and the `keys
//! rewrap` / `keys remove` commands.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;

use oplog::{
    key_usage, verify, Error, FindingKind, KeyUsage, Keyring, NewEntry, Oplog, VerifyOptions,
    Wrapper,
};
use serde_json::{json, Value};

use crate::cli::{failure, oplog_cmd, save_keyring, success, text, TempDir};
use crate::support::{superuser_exec, user, TestDb};

fn oplog(ring: Keyring) -> Oplog {
    Oplog::new(oplog::demo::user_catalog(), ring)
}

/// A copy of `ring` (keyrings hold key material and are not `Clone`).
fn copy(ring: &Keyring) -> Keyring {
    Keyring::from_json(&ring.to_json()).unwrap()
}

/// Writes `n` entries, each creating a user, round-robin over `aggregates`,
/// one transaction each.
fn write_users(db: &TestDb, log: &Oplog, prefix: &str, aggregates: &[&str], n: usize) {
    let mut client = db.client();
    for i in 0..n {
        let id = format!("{prefix}{i}");
        let mut tx = client.transaction().unwrap();
        tx.execute(
            "INSERT INTO demo_user (id, tenant_id, account_id, email) VALUES ($1, 't1', 'a1', $2)",
            &[&id, &format!("{id}@example.com")],
        )
        .unwrap();
        let mut entry = NewEntry::new(aggregates[i % aggregates.len()]);
        entry.metadata("actor", "alice").create(&user(&id)).unwrap();
        log.write(&mut tx, &entry).unwrap();
        tx.commit().unwrap();
    }
}

fn assert_clean(log: &Oplog, db: &TestDb, when: &str) {
    let report = verify(log, &db.url, &VerifyOptions::default()).unwrap();
    assert!(report.is_clean(), "{when}: {:?}", report.findings);
}

fn usage(db: &TestDb) -> Vec<(String, u64)> {
    key_usage(&mut db.client())
        .unwrap()
        .into_iter()
        .map(
            |KeyUsage {
                 key_id, entries, ..
             }| (key_id, entries),
        )
        .collect()
}

/// Every entry's id, digest, chain and creation time: what a rewrap must
/// not change.
fn fixed_columns(db: &TestDb) -> Vec<(i64, Vec<u8>, Vec<u8>, String)> {
    db.client()
        .query(
            "SELECT id, digest, chain, created_at::text FROM oplog_entry ORDER BY id",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect()
}

#[test]
fn after_rotation_old_and_new_entries_decrypt() {
    let db = TestDb::new();
    let mut ring = Keyring::generate();
    let old = ring.key_id().to_string();
    write_users(&db, &oplog(copy(&ring)), "u", &["a"], 3);
    let new = ring.rotate().to_string();
    let log = oplog(ring);
    write_users(&db, &log, "v", &["a"], 2);
    let entries = log.list(&mut db.client(), Some("a"), 0, None).unwrap();
    let keys: Vec<&str> = entries.iter().map(|e| e.key_id.as_str()).collect();
    assert_eq!(keys, [&old, &old, &old, &new, &new]);
    assert_eq!(usage(&db), sorted(vec![(old, 3), (new, 2)]));
    assert_clean(&log, &db, "after rotation");
}

fn sorted(mut v: Vec<(String, u64)>) -> Vec<(String, u64)> {
    v.sort();
    v
}

#[test]
fn rewrap_with_a_concurrent_writer_keeps_verify_clean_and_the_old_key_can_go() {
    let db = TestDb::new();
    let mut ring = Keyring::generate();
    let old = ring.key_id().to_string();
    write_users(&db, &oplog(copy(&ring)), "u", &["a", "b", "c"], 45);
    let before = fixed_columns(&db);
    let new = ring.rotate().to_string();
    let log = oplog(copy(&ring));
    assert_clean(&log, &db, "before the rewrap");

    // A writer with the new key goes on for the whole rewrap.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        let log = log.clone();
        let url = db.url.clone();
        thread::spawn(move || {
            let mut client = postgres::Client::connect(&url, postgres::NoTls).unwrap();
            let mut written = 0;
            while !stop.load(Ordering::SeqCst) || written < 5 {
                let mut tx = client.transaction().unwrap();
                let mut entry = NewEntry::new(["a", "b", "d"][written % 3]);
                entry.create(&user(&format!("w{written}"))).unwrap();
                log.write(&mut tx, &entry).unwrap();
                tx.commit().unwrap();
                written += 1;
            }
            written
        })
    };

    let mut seen = Vec::new();
    let report = log
        .rewrap(&mut db.client(), 7, |p| {
            // Verification between batches: part of the log is under the
            // old key, part under the new one, and all of it is intact.
            assert_clean(&log, &db, &format!("after batch {}", p.batches));
            seen.push((p.batches, p.rewrapped, p.remaining));
        })
        .unwrap();
    stop.store(true, Ordering::SeqCst);
    let written = writer.join().unwrap();

    assert_eq!(report.key_id, new);
    assert_eq!(report.rewrapped, 45);
    assert_eq!(report.skipped, 0);
    assert_eq!(report.remaining, 0);
    assert_eq!(report.batches, 7, "45 entries in batches of 7");
    assert_eq!(seen.len(), 7);
    assert_eq!(seen[0], (1, 7, 38));
    assert_eq!(seen[6], (7, 45, 0));
    let total = 45 + u64::try_from(written).unwrap();
    // Every entry is under the new key: those counted when the rewrap
    // finished, and those the writer added after.
    assert_eq!(report.keys.len(), 1);
    assert_eq!(report.keys[0].key_id, new);
    assert!(report.keys[0].entries >= 45);
    assert_eq!(usage(&db), [(new.clone(), total)]);
    assert_clean(&log, &db, "after the rewrap");

    // Only key_id and data changed: ids, digests, chains and creation
    // times are what they were.
    let after = fixed_columns(&db);
    assert_eq!(after[..45], before[..]);

    // Running it again finds nothing to do.
    let again = log.rewrap(&mut db.client(), 7, |_| {}).unwrap();
    assert_eq!((again.rewrapped, again.batches), (0, 0));

    // The old key can go: everything still decrypts and verifies.
    ring.remove(&old).unwrap();
    assert_eq!(ring.key_ids().collect::<Vec<_>>(), [new.as_str()]);
    let without_old = oplog(ring);
    let entries = without_old.list(&mut db.client(), None, 0, None).unwrap();
    assert_eq!(u64::try_from(entries.len()).unwrap(), total);
    assert!(entries.iter().all(|e| e.key_id == new));
    assert_eq!(
        entries[0].operations[0]
            .decode::<oplog::demo::User>()
            .unwrap()
            .id,
        "u0"
    );
    assert_clean(&without_old, &db, "after removing the old key");
}

#[test]
fn an_entry_under_a_removed_key_is_an_unknown_key_error_naming_it() {
    let db = TestDb::new();
    let mut ring = Keyring::generate();
    let old = ring.key_id().to_string();
    write_users(&db, &oplog(copy(&ring)), "u", &["a"], 2);
    ring.rotate();
    write_users(&db, &oplog(copy(&ring)), "v", &["a"], 1);
    // Removed without a rewrap first.
    ring.remove(&old).unwrap();
    let log = oplog(ring);
    let first_id: i64 = db.scalar("SELECT min(id) FROM oplog_entry");

    let err = log.list(&mut db.client(), Some("a"), 0, None).unwrap_err();
    match &err {
        Error::UnknownKey {
            key_id,
            entry: Some(entry),
        } => {
            assert_eq!(key_id, &old);
            assert_eq!(
                (entry.id, entry.aggregate.as_str(), entry.seq),
                (Some(first_id), "a", 1)
            );
        }
        other => panic!("expected UnknownKey naming the entry, got {other}"),
    }
    let message = err.to_string();
    assert!(
        message.contains(&format!("key {old:?} is not in the keyring"))
            && message.contains(&format!("entry {first_id} (aggregate \"a\", seq 1)"))
            && message.contains("add the key that wrote it"),
        "{message}"
    );
    // The entry under the kept key still reads.
    assert_eq!(
        log.list(&mut db.client(), Some("a"), 2, None)
            .unwrap()
            .len(),
        1
    );

    // Verification names both entries; a rewrap cannot help and says why.
    let report = verify(&log, &db.url, &VerifyOptions::default()).unwrap();
    let found: Vec<(FindingKind, Option<i64>)> =
        report.findings.iter().map(|f| (f.kind, f.seq)).collect();
    assert_eq!(
        found,
        [
            (FindingKind::UnknownKey, Some(1)),
            (FindingKind::UnknownKey, Some(2))
        ]
    );
    let err = log.rewrap(&mut db.client(), 10, |_| {}).unwrap_err();
    assert!(
        matches!(&err, Error::UnknownKey { key_id, entry: Some(e) } if *key_id == old && e.id == Some(first_id)),
        "{err}"
    );
}

#[test]
fn a_tampered_entry_stops_the_rewrap_naming_it_and_is_not_re_encrypted() {
    let db = TestDb::new();
    let mut ring = Keyring::generate();
    let old = ring.key_id().to_string();
    write_users(&db, &oplog(copy(&ring)), "u", &["a"], 5);
    ring.rotate();
    let log = oplog(ring);
    let third: i64 = db.scalar("SELECT id FROM oplog_entry WHERE seq = 3");
    superuser_exec(
        &db,
        &format!(
            "UPDATE oplog_entry SET data = overlay(data placing '\\xff'::bytea from length(data) for 1) WHERE id = {third}"
        ),
    );
    let err = log.rewrap(&mut db.client(), 2, |_| {}).unwrap_err();
    assert!(
        matches!(&err, Error::Decryption { entry } if entry.id == Some(third)),
        "{err}"
    );
    // The first batch (seqs 1 and 2) was committed; the tampered entry's
    // batch was not, and the tampered data is still under the old key for
    // verification to find.
    assert_eq!(usage(&db).len(), 2);
    assert_eq!(
        db.scalar::<String>(&format!(
            "SELECT key_id FROM oplog_entry WHERE id = {third}"
        )),
        old
    );
    let report = verify(&log, &db.url, &VerifyOptions::default()).unwrap();
    let found: Vec<(FindingKind, Option<i64>)> =
        report.findings.iter().map(|f| (f.kind, f.seq)).collect();
    assert_eq!(found, [(FindingKind::Decryption, Some(3))]);
}

#[test]
fn the_entry_trigger_allows_only_oplog_rewrap_to_change_only_key_id_and_data() {
    let db = TestDb::new();
    let ring = Keyring::generate();
    let key = ring.key_id().to_string();
    write_users(&db, &oplog(copy(&ring)), "u", &["a"], 2);
    let id: i64 = db.scalar("SELECT min(id) FROM oplog_entry");
    let mut c = db.client();
    let immutable = |c: &mut postgres::Client, sql: &str| {
        let err = Error::from(c.batch_execute(sql).unwrap_err());
        assert!(err.to_string().contains("immutable"), "{sql}: {err}");
        assert_eq!(err.sqlstate(), Some("23000"), "{sql}");
    };
    // Outside oplog_rewrap, no column may change.
    for sql in [
        "UPDATE oplog_entry SET key_id = 'k2'".to_string(),
        "UPDATE oplog_entry SET data = '\\x00'".to_string(),
        format!("UPDATE oplog_entry SET seq = 9 WHERE id = {id}"),
    ] {
        immutable(&mut c, &sql);
    }
    // Even with the setting forged, only key_id and data may change, and
    // only for the entry and keys the setting names.
    immutable(
        &mut c,
        &format!(
            "BEGIN; SELECT set_config('oplog.rewrap', json_build_array({id}, '{key}', '{key}')::text, true); \
             UPDATE oplog_entry SET seq = 9 WHERE id = {id}; COMMIT"
        ),
    );
    c.batch_execute("ROLLBACK").unwrap();
    immutable(
        &mut c,
        &format!(
            "BEGIN; SELECT set_config('oplog.rewrap', json_build_array({id}, '{key}', 'k2')::text, true); \
             UPDATE oplog_entry SET key_id = 'k2' WHERE id = {id} + 1; COMMIT"
        ),
    );
    c.batch_execute("ROLLBACK").unwrap();
    immutable(&mut c, "UPDATE oplog_metadata SET value = 'mallory'");

    // oplog_rewrap changes nothing when the entry is not under the old key.
    let changed: bool = c
        .query_one("SELECT oplog_rewrap($1, 'k-other', 'k2', '\\x00')", &[&id])
        .unwrap()
        .get(0);
    assert!(!changed);
    // It does change key_id and data when asked, and then the entry no
    // longer authenticates: the database lets a rewrap through, the
    // associated data (which names the key id) is what proves it genuine.
    let changed: bool = c
        .query_one("SELECT oplog_rewrap($1, $2, 'k2', '\\x01')", &[&id, &key])
        .unwrap()
        .get(0);
    assert!(changed);
    let log = oplog(ring);
    let err = log.list(&mut c, Some("a"), 0, None).unwrap_err();
    assert!(
        matches!(&err, Error::UnknownKey { key_id, entry: Some(e) } if key_id == "k2" && e.id == Some(id))
            || matches!(&err, Error::MalformedCiphertext { entry, .. } if entry.id == Some(id)),
        "{err}"
    );
    let report = verify(&log, &db.url, &VerifyOptions::default()).unwrap();
    assert_eq!(report.findings.len(), 1, "{:?}", report.findings);
    assert_eq!(report.findings[0].entry_id, Some(id));
    // The chain does not cover key_id and data: only the ciphertext check
    // finds the change, and it is found.
    assert!(!report
        .findings
        .iter()
        .any(|f| f.kind == FindingKind::ChainMismatch));
}

/// Runs `oplog <args> --key-file <keys> [--database-url <url>]`.
fn keys_cmd(keys: &str, db: Option<&TestDb>, args: &[&str]) -> std::process::Output {
    let mut cmd = oplog_cmd();
    cmd.args(args).args(["--key-file", keys]);
    if let Some(db) = db {
        cmd.args(["--database-url", &db.url]);
    }
    cmd.output().unwrap()
}

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn keys_rewrap_and_remove_commands_keep_the_file_private_and_print_no_key_material() {
    let db = TestDb::new();
    let dir = TempDir::new();
    let path = dir.join("keys.json");
    let keys = save_keyring(&Keyring::generate(), &path);
    let old = Keyring::load(&path).unwrap().key_id().to_string();
    write_users(
        &db,
        &oplog(Keyring::load(&path).unwrap()),
        "u",
        &["a", "b"],
        5,
    );
    success(&keys_cmd(&keys, None, &["keys", "rotate"]));
    let new = Keyring::load(&path).unwrap().key_id().to_string();
    let mut outputs = Vec::new();

    // The old key still encrypts entries, and the active key is never removed.
    let out = keys_cmd(&keys, Some(&db), &["keys", "remove", &old]);
    failure(
        &out,
        &[
            &old,
            "still encrypts 5 entries",
            "oplog keys rewrap",
            "--force",
        ],
    );
    outputs.push(out);
    let out = keys_cmd(&keys, Some(&db), &["keys", "remove", &new]);
    failure(&out, &[&new, "is the active key", "oplog keys rotate"]);
    outputs.push(out);
    let out = keys_cmd(&keys, None, &["keys", "remove", &old]);
    failure(&out, &["no database URL", "--force"]);
    outputs.push(out);
    let out = keys_cmd(&keys, Some(&db), &["keys", "remove", "k-nope"]);
    failure(&out, &["\"k-nope\" is not in the keyring", &old, &new]);
    outputs.push(out);
    assert_eq!(
        Keyring::load(&path).unwrap().key_ids().count(),
        2,
        "refusals change nothing"
    );

    // Rewrap, with a progress line per batch of 2.
    let out = keys_cmd(&keys, Some(&db), &["keys", "rewrap", "--batch", "2"]);
    let stdout = success(&out);
    let lines: Vec<&str> = stdout.lines().collect();
    for (line, expected) in lines.iter().zip([
        "rewrapped 2 entries (0 skipped), about 3 to go, ",
        "rewrapped 4 entries (0 skipped), about 1 to go, ",
        "rewrapped 5 entries (0 skipped), about 0 to go, ",
    ]) {
        assert!(line.starts_with(expected), "{stdout}");
    }
    assert!(
        lines[3].starts_with(&format!(
            "rewrapped 5 entries to key {new} in 3 batches (0 skipped)"
        )),
        "{stdout}"
    );
    assert_eq!(lines[4], format!("  {new}: 5 entries"));
    assert_eq!(
        lines[5],
        format!("key {old} encrypts no entry; remove it with `oplog keys remove {old}`")
    );
    outputs.push(out);

    let out = keys_cmd(&keys, Some(&db), &["--json", "keys", "rewrap"]);
    let summary: Value = serde_json::from_str(&success(&out)).unwrap();
    assert_eq!(summary["active_key"], new.as_str());
    assert_eq!(summary["rewrapped"], 0);
    assert_eq!(summary["remaining"], 0);
    assert_eq!(summary["entries_by_key"], json!({ new.as_str(): 5 }));
    assert_eq!(summary["unused_keys"], json!([old.as_str()]));
    outputs.push(out);

    let out = keys_cmd(&keys, Some(&db), &["--json", "keys", "remove", &old]);
    let summary: Value = serde_json::from_str(&success(&out)).unwrap();
    assert_eq!(
        summary,
        json!({"removed": old, "active_key": new, "keys": [new], "entries_under_removed_key": 0})
    );
    assert_eq!(mode(&path), 0o600);
    outputs.push(out);

    // Everything still reads and verifies with the new key alone.
    let out = keys_cmd(&keys, Some(&db), &["log", "--json"]);
    assert_eq!(success(&out).lines().count(), 5);
    let out = keys_cmd(&keys, Some(&db), &["verify"]);
    success(&out);

    // No output of any of these commands shows key material.
    let file: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let material = file["keys"][0]["key"].as_str().unwrap().to_string();
    for out in &outputs {
        let all = text(&out.stdout) + &text(&out.stderr);
        assert!(!all.contains(&material), "{all}");
    }
}

#[test]
fn keys_remove_with_force_removes_a_key_still_in_use_and_says_so() {
    let db = TestDb::new();
    let dir = TempDir::new();
    let path = dir.join("keys.json");
    let keys = save_keyring(&Keyring::generate(), &path);
    let old = Keyring::load(&path).unwrap().key_id().to_string();
    write_users(&db, &oplog(Keyring::load(&path).unwrap()), "u", &["a"], 2);
    success(&keys_cmd(&keys, None, &["keys", "rotate"]));

    let stdout = success(&keys_cmd(
        &keys,
        Some(&db),
        &["keys", "remove", &old, "--force"],
    ));
    assert!(
        stdout.contains(&format!("removed key {old}"))
            && stdout.contains("2 entries are under the removed key and can no longer be read"),
        "{stdout}"
    );
    assert_eq!(mode(&path), 0o600);
    let out = keys_cmd(&keys, Some(&db), &["log"]);
    failure(
        &out,
        &[&format!("key {old:?} is not in the keyring"), "seq 1"],
    );

    // A key file others can read is refused by both commands, and left as
    // it was.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
    let before = std::fs::read(&path).unwrap();
    let file: Value = serde_json::from_slice(&before).unwrap();
    let new = file["active"].as_str().unwrap().to_string();
    failure(
        &keys_cmd(&keys, Some(&db), &["keys", "rewrap"]),
        &["chmod 600"],
    );
    failure(
        &keys_cmd(&keys, Some(&db), &["keys", "remove", &new, "--force"]),
        &["chmod 600"],
    );
    assert_eq!(std::fs::read(&path).unwrap(), before);
}

#[test]
fn key_commands_write_through_a_symlinked_key_file_and_keep_the_link() {
    use std::os::unix::fs::symlink;
    let db = TestDb::new();
    let dir = TempDir::new();
    // The key file lives in a directory of its own and is linked into
    // place, as with mounted secrets or a shared configuration.
    std::fs::create_dir(dir.join("secrets")).unwrap();
    let target = dir.join("secrets").join("keys.json");
    save_keyring(&Keyring::generate(), &target);
    let first = Keyring::load(&target).unwrap().key_id().to_string();
    let link = dir.join("keys.json");
    symlink("secrets/keys.json", &link).unwrap();
    let keys = link.to_str().unwrap();
    let is_link_to_target = || {
        std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink()
            && std::fs::read_link(&link).unwrap() == Path::new("secrets/keys.json")
    };
    write_users(&db, &oplog(Keyring::load(&target).unwrap()), "u", &["a"], 2);

    // Rotating adds the key to the file the link points to.
    success(&keys_cmd(keys, None, &["keys", "rotate"]));
    assert!(is_link_to_target());
    let ring = Keyring::load(&target).unwrap();
    let second = ring.key_id().to_string();
    assert_eq!(ring.key_ids().collect::<Vec<_>>(), [&first, &second]);
    assert_eq!(mode(&target), 0o600);

    // So does removing one, once the entries are re-encrypted.
    success(&keys_cmd(keys, Some(&db), &["keys", "rewrap"]));
    success(&keys_cmd(keys, Some(&db), &["keys", "remove", &first]));
    assert!(is_link_to_target());
    assert_eq!(
        Keyring::load(&target)
            .unwrap()
            .key_ids()
            .collect::<Vec<_>>(),
        [&second]
    );
    success(&keys_cmd(keys, Some(&db), &["verify"]));

    // Generating over the link needs --force, like over any file, and then
    // replaces the file it points to.
    failure(
        &oplog_cmd()
            .args(["keys", "generate", "--out", keys])
            .output()
            .unwrap(),
        &[keys, "is a symbolic link to secrets/keys.json", "--force"],
    );
    assert_eq!(Keyring::load(&target).unwrap().key_id(), second);
    success(
        &oplog_cmd()
            .args(["keys", "generate", "--out", keys, "--force"])
            .output()
            .unwrap(),
    );
    assert!(is_link_to_target());
    assert_ne!(Keyring::load(&target).unwrap().key_id(), second);
    assert_eq!(mode(&target), 0o600);
    // Nothing else was left beside the link or the file.
    for sub in ["", "secrets"] {
        let names: Vec<_> = std::fs::read_dir(dir.join(sub))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n != "secrets")
            .collect();
        assert_eq!(names, ["keys.json"], "{sub:?}");
    }

    // Something that is not a key file is never replaced, even with --force.
    let fifo = dir.join("pipe");
    crate::cli::mkfifo(&fifo);
    failure(
        &oplog_cmd()
            .args(["keys", "generate", "--force", "--out"])
            .arg(&fifo)
            .output()
            .unwrap(),
        &["is a FIFO, not a key file"],
    );
    use std::os::unix::fs::FileTypeExt;
    assert!(std::fs::symlink_metadata(&fifo)
        .unwrap()
        .file_type()
        .is_fifo());
}

/// A signing key for checkpoints: written mode 0600, never replaced
/// without --force, and its verifier key (public) printed at birth and on
/// demand, the same.
#[test]
fn a_signing_key_is_generated_apart_from_the_keyring_and_its_public_half_printed() {
    use std::os::unix::fs::PermissionsExt;

    let dir = crate::cli::TempDir::new();
    let path = dir.join("signing.key");
    let path_str = path.to_str().unwrap();
    let generate = |force: bool| {
        let mut cmd = crate::cli::oplog_cmd();
        cmd.args([
            "keys",
            "generate-signing",
            "--name",
            "example.com/app",
            "--out",
            path_str,
        ]);
        if force {
            cmd.arg("--force");
        }
        cmd.output().unwrap()
    };
    let said = crate::cli::success(&generate(false));
    let verifier = said.lines().last().unwrap().to_string();
    assert!(verifier.starts_with("example.com/app+"), "{said}");
    let key: oplog::VerifierKey = verifier.parse().unwrap();
    assert_eq!(key.name(), "example.com/app");
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let secret = std::fs::read_to_string(&path).unwrap();
    assert!(!said.contains(secret.trim_end().rsplit('+').next().unwrap()));
    crate::cli::failure(&generate(false), &["already exists", "--force"]);
    assert_eq!(std::fs::read_to_string(&path).unwrap(), secret);
    let public = crate::cli::oplog_cmd()
        .args(["keys", "public", "--signing-key", path_str])
        .output()
        .unwrap();
    assert_eq!(crate::cli::success(&public).trim(), verifier);
    crate::cli::success(&generate(true));
    assert_ne!(std::fs::read_to_string(&path).unwrap(), secret);
}
