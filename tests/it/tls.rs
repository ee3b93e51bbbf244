//! TLS against the test server, which has `ssl = on` with a self-signed
//! certificate (Debian's default, the "snakeoil" certificate): `sslmode`
//! and `sslrootcert` in the library's connections, the CLI's and the
//! migrations', what `pg_stat_ssl` says about the sessions, and the one
//! line a TLS failure gives.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::Duration;

use oplog::{
    trim, verify, Database, Error, FollowEvent, FollowOptions, Follower, Keyring, Oplog,
    ReplayOptions, Replayer, Target, TlsFailure, TrimOptions, VerifyOptions,
};
use postgres::config::Host;
use x509_cert::der::oid::AssociatedOid;
use x509_cert::der::{Decode, DecodePem};
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::ext::pkix::SubjectAltName;

use crate::cli::{failure, oplog_cmd, save_keyring, success, text, TempDir};
use crate::support::{admin_url, create_users, TestDb};

/// A password the server never asks for (trust authentication), put in
/// every URL here so that the tests can check it never comes out.
const PASSWORD: &str = "pw-never-shown";

fn oplog() -> Oplog {
    Oplog::new(oplog::demo::user_catalog(), Keyring::generate())
}

fn ids(prefix: &str, n: usize) -> impl Iterator<Item = String> + '_ {
    (0..n).map(move |i| format!("{prefix}-{i}"))
}

/// The test server's address, port and user, from the administrative URL.
fn server() -> (String, u16, String) {
    let config: postgres::Config = admin_url().parse().unwrap();
    let host = match config.get_hosts().first() {
        Some(Host::Tcp(host)) => host.clone(),
        other => panic!("the TLS tests need a TCP host in DATABASE_URL, not {other:?}"),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let user = config.get_user().unwrap_or("postgres").to_string();
    (host, port, user)
}

/// A URL of `db` on the test server, with a password and `params`.
fn url(db: &TestDb, params: &str) -> String {
    let (host, port, user) = server();
    format!(
        "postgres://{user}:{PASSWORD}@{host}:{port}/{}?{params}",
        db.name
    )
}

/// The server's certificate file, which is its own CA (self-signed), after
/// checking that the server has TLS on at all.
fn server_certificate(db: &TestDb) -> PathBuf {
    let ssl: String = db.scalar("SHOW ssl");
    assert_eq!(ssl, "on", "the TLS tests need a server with ssl = on");
    let file: String = db.scalar("SHOW ssl_cert_file");
    let path = Path::new(&file);
    let path = if path.is_absolute() {
        path.to_path_buf()
    } else {
        Path::new(&db.scalar::<String>("SHOW data_directory")).join(path)
    };
    assert!(
        path.is_file(),
        "cannot read the server's certificate {path:?}"
    );
    path
}

/// The DNS names the server's certificate is valid for (its
/// subjectAltName, which is all that webpki and libpq check).
fn certificate_names(path: &Path) -> Vec<String> {
    let cert = x509_cert::Certificate::from_pem(std::fs::read(path).unwrap()).unwrap();
    let mut names = Vec::new();
    for ext in cert.tbs_certificate.extensions.iter().flatten() {
        if ext.extn_id == SubjectAltName::OID {
            let san = SubjectAltName::from_der(ext.extn_value.as_bytes()).unwrap();
            for name in san.0 {
                if let GeneralName::DnsName(name) = name {
                    names.push(name.to_string());
                }
            }
        }
    }
    names
}

/// A certificate authority of its own, which signed nothing the server
/// has, as a PEM file in `dir`.
fn unrelated_ca(dir: &TempDir) -> PathBuf {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "oplog test CA");
    let cert = params.self_signed(&key).unwrap();
    let path = dir.join("wrong-ca.pem");
    std::fs::write(&path, cert.pem()).unwrap();
    path
}

