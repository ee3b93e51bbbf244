//! Opening connections from a URL: the one place where the library turns a
//! connection string into a rust-postgres client, so that every connection
//! it opens (and [`migrate_url`](crate::migrate_url)'s diesel connection)
//! checks the string the same way.

use postgres::{Client, NoTls};

use crate::error::{Error, Result};

/// Checks that `url` is a PostgreSQL connection string: a `postgres://` or
/// `postgresql://` URL, or `key=value` settings. Any other scheme
/// (`mysql://`, `http://`) is refused with its name ([`Error::Config`])
/// instead of the driver's parse error ("unexpected EOF").
///
/// Only the scheme is checked here; the driver parses the rest when it
/// connects.
///
/// ```
/// assert!(oplog::check_url("postgres://app@db.internal:5432/app").is_ok());
/// assert!(oplog::check_url("host=/run/postgresql user=app").is_ok());
/// let refused = oplog::check_url("mysql://root@db/app").unwrap_err();
/// assert!(refused.to_string().contains("\"mysql\" is not PostgreSQL's"));
/// ```
pub fn check_url(url: &str) -> Result<()> {
    let Some((scheme, _)) = url.split_once("://") else {
        return Ok(());
    };
    // A `key=value` string may hold "://" inside a value; a scheme is a
    // plain word.
    if !scheme
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
    {
        return Ok(());
    }
    match scheme.to_ascii_lowercase().as_str() {
        "postgres" | "postgresql" => Ok(()),
        other => Err(Error::Config(format!(
            "database URL scheme {other:?} is not PostgreSQL's: use postgres://USER@HOST:PORT/DATABASE"
        ))),
    }
}

/// Connects to the database at `url`, as every connection the library
/// opens from a URL does: the URL is checked with [`check_url`] first, and
/// the connection is made without TLS (use a Unix socket or a local
/// network, or connect yourself with a TLS connector and pass the client
/// to the functions that take one).
///
/// ```no_run
/// let mut client = oplog::connect("postgres://postgres@127.0.0.1/app")?;
/// let heads = oplog::heads(&mut client, None)?;
/// # Ok::<(), oplog::Error>(())
/// ```
pub fn connect(url: &str) -> Result<Client> {
    check_url(url)?;
    Ok(Client::connect(url, NoTls)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_postgres_urls_and_key_value_strings_pass() {
        for ok in [
            "postgres://u@h/db",
            "postgresql://u@h:5432/db?sslmode=disable",
            "POSTGRES://u@h/db",
            "host=127.0.0.1 user=postgres",
            "host=h options='-c x=a://b'",
        ] {
            assert!(check_url(ok).is_ok(), "{ok}");
        }
        for bad in ["mysql://root@h/db", "http://h/", "redis://h"] {
            let e = check_url(bad).unwrap_err().to_string();
            assert!(e.contains("is not PostgreSQL's"), "{bad}: {e}");
        }
    }
}
