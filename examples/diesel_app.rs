//! A diesel application that records its domain writes in the oplog: the
//! entry is written on the same `PgConnection`, inside the closure of
//! `conn.transaction`, so it commits or rolls back with the domain rows.
//!
//! ```text
//! DATABASE_URL=postgres://postgres@127.0.0.1/app cargo run --example diesel_app
//! ```
//! Without DATABASE_URL it uses the database `oplog_example` on the local
//! server (create it first, or run the `postgres_app` example once).

use diesel::connection::SimpleConnection;
use diesel::sql_types::Text;
use diesel::{Connection, PgConnection, RunQueryDsl};
use oplog::demo::User;
use oplog::{Keyring, NewEntry, Oplog, RetryPolicy};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/oplog_example".into());
    let mut conn = PgConnection::establish(&url)?;
    oplog::migrate(&mut conn)?;
    conn.batch_execute(oplog::demo::SCHEMA)?;

    let log = Oplog::new(oplog::demo::user_catalog(), Keyring::generate());
    let user = User {
        id: uuid::Uuid::new_v4().to_string(),
        tenant_id: "t-diesel".into(),
        account_id: "a-diesel".into(),
        email: format!("{}@example.com", uuid::Uuid::new_v4().simple()),
        display_name: "Linus".into(),
        ..Default::default()
    };

    // The retry helper opens the transaction and runs it again if the ticket
    // race is lost or the database reports a serialization failure.
    let done = RetryPolicy::default().diesel(&mut conn, |c| {
        diesel::sql_query("INSERT INTO demo_user (id, tenant_id, account_id, email, display_name) VALUES ($1, $2, $3, $4, $5)")
            .bind::<Text, _>(&user.id)
            .bind::<Text, _>(&user.tenant_id)
            .bind::<Text, _>(&user.account_id)
            .bind::<Text, _>(&user.email)
            .bind::<Text, _>(&user.display_name)
            .execute(c)?;
        let mut entry = NewEntry::new("t-diesel");
        entry.metadata("actor", "diesel-example").create(&user)?;
        log.write(c, &entry)
    })?;
    println!(
        "wrote entry {} (aggregate {}, seq {}) in {} attempt(s)",
        done.value.id, done.value.aggregate, done.value.seq, done.attempts
    );

    let entries = log.list(&mut conn, Some("t-diesel"), done.value.seq - 1, None)?;
    let logged: User = entries[0].operations[0].decode()?;
    assert_eq!(logged, user);
    println!("read back: {} <{}>", logged.display_name, logged.email);
    Ok(())
}
