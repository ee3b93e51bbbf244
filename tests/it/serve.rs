//! `oplog serve`: agents run for real (processes, killed with SIGKILL),
//! against a real PostgreSQL and NATS; the status page in a real headless
//! Chromium.

use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use oplog::{Keyring, Oplog};

use crate::cli::{oplog_cmd, TempDir};
use crate::support::{create_users, eventually, superuser_exec, TestDb};

/// A free port on the loopback interface.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// An `oplog serve` process whose log goes to a file.
struct Served {
    child: Option<Child>,
    log: PathBuf,
}

impl Served {
    fn start(dir: &TempDir, config: &Path, label: &str) -> Served {
        let log = dir.join(&format!("{label}.log"));
        let child = oplog_cmd()
            .args(["serve", "--config"])
            .arg(config)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Served {
            child: Some(child),
            log,
        }
    }

    fn pid(&self) -> i32 {
        i32::try_from(self.child.as_ref().unwrap().id()).unwrap()
    }

    fn said(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then the exit status.
    fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().unwrap();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap()),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        child.wait().unwrap()
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Keys in a file, and an oplog writing with them.
fn keys(dir: &TempDir) -> (PathBuf, Oplog) {
    let path = dir.join("keys.json");
    let ring = Keyring::generate();
    ring.save(&path).unwrap();
    (
        path.clone(),
        Oplog::new(oplog::demo::user_catalog(), Keyring::load(&path).unwrap()),
    )
}

fn write_config(dir: &TempDir, text: &str) -> PathBuf {
    let path = dir.join("serve.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// A configuration for `db` (with `keys` when given): its `[source]`, then
/// `rest`.
fn config_for(dir: &TempDir, db: &TestDb, keys: Option<&Path>, rest: &str) -> PathBuf {
    let mut text = format!("[source]\ndatabase_url = \"{}\"\n", db.url);
    if let Some(keys) = keys {
        text.push_str(&format!("key_file = \"{}\"\n", keys.display()));
    }
    write_config(dir, &(text + rest))
}

/// GET `path` from 127.0.0.1:`port`: status code and body.
fn get(port: u16, path: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let code = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    (code, body)
}

/// Which agent (by pid) holds `worker`, per the registry (a killed
/// agent's last heartbeat still names what it held: the newest wins).
fn holder(db: &TestDb, worker: &str) -> Option<i32> {
    db.client()
        .query_opt(
            "SELECT pid FROM oplog_agent WHERE stopped_at IS NULL \
             AND heartbeat_at > now() - interval '3 seconds' AND $1 = ANY(holds) \
             ORDER BY heartbeat_at DESC LIMIT 1",
            &[&worker],
        )
        .unwrap()
        .map(|r| r.get(0))
}

/// Two agents with one configuration: every job slot runs once across
/// both; SIGKILL the one holding the follower and the relay, and the
/// other takes both over within the bound, the replica and the stream
/// staying exact.
#[test]
fn two_agents_share_the_work_and_one_takes_over_when_the_other_is_killed() {
    let db = TestDb::new();
    let replica = TestDb::empty();
    let dir = TempDir::new();
    let (key_file, log) = keys(&dir);
    let stream = format!(
        "OPLOG_SERVE_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..10]
    );
    let prefix = stream.to_lowercase();
    create_users(&db.url, &log, "t-0", (0..20).map(|i| format!("a{i}")));
    let anchors = dir.join("anchors");
    let signing = dir.join("signing.key");
    oplog::SigningKey::generate("example.com/served")
        .unwrap()
        .save(&signing)
        .unwrap();
    let config = config_for(
        &dir,
        &db,
        Some(&key_file),
        &format!(
            r#"
[agent]
heartbeat = "200ms"
takeover_poll = "200ms"
lost_after = "3s"

[[follower]]
name = "replica"
into = "{replica}"
poll = "20ms"

[[relay]]
name = "nats"
nats = "{nats}"
stream = "{stream}"
subject_prefix = "{prefix}"
poll = "20ms"

[[job]]
name = "anchor"
kind = "anchor"
dir = "{anchors}"
every = "1s"
window = "900ms"

[[job]]
name = "signed"
kind = "checkpoint"
signing_key = "{signing}"
every = "1s"
"#,
            replica = replica.url,
            nats = std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into()),
            anchors = anchors.display(),
            signing = signing.display(),
        ),
    );
    let mut a = Served::start(&dir, &config, "a");
    let mut b = Served::start(&dir, &config, "b");
    assert!(
        eventually(30, || holder(&db, "replica").is_some()
            && holder(&db, "nats").is_some()),
        "nobody took the workers: {}\n{}",
        a.said(),
        b.said()
    );
    let applied = |n: i64| {
        eventually(30, || {
            replica
                .client()
                .query_one("SELECT count(*) FROM demo_user", &[])
                .is_ok_and(|r| r.get::<_, i64>(0) == n)
        })
    };
    assert!(applied(20), "{}", a.said());

    let mut takeovers = Vec::new();
    for round in 0..2 {
        let pid = holder(&db, "replica").unwrap();
        let (killed, other) = if pid == a.pid() {
            (&mut a, &mut b)
        } else {
            (&mut b, &mut a)
        };
        let killed_at = Instant::now();
        killed.kill();
        create_users(
            &db.url,
            &log,
            "t-0",
            (0..10).map(|i| format!("r{round}-{i}")),
        );
        assert!(
            eventually(10, || holder(&db, "replica") == Some(other.pid())
                && holder(&db, "nats") == Some(other.pid())),
            "no takeover within 10 s: {}",
            other.said()
        );
        assert!(applied(30 + round * 10), "{}", other.said());
        takeovers.push(killed_at.elapsed());
        // The killed agent comes back as a new one.
        *killed = Served::start(&dir, &config, &format!("again-{round}"));
    }
    eprintln!("takeover times (kill to work resumed): {takeovers:?}");
    assert!(takeovers.iter().all(|t| *t < Duration::from_secs(10)));

    // Losing its session to the source is like dying: the other agent
    // takes over, and the one that lost it keeps running, holding
    // nothing, registered again.
    let pid = holder(&db, "replica").unwrap();
    let other = if pid == a.pid() { b.pid() } else { a.pid() };
    let cut: i64 = db
        .client()
        .query_one(
            "SELECT count(pg_terminate_backend(backend_pid)) FROM oplog_agent \
             WHERE pid = $1 AND stopped_at IS NULL",
            &[&pid],
        )
        .unwrap()
        .get(0);
    assert_eq!(cut, 1);
    create_users(&db.url, &log, "t-0", (0..10).map(|i| format!("s-{i}")));
    assert!(
        eventually(10, || holder(&db, "replica") == Some(other)
            && holder(&db, "nats") == Some(other)),
        "no takeover after a lost session: {}\n{}",
        a.said(),
        b.said()
    );
    assert!(applied(50));

    // Slots: one run each, one anchor file per successful run.
    std::thread::sleep(Duration::from_secs(2));
    a.kill();
    b.kill();
    let mut c = db.client();
    let runs: i64 = c
        .query_one(
            "SELECT count(*) FROM oplog_job_run WHERE job = 'anchor' AND state = 'success'",
            &[],
        )
        .unwrap()
        .get(0);
    let files = std::fs::read_dir(&anchors)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".jsonl")
        })
        .count();
    assert!(runs >= 3, "{runs} anchor runs");
    // Checkpoints signed on schedule, each kept in the database.
    let heads: i64 = c
        .query_one("SELECT count(*) FROM oplog_tree_head", &[])
        .unwrap()
        .get(0);
    assert!(heads >= 2, "{heads} checkpoints");
    assert_eq!(
        i64::try_from(files).unwrap(),
        runs,
        "one anchor file per run"
    );
    let agents: i64 = c
        .query_one(
            "SELECT count(DISTINCT agent) FROM oplog_job_run WHERE job = 'anchor'",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(agents >= 1);

    // The replica and the stream are exact.
    let report = oplog::verify(
        &log,
        db.url.as_str(),
        &oplog::VerifyOptions {
            against: Some(oplog::Target::database(&replica.url)),
            ..oplog::VerifyOptions::default()
        },
    )
    .unwrap();
    assert!(report.is_clean(), "{report:?}");
    let opts = oplog::relay::RelayOptions {
        stream: stream.clone(),
        subject_prefix: prefix.clone(),
        ..oplog::relay::RelayOptions::default()
    };
    let mut seqs = Vec::new();
    oplog::relay::tail(
        &log,
        &oplog::relay::TailOptions {
            relay: opts.clone(),
            aggregate: None,
            follow: false,
            idle: Duration::from_millis(700),
        },
        |item| {
            match item {
                oplog::relay::StreamItem::Entry { entry, .. } => seqs.push(entry.seq),
                other => panic!("{other:?}"),
            }
            true
        },
    )
    .unwrap();
    assert_eq!(seqs, (1..=50).collect::<Vec<_>>());
    let _ = oplog::relay::delete_stream(&opts);
}

