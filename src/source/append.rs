//! The append protocol without I/O: what to send next, and what each answer
//! means.
//!
//! [`Append`] seals an entry as the successor of a ticket position, says
//! what the driver must send ([`Request`]: the `oplog_append` call, or the
//! catalog to store first), and takes the database's answers
//! ([`Appended`]): written, the ticket elsewhere (a pessimistic writer
//! seals again at the real position, which the answer locked; an
//! optimistic one has lost the race), no ticket, or the catalog missing.
//! The ticket cache is read when an append starts and written when it
//! succeeds. Every driver (rust-postgres, diesel, tokio-postgres) is a thin
//! loop around it that sends the requests; none decides anything itself.

use crate::codec::crypto::{Keyring, Wrapper};
use crate::codec::entry::{self, NewEntry, Sealed};
use crate::codec::subject::{self, Candidate};
use crate::error::{Error, Result};
use crate::source::write::{Oplog, Ticket, Written};
use crate::store::{Appended, InsertRow, SubjectKeyQuery, SubjectKeyRow, TicketRow};

/// How many times a pessimistic writer finds its ticket moved before it
/// gives up: the second call holds the ticket's lock, so only a database
/// that misbehaves moves it again.
const MAX_MOVES: u32 = 3;

/// One entry being appended.
pub(crate) struct Append<'a> {
    oplog: &'a Oplog,
    entry: &'a NewEntry,
    /// Wait for the ticket's lock and follow it when it moved (pessimistic),
    /// or fail when it moved (optimistic).
    wait: bool,
    /// The ticket position the entry is sealed after.
    after: TicketRow,
    seq: i64,
    /// The sealed entry, or the lookup of its subject's key it waits for.
    stage: Stage,
    /// The key of the entry's data subject, once looked up.
    subject_key: Option<Keyring>,
    /// The catalog must be stored before the next append.
    store_catalog: bool,
    /// The catalog was stored by this append.
    catalog_stored: bool,
    moves: u32,
}

/// Where an append stands.
enum Stage {
    /// Sealed: ready to be appended.
    Sealed(Sealed),
    /// Waiting for the data key of `subject`, offering `candidate` in case
    /// it has none.
    Lookup {
        subject: String,
        candidate: Candidate,
    },
}

/// What the driver sends next.
pub(crate) enum Request<'r> {
    /// Call `oplog_append` with this row; `wait` for the ticket's lock.
    Append {
        /// The entry, its metadata and the position it redeems.
        row: InsertRow<'r>,
        /// Wait for the ticket's lock (pessimistic).
        wait: bool,
    },
    /// Look up the data key of the entry's subject, creating it from the
    /// candidate when missing, and hold it (in the same transaction).
    SubjectKey(SubjectKeyQuery<'r>),
    /// Store the catalog the entry names (in the same transaction).
    StoreCatalog {
        /// The catalog's SHA-256.
        digest: &'r [u8],
        /// The encoded catalog.
        bytes: &'r [u8],
    },
}

impl<'a> Append<'a> {
    /// A pessimistic append ([`Oplog::write`]): sealed after the position
    /// this process last left the aggregate at (or its start), followed
    /// to wherever the ticket really is.
    pub(crate) fn pessimistic(oplog: &'a Oplog, entry: &'a NewEntry) -> Result<Self> {
        oplog.check_entry(entry)?;
        let after = oplog.remembered_ticket(&entry.aggregate);
        Append::sealed(oplog, entry, after, true)
    }

    /// An optimistic append ([`Oplog::write_with_ticket`]) after `ticket`.
    pub(crate) fn optimistic(
        oplog: &'a Oplog,
        ticket: &Ticket,
        entry: &'a NewEntry,
    ) -> Result<Self> {
        if ticket.name() != entry.aggregate {
            return Err(Error::Config(format!(
                "ticket {:?} does not order aggregate {:?}; read the aggregate's own ticket",
                ticket.name(),
                entry.aggregate
            )));
        }
        oplog.check_entry(entry)?;
        let after = TicketRow {
            version: ticket.version(),
            chain: ticket.chain().to_vec(),
        };
        Append::sealed(oplog, entry, after, false)
    }

