//! Opening connections from a URL: the one place where the library turns a
//! connection string into a rust-postgres client, so that every connection
//! it opens checks the string the same way.

use postgres::{Client, NoTls};

use crate::error::{Error, Result};

/// Checks that `url` is a PostgreSQL connection string: a `postgres://` or
/// `postgresql://` URL, or `key=value` settings. Any other scheme
/// (`mysql://`, `http://`) is refused with its name instead of the driver's
/// parse error.
pub(crate) fn check_url(url: &str) -> Result<()> {
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

/// Connects to the database at `url`.
pub(crate) fn connect(url: &str) -> Result<Client> {
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