/// A verify job that finds tampering is recorded failed with its
/// findings, and shown so by /status, /metrics, /healthz and the page in
/// a headless browser, which refreshes by itself.
#[test]
fn a_failing_job_is_recorded_and_shown_in_status_metrics_and_the_page() {
    let db = TestDb::new();
    let dir = TempDir::new();
    let (key_file, log) = keys(&dir);
    create_users(&db.url, &log, "acct", (0..3).map(|i| format!("u{i}")));
    superuser_exec(
        &db,
        "UPDATE oplog_entry SET data = overlay(data placing '\\x00' from length(data) - 3 for 1) \
         WHERE aggregate_name = 'acct' AND seq = 2",
    );
    let port = free_port();
    let config = config_for(
        &dir,
        &db,
        Some(&key_file),
        &format!(
            r#"
[agent]
name = "page-agent"
heartbeat = "200ms"
listen = "127.0.0.1:{port}"

[[job]]
name = "integrity"
kind = "verify"
every = "1s"
"#
        ),
    );
    let mut agent = Served::start(&dir, &config, "page");
    let failed = || {
        db.client()
            .query_opt(
                "SELECT detail::text FROM oplog_job_run WHERE job = 'integrity' AND state = 'failed' LIMIT 1",
                &[],
            )
            .unwrap()
            .map(|r| r.get::<_, String>(0))
    };
    assert!(eventually(30, || failed().is_some()), "{}", agent.said());
    let detail: serde_json::Value = serde_json::from_str(&failed().unwrap()).unwrap();
    assert_eq!(detail["findings"], 1, "{detail}");
    assert!(
        detail["listed"][0].as_str().unwrap().contains("acct"),
        "{detail}"
    );

    let (code, body) = get(port, "/status");
    assert_eq!(code, 200, "{body}");
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    let job = &status["jobs"][0];
    assert_eq!(job["name"], "integrity");
    assert!(job["runs"]
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["state"] == "failed"));
    assert_eq!(status["agents"][0]["name"], "page-agent");
    assert_eq!(status["agents"][0]["this_agent"], true);
    let (code, metrics) = get(port, "/metrics");
    assert_eq!(code, 200);
    assert!(
        metrics.contains("oplog_job_last_verify_findings{job=\"integrity\"} 1"),
        "{metrics}"
    );
    assert!(metrics.lines().any(|l| l
        .starts_with("oplog_job_runs_total{job=\"integrity\",state=\"failed\"}")
        && !l.ends_with(" 0")));
    assert_eq!(get(port, "/healthz").0, 200);
    assert_eq!(get(port, "/nothing").0, 404);

    // The page, in a real browser: it loads and shows the agent and the
    // failed run; left open, it loads itself again (it refreshes).
    let dom = chromium(&format!("http://127.0.0.1:{port}/"), None);
    assert!(dom.contains("data-agent=\"page-agent\""), "{dom}");
    assert!(dom.contains("data-state=\"failed\""), "{dom}");
    let before = agent.said().matches("path=/ ").count();
    chromium(
        &format!("http://127.0.0.1:{port}/"),
        Some(Duration::from_secs(12)),
    );
    let loads = agent.said().matches("path=/ ").count() - before;
    assert!(loads >= 2, "the open page was loaded {loads} times in 12 s");

    // The command says the same, with and without the configuration.
    let status = |args: &[&str]| {
        let out = oplog_cmd()
            .args(["--database-url", &db.url, "status"])
            .args(args)
            .output()
            .unwrap();
        crate::cli::success(&out)
    };
    let json: serde_json::Value = serde_json::from_str(status(&["--json"]).trim()).unwrap();
    assert_eq!(json["agents"][0]["name"], "page-agent");
    assert_eq!(json["agents"][0]["state"], "running");
    assert!(json["jobs"][0]["runs"]
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["state"] == "failed" && r["detail"]["findings"] == 1));
    let text = status(&["--config", config.to_str().unwrap()]);
    assert!(text.contains("page-agent"), "{text}");
    assert!(text.contains("integrity verify every 1s"), "{text}");
    assert!(text.contains("next due"), "{text}");

    // SIGTERM: stopped in the registry.
    assert!(agent.terminate().success());
    let stopped: bool = db
        .client()
        .query_one(
            "SELECT bool_and(stopped_at IS NOT NULL) FROM oplog_agent",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(stopped);
}