    fn sealed(oplog: &'a Oplog, entry: &'a NewEntry, after: TicketRow, wait: bool) -> Result<Self> {
        // An entry of a data subject is sealed once the subject's key is
        // known.
        let (seq, stage) = match &entry.subject {
            Some(name) => (
                0,
                Stage::Lookup {
                    subject: name.clone(),
                    candidate: subject::candidate(oplog.wrapper(), name)?,
                },
            ),
            None => {
                let (seq, sealed) = seal(oplog, entry, None, &after)?;
                (seq, Stage::Sealed(sealed))
            }
        };
        Ok(Append {
            oplog,
            entry,
            wait,
            after,
            seq,
            stage,
            subject_key: None,
            store_catalog: false,
            catalog_stored: false,
            moves: 0,
        })
    }

    /// An append sent together with COMMIT
    /// ([`Oplog::write_and_commit_async`]): sealed after the position this
    /// process left the aggregate at, and never following the ticket, since
    /// a stale position aborts the transaction. `None` when this process
    /// remembers no position, or has written no entry with its catalog, so
    /// that the caller writes the entry the usual way and learns both.
    #[cfg(feature = "tokio-postgres")]
    pub(crate) fn with_commit(oplog: &'a Oplog, entry: &'a NewEntry) -> Result<Option<Self>> {
        oplog.check_entry(entry)?;
        if entry.subject.is_some() {
            return Ok(None);
        }
        match oplog.known_ticket(&entry.aggregate) {
            Some(after) => Append::sealed(oplog, entry, after, false).map(Some),
            None => Ok(None),
        }
    }

