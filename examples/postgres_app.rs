//! A rust-postgres application that records its domain writes in the oplog.
//!
//! Writes a tenant's account and users, each change in its own transaction
//! together with the entry that records it, then reads the log back.
//!
//! ```text
//! DATABASE_URL=postgres://postgres@127.0.0.1/app cargo run --example postgres_app
//! ```
//! Without DATABASE_URL it uses (and creates) the database `oplog_example` on
//! the local server.

use oplog::demo::{Account, User};
use oplog::{Keyring, NewEntry, Oplog, RetryPolicy};
use postgres::{Client, NoTls};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = database_url()?;
    oplog::migrate_url(&url)?;
    let mut client = Client::connect(&url, NoTls)?;
    client.batch_execute(oplog::demo::SCHEMA)?;

    let log = Oplog::new(oplog::demo::user_catalog(), Keyring::generate());
    let aggregate = format!("tenant-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let retry = RetryPolicy::default();

    // One transaction: the account row, and the entry that records it.
    let account = Account {
        id: uuid::Uuid::new_v4().to_string(),
        tenant_id: aggregate.clone(),
        name: "Acme".into(),
        plan: "pro".into(),
        ..Default::default()
    };
    retry.postgres(&mut client, |tx| {
        tx.execute(
            "INSERT INTO demo_account (id, tenant_id, name, plan) VALUES ($1, $2, $3, $4)",
            &[
                &account.id,
                &account.tenant_id,
                &account.name,
                &account.plan,
            ],
        )?;
        let mut entry = NewEntry::new(&aggregate);
        entry.metadata("actor", "alice").create(&account)?;
        log.write(tx, &entry)
    })?;

    // Another: two users, then an update that sets one field and clears another.
    let users: Vec<User> = ["ada", "grace"]
        .iter()
        .map(|name| User {
            id: uuid::Uuid::new_v4().to_string(),
            tenant_id: aggregate.clone(),
            account_id: account.id.clone(),
            email: format!("{name}-{}@example.com", &account.id[..8]),
            display_name: name.to_string(),
            phone: Some("+1 555 0100".into()),
            active: true,
            ..Default::default()
        })
        .collect();
    retry.postgres(&mut client, |tx| {
        for u in &users {
            tx.execute(
                "INSERT INTO demo_user (id, tenant_id, account_id, email, display_name, phone) VALUES ($1, $2, $3, $4, $5, $6)",
                &[&u.id, &u.tenant_id, &u.account_id, &u.email, &u.display_name, &u.phone],
            )?;
        }
        let renamed = User { display_name: "Ada L.".into(), ..users[0].clone() };
        tx.execute("UPDATE demo_user SET display_name = $2, phone = NULL WHERE id = $1", &[&renamed.id, &renamed.display_name])?;
        let mut entry = NewEntry::new(&aggregate);
        entry.metadata("actor", "bob").metadata("request-id", "req-42");
        entry.create_items(&users)?;
        entry.update(&renamed, &["display_name"], &["phone"])?;
        log.write(tx, &entry)
    })?;

    for entry in log.list(&mut client, Some(&aggregate), 0, None)? {
        println!(
            "{} seq {} ({} operations)",
            entry.aggregate,
            entry.seq,
            entry.operations.len()
        );
        for (key, value) in entry.metadata.iter() {
            println!("  {key} = {value}");
        }
        for op in &entry.operations {
            println!(
                "  {} {} mask={:?} null={:?}",
                op.op.as_str_name(),
                op.type_name,
                op.field_mask,
                op.null_mask
            );
        }
    }
    Ok(())
}

/// DATABASE_URL, or a local database made for the example.
fn database_url() -> Result<String, Box<dyn std::error::Error>> {
    if let Ok(url) = std::env::var("DATABASE_URL") {
        return Ok(url);
    }
    let mut admin = Client::connect("postgres://postgres@127.0.0.1:5432/postgres", NoTls)?;
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