/// Headless Chromium on `url`: the DOM once loaded, or, with `open_for`,
/// the page left open that long (and nothing returned).
fn chromium(url: &str, open_for: Option<Duration>) -> String {
    let browser = ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|b| {
            Command::new(b)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .expect("a headless browser (Debian's chromium package); .ci/run installs it");
    let profile = TempDir::new();
    let mut cmd = Command::new(browser);
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
    ])
    .arg(format!(
        "--user-data-dir={}",
        profile.join("profile").display()
    ))
    .stdout(Stdio::piped())
    .stderr(Stdio::null());
    match open_for {
        Some(_) => cmd.arg("--remote-debugging-port=0"),
        None => cmd.arg("--dump-dom"),
    };
    let mut child = cmd.arg(url).spawn().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let reading = std::thread::spawn(move || {
        let mut dom = String::new();
        let _ = stdout.read_to_string(&mut dom);
        dom
    });
    let limit = open_for.unwrap_or(Duration::from_secs(60));
    let started = Instant::now();
    while started.elapsed() < limit && child.try_wait().unwrap().is_none() {
        std::thread::sleep(Duration::from_millis(50));
    }
    let running = child.try_wait().unwrap().is_none();
    let _ = child.kill();
    let _ = child.wait();
    if open_for.is_some() {
        assert!(running, "the browser quit before its time");
        return String::new();
    }
    assert!(
        !running,
        "the browser did not dump the page within {limit:?}"
    );
    reading.join().unwrap()
}