/// Whether each session of `application_name` is encrypted, as the server
/// sees it.
fn sessions(application_name: &str) -> Vec<bool> {
    let mut admin = postgres::Client::connect(&admin_url(), postgres::NoTls).unwrap();
    admin
        .query(
            "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
             WHERE a.application_name = $1",
            &[&application_name],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// Whether the session of `client` is encrypted.
fn encrypted(client: &mut postgres::Client) -> bool {
    client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .unwrap()
        .get(0)
}

fn app_name() -> String {
    format!(
        "oplog_tls_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

#[test]
fn require_encrypts_the_session_and_disable_does_not() {
    let db = TestDb::empty();
    let mut required = Database::parse(&url(&db, "sslmode=require"))
        .unwrap()
        .connect()
        .unwrap();
    assert!(encrypted(&mut required));
    let mut plain = Database::parse(&url(&db, "sslmode=disable"))
        .unwrap()
        .connect()
        .unwrap();
    assert!(!encrypted(&mut plain));
    // Without sslmode, TLS when the server offers it, as with libpq.
    let (host, port, user) = server();
    let mut default = Database::parse(&format!(
        "host={host} port={port} user={user} dbname={}",
        db.name
    ))
    .unwrap()
    .connect()
    .unwrap();
    assert!(encrypted(&mut default));
}

#[test]
fn replay_follow_verify_and_trim_run_encrypted_under_require() {
    let log = oplog();
    let source = TestDb::new();
    let replica = TestDb::empty();
    let followed = TestDb::empty();
    create_users(&source.url, &log, "tenant-a", ids("u", 3));
    // Each step names its sessions, so that a backend of the step before
    // that is still exiting is not counted.
    let named = |app: &str| format!("sslmode=require&application_name={app}");
    let app = app_name();
    let src = Database::parse(&url(&source, &named(&app))).unwrap();

    let mut replayer = Replayer::connect(
        &log,
        &src,
        Target::database(url(&replica, &named(&app))),
        ReplayOptions::default(),
    )
    .unwrap();
    // Two source sessions and the replica's, every one encrypted.
    assert_eq!(sessions(&app), vec![true; 3]);
    let report = replayer.run(&mut |_| {}).unwrap();
    assert!(report.is_complete(), "{:?}", report.stopped);
    assert_eq!(report.entries_applied, 3);
    drop(replayer);

    create_users(&source.url, &log, "tenant-a", ids("v", 2));
    let app = app_name();
    let src = Database::parse(&url(&source, &named(&app))).unwrap();
    let mut while_following = Vec::new();
    let followed_report = Follower::new(
        &log,
        &src,
        Target::database(url(&followed, &named(&app))),
        FollowOptions {
            until_caught_up: true,
            ..FollowOptions::default()
        },
    )
    .run(&mut |event| {
        if matches!(event, FollowEvent::Following { .. }) {
            while_following = sessions(&app);
        }
    })
    .unwrap();
    assert_eq!(followed_report.entries_applied, 5);
    // The control session and the replayer's three.
    assert_eq!(while_following, vec![true; 4]);

    let checked = verify(
        &log,
        &src,
        &VerifyOptions {
            against: Some(Target::database(url(&followed, "sslmode=require"))),
            ..VerifyOptions::default()
        },
    )
    .unwrap();
    assert!(checked.is_clean(), "{:?}", checked.findings);
    assert_eq!(checked.entries_checked, 5);

    let mut client = src.connect().unwrap();
    assert!(encrypted(&mut client));
    let trimmed = trim(
        &mut client,
        &TrimOptions {
            older_than: Duration::ZERO,
            ..TrimOptions::default()
        },
        &mut |_, _| {},
    )
    .unwrap();
    // The follower, the one registered consumer, applied everything.
    assert_eq!(trimmed.deleted, 5);
}

#[test]
fn verify_ca_with_the_servers_certificate_connects_to_its_address() {
    let db = TestDb::empty();
    let ca = server_certificate(&db);
    let params = format!("sslmode=verify-ca&sslrootcert={}", ca.display());
    let mut client = Database::parse(&url(&db, &params))
        .unwrap()
        .connect()
        .unwrap();
    assert!(encrypted(&mut client));
}

#[test]
fn verify_full_checks_the_host_name() {
    let db = TestDb::empty();
    let ca = server_certificate(&db);
    let (host, port, user) = server();
    let names = certificate_names(&ca);
    assert!(
        !names.is_empty(),
        "the server's certificate {ca:?} names no host"
    );
    assert!(
        !names.contains(&host),
        "the server's certificate names {host} itself; this test needs it not to"
    );

    // By address, the certificate (issued to a host name) does not match.
    let params = format!("sslmode=verify-full&sslrootcert={}", ca.display());
    let e = Database::parse(&url(&db, &params))
        .unwrap()
        .connect()
        .err()
        .expect("the connection is refused");
    assert!(
        matches!(&e, Error::Tls { kind: TlsFailure::WrongHostName, host: h, .. } if *h == format!("{host}:{port}")),
        "{e:?}"
    );
    let message = e.to_string();
    assert!(
        message.starts_with(&format!("TLS connection to {host}:{port} failed: "))
            && message.contains(&format!("not valid for the host name {host:?}"))
            && message.contains(&names[0]),
        "{message}"
    );
    assert_eq!(message.lines().count(), 1);
    assert!(!message.contains(PASSWORD));

    // By the name it was issued to, at the same address: it matches.
    let mut client = Database::parse(&format!(
        "host={} hostaddr={host} port={port} user={user} dbname={} sslmode=verify-full sslrootcert='{}'",
        names[0],
        db.name,
        ca.display()
    ))
    .unwrap()
    .connect()
    .unwrap();
    assert!(encrypted(&mut client));
}

/// `e` is the one-line error of a certificate that does not chain to the
/// given authority, under `mode`.
fn assert_untrusted(e: Error, mode: &str) {
    let (host, port, _) = server();
    assert!(
        matches!(
            &e,
            Error::Tls {
                kind: TlsFailure::UntrustedCertificate,
                ..
            }
        ),
        "{e:?}"
    );
    assert_eq!(
        e.to_string(),
        format!(
            "TLS connection to {host}:{port} failed: the server's certificate is not signed by a certificate authority in sslrootcert (sslmode={mode})"
        )
    );
}

#[test]
fn a_wrong_certificate_authority_is_one_clear_error_everywhere() {
    let log = oplog();
    let source = TestDb::new();
    let replica = TestDb::empty();
    let dir = TempDir::new();
    let wrong = unrelated_ca(&dir);
    let bad = url(
        &source,
        &format!("sslmode=verify-full&sslrootcert={}", wrong.display()),
    );
    let untrusted = |e: Error| assert_untrusted(e, "verify-full");
    untrusted(
        oplog::connect(bad.as_str())
            .err()
            .expect("the connection is refused"),
    );
    untrusted(
        Replayer::connect(
            &log,
            bad.as_str(),
            Target::database(&replica.url),
            ReplayOptions::default(),
        )
        .unwrap_err(),
    );
    // The replica's settings are its own.
    assert_untrusted(
        Replayer::connect(
            &log,
            &source.url,
            Target::database(url(
                &replica,
                &format!("sslmode=verify-ca&sslrootcert={}", wrong.display()),
            )),
            ReplayOptions::default(),
        )
        .unwrap_err(),
        "verify-ca",
    );
    untrusted(verify(&log, bad.as_str(), &VerifyOptions::default()).unwrap_err());
    // A follower does not retry a certificate it cannot trust: it stops.
    let mut reconnects = 0;
    let e = Follower::new(
        &log,
        bad.as_str(),
        Target::database(&replica.url),
        FollowOptions {
            until_caught_up: true,
            ..FollowOptions::default()
        },
    )
    .run(&mut |event| {
        if matches!(event, FollowEvent::Reconnecting { .. }) {
            reconnects += 1;
        }
    })
    .unwrap_err();
    untrusted(e);
    assert_eq!(reconnects, 0);

    // The migrations' connection reads the same settings.
    let e = oplog::migrate_url(bad.as_str()).unwrap_err();
    untrusted(e);
}

#[test]
fn migrations_run_over_require_and_verify_full() {
    let db = TestDb::empty();
    let ca = server_certificate(&db);
    let applied = oplog::migrate_url(url(&db, "sslmode=require")).unwrap();
    assert!(!applied.is_empty());
    let names = certificate_names(&ca);
    let (host, port, user) = server();
    // The name is checked, taken from host, the address from hostaddr.
    let full = format!(
        "host={} hostaddr={host} port={port} user={user} dbname={} sslmode=verify-full sslrootcert='{}'",
        names[0],
        db.name,
        ca.display()
    );
    assert_eq!(
        oplog::migrate_url(full.as_str()).unwrap(),
        Vec::<String>::new()
    );
    let by_address = url(
        &db,
        &format!("sslmode=verify-full&sslrootcert={}", ca.display()),
    );
    let e = oplog::migrate_url(by_address.as_str())
        .unwrap_err()
        .to_string();
    assert!(e.contains("not valid for the host name"), "{e}");
}

/// A server that answers a TLS request with "no", then reads the startup
/// message sent in plaintext (if any) and refuses it with a FATAL error.
/// Returns its port and a handle giving what it read after the "no".
fn server_without_tls() -> (u16, thread::JoinHandle<Vec<u8>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let handle = thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut request = [0u8; 8];
        stream.read_exact(&mut request).unwrap();
        // SSLRequest: length 8, code 80877103.
        assert_eq!(request, [0, 0, 0, 8, 4, 210, 22, 47]);
        stream.write_all(b"N").unwrap();
        let mut length = [0u8; 4];
        if stream.read_exact(&mut length).is_err() {
            return Vec::new();
        }
        let length = usize::try_from(u32::from_be_bytes(length)).unwrap();
        let mut startup = vec![0u8; length - 4];
        stream.read_exact(&mut startup).unwrap();
        let fields = b"SFATAL\0VFATAL\0C28000\0Mrefused by the test server\0\0";
        let mut reply = vec![b'E'];
        reply.extend_from_slice(&u32::try_from(fields.len() + 4).unwrap().to_be_bytes());
        reply.extend_from_slice(fields);
        stream.write_all(&reply).unwrap();
        startup
    });
    (port, handle)
}

#[test]
fn require_refuses_a_server_without_tls_and_prefer_goes_on_in_plaintext() {
    let (port, server) = server_without_tls();
    let e = Database::parse(&format!(
        "postgres://u:{PASSWORD}@127.0.0.1:{port}/db?sslmode=require"
    ))
    .unwrap()
    .connect()
    .err()
    .expect("the connection is refused");
    assert!(
        matches!(
            &e,
            Error::Tls {
                kind: TlsFailure::NotOffered,
                ..
            }
        ),
        "{e:?}"
    );
    assert_eq!(
        e.to_string(),
        format!("TLS connection to 127.0.0.1:{port} failed: the server does not accept TLS connections, and sslmode=require requires TLS")
    );
    assert!(!e.is_connection(), "a server without TLS is not retried");
    assert_eq!(server.join().unwrap(), Vec::<u8>::new());

    let (port, server) = server_without_tls();
    let e = Database::parse(&format!("host=127.0.0.1 port={port} user=u sslmode=prefer"))
        .unwrap()
        .connect()
        .err()
        .expect("the connection is refused");
    // The startup message went in plaintext, and the server's answer came
    // back as the database's error.
    let startup = server.join().unwrap();
    assert!(startup.windows(7).any(|w| w == b"user\0u\0"), "{startup:?}");
    assert_eq!(e.sqlstate(), Some("28000"), "{e:?}");
    assert!(e.to_string().contains("refused by the test server"), "{e}");
}

#[test]
fn unix_sockets_connect_without_tls_whatever_the_mode() {
    let db = TestDb::empty();
    let dirs: String = db.scalar("SHOW unix_socket_directories");
    let dir = dirs.split(',').next().unwrap().trim();
    let (_, port, user) = server();
    let mut client = Database::parse(&format!(
        "host={dir} port={port} user={user} dbname={} sslmode=require",
        db.name
    ))
    .unwrap()
    .connect()
    .unwrap();
    assert!(!encrypted(&mut client));
}

#[test]
fn the_cli_connects_under_require_and_explains_an_untrusted_certificate() {
    let dir = TempDir::new();
    let ring = Keyring::generate();
    let keys = save_keyring(&ring, &dir.join("keys.json"));
    let log = Oplog::new(oplog::demo::user_catalog(), ring);
    let source = TestDb::new();
    let replica = TestDb::empty();
    create_users(&source.url, &log, "tenant-a", ids("u", 3));
    let src = url(&source, "sslmode=require");
    let rep = url(&replica, "sslmode=require");
    let run = |args: &[&str], database: &str| {
        oplog_cmd()
            .args(args)
            .args(["--database-url", database, "--key-file", &keys])
            .output()
            .unwrap()
    };

    let replayed: serde_json::Value =
        serde_json::from_str(&success(&run(&["replay", "--into", &rep, "--json"], &src))).unwrap();
    assert_eq!(replayed["entries_applied"], 3, "{replayed}");
    success(&run(&["verify", "--against", &rep], &src));
    let followed_db = TestDb::empty();
    let followed = url(&followed_db, "sslmode=require");
    // The follower tells standard error what it does; the report is on
    // standard output.
    let out = run(
        &["follow", "--into", &followed, "--until-caught-up", "--json"],
        &src,
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["entries_applied"], 3, "{report}");
    let trimmed: serde_json::Value = serde_json::from_str(&success(&run(
        &["trim", "--older-than", "0s", "--json"],
        &src,
    )))
    .unwrap();
    assert_eq!(trimmed["deleted"], 3, "{trimmed}");

    let wrong = unrelated_ca(&dir);
    let bad = url(
        &source,
        &format!("sslmode=verify-full&sslrootcert={}", wrong.display()),
    );
    let (host, port, _) = server();
    let line = failure(
        &run(&["verify"], &bad),
        &[
            format!("TLS connection to {host}:{port} failed").as_str(),
            "not signed by a certificate authority in sslrootcert",
            "set sslrootcert in the URL to a PEM file of the certificate authority",
        ],
    );
    assert!(!line.contains(PASSWORD), "{line}");
    // The replica's URL is checked before anything runs, naming its flag.
    failure(
        &run(
            &["replay", "--into", &url(&replica, "sslmode=verify_full")],
            &src,
        ),
        &["--into: invalid configuration: sslmode \"verify_full\" is not one of"],
    );
    let missing = failure(
        &run(
            &["verify"],
            &url(
                &source,
                "sslmode=verify-full&sslrootcert=/nonexistent/ca.pem",
            ),
        ),
        &[
            "--database-url:",
            "sslrootcert /nonexistent/ca.pem: cannot read",
        ],
    );
    assert!(!missing.contains(PASSWORD), "{missing}");
    assert!(!text(&run(&["verify"], &bad).stderr).contains(PASSWORD));
}