    /// What to send now.
    pub(crate) fn request(&self) -> Request<'_> {
        let encoded = self.oplog.encoded_catalog();
        if self.store_catalog {
            return Request::StoreCatalog {
                digest: &encoded.digest,
                bytes: &encoded.bytes,
            };
        }
        let sealed = match &self.stage {
            Stage::Sealed(sealed) => sealed,
            Stage::Lookup { subject, candidate } => {
                return Request::SubjectKey(SubjectKeyQuery {
                    subject,
                    key_id: &candidate.key_id,
                    wrapped: &candidate.wrapped,
                    wrapping_key_id: &candidate.wrapping_key_id,
                })
            }
        };
        Request::Append {
            row: InsertRow {
                uuid: self.entry.uuid,
                aggregate: &self.entry.aggregate,
                seq: self.seq,
                prev_chain: &self.after.chain,
                format: self.entry.format(),
                key_id: match &self.subject_key {
                    Some(key) => key.key_id(),
                    None => self.oplog.wrapper().key_id(),
                },
                data: &sealed.data,
                digest: &sealed.digest,
                chain: &sealed.chain,
                meta_keys: self.entry.metadata.iter().map(|(k, _)| k).collect(),
                meta_values: self.entry.metadata.iter().map(|(_, v)| v).collect(),
                catalog: Some(&encoded.digest),
                notify: self.oplog.notifies(),
            },
            wait: self.wait,
        }
    }

    /// What the lookup asked for by [`Request::SubjectKey`] answered: the
    /// subject's key, which seals the entry, or its shredding, which
    /// refuses it.
    pub(crate) fn subject_key_found(&mut self, row: SubjectKeyRow) -> Result<()> {
        let Stage::Lookup { subject, .. } = &self.stage else {
            return Err(Error::Config(
                "a subject key was looked up for an entry already sealed".into(),
            ));
        };
        let subject = subject.clone();
        let Some(wrapped) = row.wrapped else {
            return Err(Error::SubjectShredded { subject });
        };
        let key = subject::unwrap(self.oplog.wrapper(), &subject, &row.key_id, &wrapped)
            .map_err(|e| Error::Keyring(e.describe(&subject, &row.key_id)))?;
        let (seq, sealed) = seal(self.oplog, self.entry, Some(&key), &self.after)?;
        self.seq = seq;
        self.stage = Stage::Sealed(sealed);
        self.subject_key = Some(key);
        Ok(())
    }

    /// The catalog asked for by [`Request::StoreCatalog`] is stored.
    pub(crate) fn catalog_stored(&mut self) {
        self.store_catalog = false;
        self.catalog_stored = true;
    }

    /// What `oplog_append` answered: the written entry, or `None` when
    /// there is more to send.
    pub(crate) fn answered(&mut self, appended: Appended) -> Result<Option<Written>> {
        match appended {
            Appended::Entry(id) => {
                let Stage::Sealed(sealed) = &self.stage else {
                    return Err(Error::Config(
                        "an entry was reported written before it was sealed".into(),
                    ));
                };
                self.oplog.remember_ticket(
                    &self.entry.aggregate,
                    TicketRow {
                        version: self.seq,
                        chain: sealed.chain.to_vec(),
                    },
                );
                Ok(Some(Written {
                    id,
                    uuid: self.entry.uuid,
                    aggregate: self.entry.aggregate.clone(),
                    seq: self.seq,
                    chain: sealed.chain,
                }))
            }
            // The first entry written with this catalog in this database:
            // store it in the same transaction and append again. A catalog
            // still missing after that was not stored where the entry goes.
            Appended::MissingCatalog if !self.catalog_stored => {
                self.store_catalog = true;
                Ok(None)
            }
            Appended::MissingCatalog => Err(Error::StoredCatalog {
                digest: crate::hex::hex(&self.oplog.encoded_catalog().digest),
                reason: "still missing after it was stored in this transaction".into(),
            }),
            Appended::Moved(_) if !self.wait => Err(Error::TicketAlreadyRedeemed {
                name: self.entry.aggregate.clone(),
                version: self.after.version,
            }),
            Appended::Moved(current) => {
                self.moves += 1;
                if self.moves >= MAX_MOVES {
                    return Err(Error::TicketNotFound {
                        name: self.entry.aggregate.clone(),
                    });
                }
                let (seq, sealed) =
                    seal(self.oplog, self.entry, self.subject_key.as_ref(), &current)?;
                self.after = current;
                self.seq = seq;
                self.stage = Stage::Sealed(sealed);
                Ok(None)
            }
            Appended::NoTicket => Err(Error::TicketNotFound {
                name: self.entry.aggregate.clone(),
            }),
        }
    }
}

