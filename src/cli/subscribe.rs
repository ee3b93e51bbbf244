//! `oplog subscribe`: a named subscription from the command line. Entries
//! go to standard output as JSON Lines (at least once: the position moves
//! once a batch is written and flushed), or with `--into` into a table of
//! another database, in the same transaction as the position (exactly
//! once).

use std::sync::atomic::Ordering;

use oplog::{Batch, SubscribeOptions, Subscription};

use super::render::EntryView;
use super::{read_failure, Context, Failure, Output};

/// The table `--into` fills: one row per entry, the entry as `oplog log
/// --json` prints it.
pub(crate) const DELIVERED: &str = "CREATE TABLE IF NOT EXISTS oplog_delivered (
    entry_uuid uuid PRIMARY KEY,
    aggregate_name text NOT NULL,
    seq bigint NOT NULL,
    entry jsonb NOT NULL,
    delivered_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (aggregate_name, seq)
)";

/// Runs the subscription until Ctrl-C or SIGTERM (or caught up, when
/// asked); prints a summary on standard error.
pub fn run(
    ctx: &Context,
    out: &mut Output,
    options: SubscribeOptions,
    into: Option<&str>,
) -> Result<(), Failure> {
    let oplog = super::reader(ctx.keyring()?);
    let mut subscription = Subscription::new(&oplog, ctx.database()?.clone(), options)
        .on_event(super::waiting_said("subscribe"));
    let stop = subscription.stop_flag();
    ctrlc::set_handler(move || stop.store(true, Ordering::Relaxed))
        .map_err(|e| Failure::msg(format!("cannot install the Ctrl-C/SIGTERM handler: {e}")))?;
    let report = match into {
        None => subscription.run(|batch| {
            for entry in &batch.entries {
                let view = EntryView::decode(entry).map_err(|f| f.message())?;
                out.json_line(&view.json()).map_err(|f| f.message())?;
            }
            out.flush().map_err(|f| f.message())
        }),
        Some(url) => {
            let target =
                oplog::Database::parse(url).map_err(|e| Failure::msg(format!("--into: {e}")))?;
            let mut client = target.connect().map_err(read_failure)?;
            client
                .batch_execute(DELIVERED)
                .map_err(|e| read_failure(e.into()))?;
            subscription.run_in(&mut client, record)
        }
    }
    .map_err(read_failure)?;
    eprintln!(
        "oplog: subscribe: {} entries in {} batches, {} retries, {} reconnects{}",
        report.delivered,
        report.batches,
        report.retries,
        report.reconnects,
        if report.parked.is_empty() {
            String::new()
        } else {
            format!("; parked: {}", report.parked.join(", "))
        }
    );
    Ok(())
}

/// Stores a batch in `oplog_delivered`, in the subscription's transaction.
pub(crate) fn record(tx: &mut postgres::Transaction<'_>, batch: &Batch) -> Result<(), String> {
    for entry in &batch.entries {
        let view = EntryView::decode(entry).map_err(|f| f.message())?;
        let json = serde_json::to_string(&view.json()).map_err(|e| e.to_string())?;
        tx.execute(
            "INSERT INTO oplog_delivered (entry_uuid, aggregate_name, seq, entry) \
             VALUES ($1::text::uuid, $2, $3, $4::text::jsonb)",
            &[&entry.uuid.to_string(), &entry.aggregate, &entry.seq, &json],
        )
        .map_err(|e| e.to_string())?;
    }
    Ok(())
}