/// An agent stopped while its job's window passes: when one starts again,
/// the missed slot is recorded `dropped_out_of_window`, not run late.
#[test]
fn a_slot_missed_while_no_agent_ran_is_recorded_as_dropped() {
    let db = TestDb::new();
    let dir = TempDir::new();
    let anchors = dir.join("anchors");
    let config = config_for(
        &dir,
        &db,
        None,
        &format!(
            r#"
[agent]
heartbeat = "200ms"

[[job]]
name = "heads"
kind = "anchor"
dir = "{anchors}"
every = "4s"
window = "1s"
"#,
            anchors = anchors.display(),
        ),
    );
    let runs = |state: &str| -> i64 {
        db.client()
            .query_one(
                "SELECT count(*) FROM oplog_job_run WHERE job = 'heads' AND state = $1",
                &[&state],
            )
            .unwrap()
            .get(0)
    };
    // Started early in a slot: it runs.
    wait_for_phase(0.0..0.5);
    let mut agent = Served::start(&dir, &config, "first");
    assert!(eventually(10, || runs("success") >= 1), "{}", agent.said());
    assert!(agent.terminate().success());
    // Started again 2 s into a later slot: that slot's window has passed.
    std::thread::sleep(Duration::from_secs(4));
    wait_for_phase(2.0..2.5);
    let mut agent = Served::start(&dir, &config, "second");
    assert!(
        eventually(10, || runs("dropped_out_of_window") >= 1),
        "{}",
        agent.said()
    );
    let successes = runs("success");
    let dropped: String = db
        .client()
        .query_one(
            "SELECT detail->>'reason' FROM oplog_job_run WHERE state = 'dropped_out_of_window'",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(dropped.contains("window"), "{dropped}");
    agent.kill();
    assert_eq!(runs("success"), successes);
}

/// Sleeps until the time within a 4 s slot is in `phase` (seconds).
fn wait_for_phase(phase: std::ops::Range<f64>) {
    loop {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        if phase.contains(&(now % 4.0)) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A configuration with a mistake: one line on standard error naming the
/// file, the line and the problem, and exit status 2.
#[test]
fn a_bad_configuration_is_one_clear_line_and_exit_status_2() {
    let dir = TempDir::new();
    for (text, needle) in [
        ("[agent]\nheartbeat = \"1s\"\nbogus = 1\n", "bogus"),
        (
            "[[job]]\nname = \"t\"\nkind = \"trim\"\nolder_than = \"30d\"\nevery = \"soon\"\n",
            "every",
        ),
        ("[[follower]]\nname = \"r\"\n", "into"),
    ] {
        let config = write_config(&dir, text);
        let out = oplog_cmd()
            .args(["serve", "--config"])
            .arg(&config)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{text}");
        let said = String::from_utf8_lossy(&out.stderr).to_string();
        assert_eq!(said.trim_end().lines().count(), 1, "{said}");
        assert!(said.contains("serve.toml"), "{said}");
        assert!(said.contains(needle), "{said}");
    }
}

/// The run of an agent killed while it runs a job is marked failed by the
/// agent that notices, naming the lost agent.
#[test]
fn the_run_of_an_agent_that_died_is_marked_failed_by_the_one_that_notices() {
    let db = TestDb::new();
    let dir = TempDir::new();
    let config = config_for(
        &dir,
        &db,
        None,
        r#"
[agent]
heartbeat = "200ms"
lost_after = "2s"
run_log_retention = "1d"

[[job]]
name = "retention"
kind = "trim"
every = "1s"
older_than = "30d"
"#,
    );
    // A run older than the retention: the agent prunes it.
    superuser_exec(
        &db,
        "INSERT INTO oplog_job_run (job, expected_at, state) \
         VALUES ('retention', now() - interval '2 days', 'success')",
    );
    // The trim waits for this lock: its run stays in progress.
    let mut blocker = db.client();
    let mut tx = blocker.transaction().unwrap();
    tx.batch_execute("LOCK TABLE oplog_trim_policy IN ACCESS EXCLUSIVE MODE")
        .unwrap();
    let mut first = Served::start(&dir, &config, "first");
    let in_progress = || -> Option<i64> {
        db.client()
            .query_opt(
                "SELECT id FROM oplog_job_run WHERE state = 'in_progress' LIMIT 1",
                &[],
            )
            .unwrap()
            .map(|r| r.get(0))
    };
    assert!(
        eventually(20, || in_progress().is_some()),
        "{}",
        first.said()
    );
    let run = in_progress().unwrap();
    first.kill();
    tx.rollback().unwrap();
    let second = Served::start(&dir, &config, "second");
    let failed = || {
        db.client()
            .query_opt(
                "SELECT detail->>'error' FROM oplog_job_run WHERE id = $1 AND state = 'failed'",
                &[&run],
            )
            .unwrap()
            .map(|r| r.get::<_, String>(0))
    };
    assert!(eventually(20, || failed().is_some()), "{}", second.said());
    assert!(failed().unwrap().contains("was lost"), "{:?}", failed());
    let old: i64 = db
        .scalar("SELECT count(*) FROM oplog_job_run WHERE expected_at < now() - interval '1 day'");
    assert_eq!(old, 0, "the run log keeps what is older than its retention");
}

/// An agent that stops heartbeating while its session lives on (here
/// SIGSTOP) has that session ended by the other agent, which takes its
/// relay over; when it runs again it finds its session gone, lets go of
/// what it ran, and registers again.
#[test]
fn a_hung_agent_is_cut_off_and_its_relay_taken_over() {
    let db = TestDb::new();
    let dir = TempDir::new();
    let (_, log) = keys(&dir);
    let stream = format!(
        "OPLOG_HUNG_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..10]
    );
    let prefix = stream.to_lowercase();
    let config = config_for(
        &dir,
        &db,
        None,
        &format!(
            r#"
[agent]
heartbeat = "200ms"
takeover_poll = "200ms"
lost_after = "2s"

[[relay]]
name = "nats"
nats = "{nats}"
stream = "{stream}"
subject_prefix = "{prefix}"
poll = "20ms"
"#,
            nats = std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into()),
        ),
    );
    let a = Served::start(&dir, &config, "a");
    let b = Served::start(&dir, &config, "b");
    assert!(eventually(20, || holder(&db, "nats").is_some()));
    let hung = holder(&db, "nats").unwrap();
    let other = if hung == a.pid() { b.pid() } else { a.pid() };
    let signal = |sig| {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(hung), sig).unwrap();
    };
    signal(nix::sys::signal::Signal::SIGSTOP);
    let stopped_at = Instant::now();
    create_users(&db.url, &log, "acct", (0..5).map(|i| format!("u{i}")));
    let relayed = |n: i64| {
        eventually(20, || {
            db.client()
                .query_opt(
                    "SELECT 1 FROM oplog_consumer_position WHERE consumer LIKE 'relay.%' AND seq >= $1",
                    &[&n],
                )
                .unwrap()
                .is_some()
        })
    };
    assert!(
        eventually(15, || holder(&db, "nats") == Some(other)),
        "the relay was not taken over"
    );
    assert!(relayed(5));
    let took = stopped_at.elapsed();
    signal(nix::sys::signal::Signal::SIGCONT);
    // It comes back holding nothing, registered again.
    assert!(eventually(15, || {
        db.client()
            .query_one(
                "SELECT count(*) FROM oplog_agent WHERE pid = $1 AND stopped_at IS NULL \
                 AND heartbeat_at > now() - interval '1 second' AND holds = '{}'",
                &[&hung],
            )
            .unwrap()
            .get::<_, i64>(0)
            == 1
    }));
    eprintln!("a hung agent's relay taken over in {took:?}");
    let _ = oplog::relay::delete_stream(&oplog::relay::RelayOptions {
        stream,
        subject_prefix: prefix,
        ..oplog::relay::RelayOptions::default()
    });
}