/// Seals `entry` as the successor of `after`, under its subject's key when
/// it has one, else under the keyring.
fn seal(
    oplog: &Oplog,
    entry: &NewEntry,
    subject_key: Option<&Keyring>,
    after: &TicketRow,
) -> Result<(i64, Sealed)> {
    let seq = after
        .version
        .checked_add(1)
        .ok_or_else(|| Error::TicketExhausted {
            name: entry.aggregate.clone(),
        })?;
    let wrapper: &dyn Wrapper = match subject_key {
        Some(key) => key,
        None => oplog.wrapper(),
    };
    let header = entry.header(seq, wrapper.key_id(), &oplog.encoded_catalog().digest);
    let sealed = entry::seal(wrapper, &header, &entry.queue, &after.chain)?;
    Ok((seq, sealed))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::crypto::Keyring;
    use crate::codec::entry::GENESIS_CHAIN;

    fn oplog() -> Oplog {
        Oplog::new(crate::testing::catalog(), Keyring::generate())
    }

    fn entry(aggregate: &str) -> NewEntry {
        let mut entry = NewEntry::new(aggregate);
        entry
            .create(&crate::testing::User {
                id: "u1".into(),
                ..Default::default()
            })
            .unwrap();
        entry
    }

    /// The row of an append request: (seq, previous chain, chain, wait).
    fn append_row(append: &Append<'_>) -> (i64, Vec<u8>, Vec<u8>, bool) {
        match append.request() {
            Request::Append { row, wait } => {
                (row.seq, row.prev_chain.to_vec(), row.chain.to_vec(), wait)
            }
            _ => panic!("expected an append"),
        }
    }

    fn position(version: i64, chain: &[u8]) -> TicketRow {
        TicketRow {
            version,
            chain: chain.to_vec(),
        }
    }

    #[test]
    fn a_pessimistic_append_follows_the_ticket_and_remembers_where_it_left_it() {
        let log = oplog();
        let e = entry("a");
        let mut append = Append::pessimistic(&log, &e).unwrap();
        let (seq, prev, _, wait) = append_row(&append);
        assert_eq!(
            (seq, prev.as_slice(), wait),
            (1, GENESIS_CHAIN.as_slice(), true)
        );

        // Another writer got there first: sealed again after its entry.
        let theirs = [7u8; 32];
        assert!(append
            .answered(Appended::Moved(position(4, &theirs)))
            .unwrap()
            .is_none());
        let (seq, prev, chain, _) = append_row(&append);
        assert_eq!((seq, prev.as_slice()), (5, theirs.as_slice()));

        let written = append.answered(Appended::Entry(42)).unwrap().unwrap();
        assert_eq!(
            (written.id, written.seq, written.chain.to_vec()),
            (42, 5, chain.clone())
        );
        // The next append of the aggregate starts from there.
        let next = entry("a");
        let append = Append::pessimistic(&log, &next).unwrap();
        let (seq, prev, _, _) = append_row(&append);
        assert_eq!((seq, prev), (6, chain));
    }

    #[test]
    #[cfg(feature = "tokio-postgres")]
    fn an_append_with_commit_needs_a_known_position_and_never_waits() {
        let log = oplog();
        let e = entry("a");
        // Nothing written yet: no position worth a transaction.
        assert!(Append::with_commit(&log, &e).unwrap().is_none());
        let mut first = Append::pessimistic(&log, &e).unwrap();
        let written = first.answered(Appended::Entry(1)).unwrap().unwrap();
        let mut append = Append::with_commit(&log, &e).unwrap().unwrap();
        let (seq, prev, _, wait) = append_row(&append);
        assert_eq!((seq, prev, wait), (2, written.chain.to_vec(), false));
        // Another aggregate's position is not known.
        assert!(Append::with_commit(&log, &entry("b")).unwrap().is_none());
        // Written: the next one follows it; forgotten: none again.
        append.answered(Appended::Entry(2)).unwrap().unwrap();
        let next = Append::with_commit(&log, &e).unwrap().unwrap();
        assert_eq!(append_row(&next).0, 3);
        log.forget_ticket("a");
        assert!(Append::with_commit(&log, &e).unwrap().is_none());
    }

    #[test]
    fn a_missing_catalog_is_stored_once_then_the_same_entry_is_appended() {
        let log = oplog();
        let e = entry("a");
        let mut append = Append::pessimistic(&log, &e).unwrap();
        let before = append_row(&append);
        assert!(append.answered(Appended::MissingCatalog).unwrap().is_none());
        match append.request() {
            Request::StoreCatalog { digest, bytes } => {
                assert_eq!(digest, log.catalog_digest().as_slice());
                assert_eq!(bytes, log.encoded_catalog().bytes.as_slice());
            }
            _ => panic!("expected the catalog first"),
        }
        append.catalog_stored();
        assert_eq!(append_row(&append), before, "the same sealed entry again");
        let err = append.answered(Appended::MissingCatalog).unwrap_err();
        assert!(matches!(err, Error::StoredCatalog { .. }), "{err}");
    }

    #[test]
    fn an_optimistic_append_loses_a_race_instead_of_following() {
        let log = oplog();
        let e = entry("a");
        let ticket = Ticket::for_tests("a", 3, &[9u8; 32]);
        let mut append = Append::optimistic(&log, &ticket, &e).unwrap();
        let (seq, prev, _, wait) = append_row(&append);
        assert_eq!(
            (seq, prev.as_slice(), wait),
            (4, [9u8; 32].as_slice(), false)
        );
        let err = append
            .answered(Appended::Moved(position(4, &[1; 32])))
            .unwrap_err();
        assert!(
            matches!(err, Error::TicketAlreadyRedeemed { version: 3, .. }) && err.is_retryable(),
            "{err}"
        );

        let other = Ticket::for_tests("b", 0, &GENESIS_CHAIN);
        assert!(matches!(
            Append::optimistic(&log, &other, &e),
            Err(Error::Config(_))
        ));
    }

    #[test]
    fn no_ticket_and_a_ticket_that_keeps_moving_are_errors() {
        let log = oplog();
        let e = entry("a");
        let mut append = Append::pessimistic(&log, &e).unwrap();
        assert!(matches!(
            append.answered(Appended::NoTicket),
            Err(Error::TicketNotFound { .. })
        ));
        let mut append = Append::pessimistic(&log, &e).unwrap();
        let mut outcome = Ok(None);
        for v in 1..=MAX_MOVES {
            outcome = append.answered(Appended::Moved(position(
                i64::from(v),
                &[u8::try_from(v).unwrap(); 32],
            )));
        }
        assert!(matches!(outcome, Err(Error::TicketNotFound { .. })));
        // A ticket at the last version cannot be redeemed again.
        let mut append = Append::pessimistic(&log, &e).unwrap();
        assert!(matches!(
            append.answered(Appended::Moved(position(i64::MAX, &[0; 32]))),
            Err(Error::TicketExhausted { .. })
        ));
    }

    #[test]
    fn an_entry_that_could_not_be_read_back_is_refused_before_anything_is_sent() {
        let log = oplog();
        assert!(Append::pessimistic(&log, &NewEntry::new("a")).is_err());
    }

    #[test]
    fn a_subject_entry_is_sealed_under_the_key_the_lookup_answers() {
        let log = oplog();
        let mut e = entry("a");
        e.subject("user-42");
        let mut append = Append::pessimistic(&log, &e).unwrap();
        let (key_id, wrapped) = match append.request() {
            Request::SubjectKey(q) => {
                assert_eq!(q.subject, "user-42");
                assert_eq!(q.wrapping_key_id, log.wrapper().key_id());
                (q.key_id.to_string(), q.wrapped.to_vec())
            }
            _ => panic!("expected the subject's key first"),
        };
        append
            .subject_key_found(SubjectKeyRow {
                key_id: key_id.clone(),
                wrapped: Some(wrapped),
            })
            .unwrap();
        match append.request() {
            Request::Append { row, .. } => {
                assert_eq!(row.format, entry::FORMAT_SUBJECT);
                assert_eq!(row.key_id, key_id);
                assert_eq!(row.seq, 1);
                // The digest is over the ciphertext, so it checks without
                // any key.
                assert_eq!(row.digest, entry::sealed_digest(row.data).as_slice());
            }
            _ => panic!("expected the append"),
        }
        // A moved ticket seals again under the same subject key.
        let moved = TicketRow {
            version: 4,
            chain: vec![7; 32],
        };
        assert!(append.answered(Appended::Moved(moved)).unwrap().is_none());
        match append.request() {
            Request::Append { row, .. } => {
                assert_eq!((row.seq, row.key_id), (5, key_id.as_str()));
            }
            _ => panic!("expected the append"),
        }
    }

    #[test]
    fn a_shredded_subject_is_refused() {
        let log = oplog();
        let mut e = entry("a");
        e.subject("user-42");
        let mut append = Append::pessimistic(&log, &e).unwrap();
        let err = append
            .subject_key_found(SubjectKeyRow {
                key_id: "s1".into(),
                wrapped: None,
            })
            .unwrap_err();
        assert!(
            matches!(err, Error::SubjectShredded { ref subject } if subject == "user-42"),
            "{err}"
        );
        // A key wrapped for another subject does not unwrap.
        let other = subject::candidate(log.wrapper(), "user-43").unwrap();
        let mut append = Append::pessimistic(&log, &e).unwrap();
        let err = append
            .subject_key_found(SubjectKeyRow {
                key_id: other.key_id,
                wrapped: Some(other.wrapped),
            })
            .unwrap_err();
        assert!(err.to_string().contains("failed authentication"), "{err}");
    }
}
