//! An async service on tokio that records its domain writes in the oplog.
//!
//! Requests ("sign up this user for this tenant") arrive on a channel and
//! are handled concurrently by workers, each with its own tokio-postgres
//! connection. Each request is one transaction: the user's row and the
//! entry that records it, retried on a lost race without blocking a thread.
//! Half of the requests send their entry with the COMMIT (one round trip
//! less; a stale ticket position aborts and is retried), half write it and
//! then commit.
//! Several requests for one tenant run at once, so they queue on its
//! ticket. At the end every row must have its entry, and each tenant's
//! entries must be gap-free.
//!
//! ```text
//! DATABASE_URL=postgres://postgres@127.0.0.1/app cargo run --example tokio_app
//! ```
//! Without DATABASE_URL it uses (and creates) the database `oplog_example` on
//! the local server.

use std::sync::Arc;

use oplog::demo::User;
use oplog::{Keyring, NewEntry, Oplog, RetryPolicy};
use tokio::sync::{mpsc, Mutex};

const WORKERS: usize = 8;
const TENANTS: usize = 4;
const REQUESTS: usize = 400;

/// A request to the service.
struct SignUp {
    tenant: String,
    user: User,
    /// Send the entry with the COMMIT.
    with_commit: bool,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = database_url()?;
    oplog::migrate_url(&url)?;
    let mut setup = postgres::Client::connect(&url, postgres::NoTls)?;
    setup.batch_execute(oplog::demo::SCHEMA)?;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let run = format!("{:08x}", rand_u32());
    let log = Oplog::new(oplog::demo::user_catalog(), Keyring::generate());
    let tenants: Vec<String> = (0..TENANTS).map(|t| format!("tenant-{run}-{t}")).collect();

    runtime.block_on(serve(&url, log.clone(), &tenants, &run))?;

    // Every row has its entry, and each tenant's log is 1..n.
    let mut rows = 0;
    for tenant in &tenants {
        let users: i64 = setup
            .query_one(
                "SELECT count(*) FROM demo_user WHERE tenant_id = $1",
                &[tenant],
            )?
            .get(0);
        let entries = log.list(&mut setup, Some(tenant), 0, None)?;
        let seqs: Vec<i64> = entries.iter().map(|e| e.seq).collect();
        let expected: Vec<i64> = (1..=users).collect();
        if seqs != expected {
            return Err(format!("{tenant}: {users} rows but entries {seqs:?}").into());
        }
        rows += users;
    }
    println!(
        "tokio service: {REQUESTS} requests by {WORKERS} workers over {TENANTS} tenants: \
         {rows} rows, each with its entry, every tenant's seqs without a gap"
    );
    Ok(())
}

/// Feeds the requests to the workers and waits for them.
async fn serve(
    url: &str,
    log: Oplog,
    tenants: &[String],
    run: &str,
) -> Result<(), Box<dyn std::error::Error>> {
    let (send, receive) = mpsc::channel::<SignUp>(64);
    let receive = Arc::new(Mutex::new(receive));
    let mut workers = Vec::new();
    for _ in 0..WORKERS {
        let (mut client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
        tokio::spawn(connection);
        let (log, receive) = (log.clone(), receive.clone());
        workers.push(tokio::spawn(async move {
            loop {
                let request = receive.lock().await.recv().await;
                let Some(request) = request else {
                    return Ok::<_, oplog::Error>(());
                };
                handle(&mut client, &log, request).await?;
            }
        }));
    }
    for n in 0..REQUESTS {
        let tenant = tenants[n % tenants.len()].clone();
        let user = User {
            id: format!("{run}-{n}"),
            tenant_id: tenant.clone(),
            account_id: "a1".into(),
            email: format!("user{n}-{run}@example.com"),
            display_name: format!("User {n}"),
            active: true,
            ..Default::default()
        };
        send.send(SignUp {
            tenant,
            user,
            with_commit: n % 2 == 1,
        })
        .await?;
    }
    drop(send);
    for worker in workers {
        worker.await??;
    }
    Ok(())
}

/// One request: the user's row and its entry, in one transaction.
async fn handle(
    client: &mut tokio_postgres::Client,
    log: &Oplog,
    request: SignUp,
) -> oplog::Result<()> {
    let mut entry = NewEntry::new(&request.tenant);
    entry
        .metadata("actor", "signup")
        .metadata("request_id", &request.user.id)
        .create(&request.user)?;
    let user = Arc::new(request.user);
    if request.with_commit {
        RetryPolicy::default()
            .tokio_postgres_with_entry(client, log, |tx| {
                let (entry, user) = (entry.clone(), user.clone());
                Box::pin(async move {
                    tx.execute(oplog::demo::INSERT_USER, &user.params()).await?;
                    Ok::<_, oplog::Error>(((), entry))
                })
            })
            .await?;
        return Ok(());
    }
    RetryPolicy::default()
        .tokio_postgres(client, |tx| {
            let (log, entry, user) = (log.clone(), entry.clone(), user.clone());
            Box::pin(async move {
                tx.execute(oplog::demo::INSERT_USER, &user.params()).await?;
                log.write_async(tx, &entry).await
            })
        })
        .await?;
    Ok(())
}

/// A few random bits to keep runs apart.
fn rand_u32() -> u32 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    nanos ^ std::process::id()
}

fn database_url() -> Result<String, Box<dyn std::error::Error>> {
    if let Ok(url) = std::env::var("DATABASE_URL") {
        return Ok(url);
    }
    let mut admin = postgres::Client::connect(
        "postgres://postgres@127.0.0.1:5432/postgres",
        postgres::NoTls,
    )?;
    if admin
        .query_opt(
            "SELECT 1 FROM pg_database WHERE datname = 'oplog_example'",
            &[],
        )?
        .is_none()
    {
        admin.batch_execute("CREATE DATABASE oplog_example")?;
    }
    Ok("postgres://postgres@127.0.0.1:5432/oplog_example".into())
}
