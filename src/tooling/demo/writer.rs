//! The demo's writers: domain transactions on a tenant's accounts, users
//! and invoices, each recorded by one oplog entry on the tenant's aggregate.
//!
//! Every transaction first locks one account of its tenant (`FOR UPDATE
//! SKIP LOCKED`, found by probing the primary key at a random point) and
//! then touches only that account and its users and invoices. So no two
//! transactions change the same rows at the same time, no transaction waits
//! for another's rows, and no deadlock is possible; what they do wait for
//! (or race for, in the optimistic mode) is the tenant's ticket. An update
//! or delete only names rows the transaction holds locked, so every entry
//! describes exactly what its transaction did, and a replica that applies
//! each tenant's entries in seq order ends up with the same rows.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use postgres::{Client, Statement, Transaction};
use rand::Rng;
use uuid::Uuid;

use crate::codec::entry::NewEntry;
use crate::error::{Error, Result};
use crate::source::retry::RetryPolicy;
use crate::source::write::{LockMode, Oplog};
use crate::tooling::demo::{Account, Invoice, InvoiceStatus, User};

/// One tenant: its rows carry `id`, its entries go to `aggregate`.
#[derive(Debug, Clone)]
pub(crate) struct Tenant {
    pub id: String,
    pub aggregate: String,
}

/// What a transaction does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Action {
    /// A new account with its first users: a CREATE and a CREATE_ITEMS.
    Signup,
    /// A user joins an account: a CREATE.
    AddUser,
    /// A user edits their profile: an UPDATE with a field mask, sometimes
    /// with null paths.
    UpdateProfile,
    /// A user leaves: a DELETE.
    DeleteUser,
    /// An invoice is issued and the account's balance grows: a CREATE and
    /// an UPDATE.
    IssueInvoice,
    /// An invoice is paid: two UPDATEs.
    PayInvoice,
    /// An invoice is cancelled: two UPDATEs, one with a null path.
    VoidInvoice,
    /// The account changes plan: an UPDATE.
    ChangePlan,
    /// The account is closed: an UPDATE.
    CloseAccount,
    /// A closed account goes with its users and invoices: DELETE_ITEMS and
    /// a DELETE.
    DeleteAccount,
}

impl Action {
    /// The name used in reports and in the entry's `action` metadata.
    pub fn name(self) -> &'static str {
        match self {
            Action::Signup => "signup",
            Action::AddUser => "add_user",
            Action::UpdateProfile => "update_profile",
            Action::DeleteUser => "delete_user",
            Action::IssueInvoice => "issue_invoice",
            Action::PayInvoice => "pay_invoice",
            Action::VoidInvoice => "void_invoice",
            Action::ChangePlan => "change_plan",
            Action::CloseAccount => "close_account",
            Action::DeleteAccount => "delete_account",
        }
    }
}

/// How often each action is picked after the opening round, out of 100.
const WEIGHTS: [(Action, u32); 10] = [
    (Action::Signup, 10),
    (Action::AddUser, 14),
    (Action::UpdateProfile, 20),
    (Action::DeleteUser, 6),
    (Action::IssueInvoice, 16),
    (Action::PayInvoice, 12),
    (Action::VoidInvoice, 4),
    (Action::ChangePlan, 8),
    (Action::CloseAccount, 6),
    (Action::DeleteAccount, 4),
];

/// Each writer's first transactions, on one tenant: every action once (an
/// invoice is issued twice, to be paid and voided), each finding the rows
/// it needs left by the ones before it. Later transactions pick actions by
/// [`WEIGHTS`] and tenants at random.
pub(crate) const OPENING: [Action; 11] = [
    Action::Signup,
    Action::AddUser,
    Action::UpdateProfile,
    Action::IssueInvoice,
    Action::PayInvoice,
    Action::IssueInvoice,
    Action::VoidInvoice,
    Action::ChangePlan,
    Action::DeleteUser,
    Action::CloseAccount,
    Action::DeleteAccount,
];

fn weighted(rng: &mut impl Rng) -> Action {
    let total: u32 = WEIGHTS.iter().map(|(_, w)| w).sum();
    let mut pick = rng.gen_range(0..total);
    for (action, weight) in WEIGHTS {
        if pick < weight {
            return action;
        }
        pick -= weight;
    }
    Action::Signup
}

/// Which accounts an action can work on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Need {
    Open,
    OpenWithUsers,
    OpenWithOpenInvoice,
    Closed,
}

impl Need {
    const ALL: [Need; 4] = [
        Need::Open,
        Need::OpenWithUsers,
        Need::OpenWithOpenInvoice,
        Need::Closed,
    ];

    fn condition(self) -> &'static str {
        match self {
            Need::Open => "closed_reason IS NULL",
            Need::OpenWithUsers => {
                "closed_reason IS NULL AND EXISTS (SELECT 1 FROM demo_user u WHERE u.account_id = a.id)"
            }
            Need::OpenWithOpenInvoice => {
                "closed_reason IS NULL AND EXISTS (SELECT 1 FROM demo_invoice i WHERE i.account_id = a.id AND i.status = 'INVOICE_STATUS_OPEN')"
            }
            Need::Closed => "closed_reason IS NOT NULL",
        }
    }
}

/// Indexes the demo's queries use; created with the demo tables.
pub(crate) const INDEXES: &str = "\
CREATE INDEX IF NOT EXISTS demo_account_tenant ON demo_account (tenant_id, id);
CREATE INDEX IF NOT EXISTS demo_user_account ON demo_user (account_id);";

/// A writer's prepared statements.
struct Statements {
    /// `[need][0]` probes upwards from a random id, `[need][1]` downwards.
    pick_account: Vec<[Statement; 2]>,
    insert_account: Statement,
    adjust_balance: Statement,
    set_plan: Statement,
    close_account: Statement,
    delete_account: Statement,
    delete_account_users: Statement,
    delete_account_invoices: Statement,
    insert_user: Statement,
    pick_user: Statement,
    rename_user: Statement,
    clear_user: Statement,
    phone_user: Statement,
    email_user: Statement,
    delete_user: Statement,
    insert_invoice: Statement,
    pick_open_invoice: Statement,
    pay_invoice: Statement,
    void_invoice: Statement,
}

impl Statements {
    fn prepare(c: &mut Client) -> Result<Statements> {
        let mut pick_account = Vec::new();
        for need in Need::ALL {
            let probe = |op: &str, order: &str| {
                format!(
                    "SELECT id FROM demo_account a WHERE tenant_id = $1 AND id {op} $2 AND {} \
                     ORDER BY id {order} LIMIT 1 FOR UPDATE SKIP LOCKED",
                    need.condition()
                )
            };
            pick_account.push([
                c.prepare(&probe(">=", "ASC"))?,
                c.prepare(&probe("<", "DESC"))?,
            ]);
        }
        Ok(Statements {
            pick_account,
            insert_account: c.prepare(
                "INSERT INTO demo_account (id, tenant_id, name, plan, balance_cents, created_at, closed_reason) \
                 VALUES ($1, $2, $3, $4, 0, $5, NULL)",
            )?,
            adjust_balance: c.prepare(
                "UPDATE demo_account SET balance_cents = balance_cents + $2 WHERE id = $1 RETURNING balance_cents",
            )?,
            set_plan: c.prepare("UPDATE demo_account SET plan = $2 WHERE id = $1")?,
            close_account: c.prepare("UPDATE demo_account SET closed_reason = $2 WHERE id = $1")?,
            delete_account: c.prepare("DELETE FROM demo_account WHERE id = $1")?,
            delete_account_users: c
                .prepare("DELETE FROM demo_user WHERE account_id = $1 RETURNING id")?,
            delete_account_invoices: c
                .prepare("DELETE FROM demo_invoice WHERE account_id = $1 RETURNING id")?,
            insert_user: c.prepare(super::INSERT_USER)?,
            pick_user: c.prepare(
                "SELECT id FROM demo_user WHERE account_id = $1 ORDER BY random() LIMIT 1",
            )?,
            rename_user: c
                .prepare("UPDATE demo_user SET display_name = $2, age = $3 WHERE id = $1")?,
            clear_user: c.prepare(
                "UPDATE demo_user SET display_name = $2, phone = NULL, age = NULL WHERE id = $1",
            )?,
            phone_user: c.prepare("UPDATE demo_user SET phone = $2, active = $3 WHERE id = $1")?,
            email_user: c.prepare("UPDATE demo_user SET email = $2 WHERE id = $1")?,
            delete_user: c.prepare("DELETE FROM demo_user WHERE id = $1")?,
            insert_invoice: c.prepare(
                "INSERT INTO demo_invoice (id, tenant_id, account_id, amount_cents, status, issued_at, paid_at) \
                 VALUES ($1, $2, $3, $4, 'INVOICE_STATUS_OPEN', $5, NULL)",
            )?,
            pick_open_invoice: c.prepare(
                "SELECT id, amount_cents FROM demo_invoice WHERE account_id = $1 \
                 AND status = 'INVOICE_STATUS_OPEN' ORDER BY random() LIMIT 1",
            )?,
            pay_invoice: c.prepare(
                "UPDATE demo_invoice SET status = 'INVOICE_STATUS_PAID', paid_at = $2 WHERE id = $1",
            )?,
            void_invoice: c.prepare(
                "UPDATE demo_invoice SET status = 'INVOICE_STATUS_VOID', paid_at = NULL WHERE id = $1",
            )?,
        })
    }
}

/// What one committed transaction did.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Done {
    /// The action performed (the planned one, or a signup when the planned
    /// one found no account to work on).
    pub action: Action,
    /// Operations in its entry.
    pub operations: usize,
    /// Attempts it took, from 1.
    pub attempts: u32,
}

/// One writer: its connection, statements and tenants.
pub(crate) struct Writer<'a> {
    client: Client,
    st: Statements,
    oplog: &'a Oplog,
    tenants: &'a [Tenant],
    index: usize,
    mode: LockMode,
    retry: RetryPolicy,
}

impl<'a> Writer<'a> {
    pub fn connect(
        url: &str,
        oplog: &'a Oplog,
        tenants: &'a [Tenant],
        index: usize,
        mode: LockMode,
        retry: RetryPolicy,
    ) -> Result<Self> {
        let mut client = crate::store::connect::connect(url)?;
        let st = Statements::prepare(&mut client)?;
        Ok(Writer {
            client,
            st,
            oplog,
            tenants,
            index,
            mode,
            retry,
        })
    }

    /// Commits this writer's `n`th transaction (from 0), retrying it by the
    /// policy when it loses its ticket race.
    pub fn step(&mut self, n: usize) -> Result<Done> {
        let mut rng = rand::thread_rng();
        let (planned, tenant, opening) = match OPENING.get(n) {
            Some(&action) => (action, &self.tenants[self.index % self.tenants.len()], true),
            None => (
                weighted(&mut rng),
                &self.tenants[rng.gen_range(0..self.tenants.len())],
                false,
            ),
        };
        let actor = format!("demo-writer-{}", self.index);
        let Writer {
            client,
            st,
            oplog,
            mode,
            retry,
            ..
        } = self;
        let done = retry.postgres(client, |tx| {
            // Optimistic: read the ticket first, as Boundary does, and lose
            // the race if another transaction redeems it before this one
            // writes its entry.
            let ticket = match mode {
                LockMode::Optimistic => Some(oplog.ticket(tx, &tenant.aggregate)?),
                LockMode::Pessimistic => None,
            };
            let mut entry = NewEntry::new(tenant.aggregate.as_str());
            let action = perform(tx, st, tenant, planned, opening, &mut entry)?;
            entry
                .metadata("actor", actor.as_str())
                .metadata("request_id", Uuid::new_v4().to_string())
                .metadata("action", action.name());
            match &ticket {
                Some(ticket) => oplog.write_with_ticket(tx, ticket, &entry)?,
                None => oplog.write(tx, &entry)?,
            };
            Ok::<_, Error>((action, entry.len()))
        })?;
        Ok(Done {
            action: done.value.0,
            operations: done.value.1,
            attempts: done.attempts,
        })
    }
}

/// Performs `planned` (or a signup when there is no account to perform it
/// on) and records it in `entry`.
fn perform(
    tx: &mut Transaction<'_>,
    st: &Statements,
    tenant: &Tenant,
    planned: Action,
    opening: bool,
    entry: &mut NewEntry,
) -> Result<Action> {
    let need = match planned {
        Action::Signup => None,
        Action::AddUser | Action::IssueInvoice | Action::ChangePlan | Action::CloseAccount => {
            Some(Need::Open)
        }
        Action::UpdateProfile | Action::DeleteUser => Some(Need::OpenWithUsers),
        Action::PayInvoice | Action::VoidInvoice => Some(Need::OpenWithOpenInvoice),
        Action::DeleteAccount => Some(Need::Closed),
    };
    let account = match need {
        Some(need) => pick_account(tx, st, tenant, need)?,
        None => None,
    };
    let Some(account) = account else {
        return fallback(tx, st, tenant, entry);
    };
    let mut rng = rand::thread_rng();
    let (time, stamp) = now();
    let account_msg = |balance_cents: i64| Account {
        id: account.clone(),
        tenant_id: tenant.id.clone(),
        balance_cents,
        ..Account::default()
    };
    match planned {
        // A signup needs no account and returned above; this arm keeps the
        // match total without a panic.
        Action::Signup => signup(tx, st, tenant, entry)?,
        Action::AddUser => {
            let user = new_user(&tenant.id, &account, &mut rng);
            insert_user(tx, st, &user)?;
            entry.create(&user)?;
        }
        Action::UpdateProfile => {
            let Some(row) = tx.query_opt(&st.pick_user, &[&account])? else {
                return fallback(tx, st, tenant, entry);
            };
            let id: String = row.get(0);
            let mut user = User {
                id: id.clone(),
                tenant_id: tenant.id.clone(),
                account_id: account.clone(),
                ..User::default()
            };
            // The opening round always clears fields, so that every run
            // writes null paths.
            let variant = if opening { 1 } else { rng.gen_range(0..4) };
            match variant {
                0 => {
                    user.display_name = display_name(&mut rng);
                    user.age = Some(rng.gen_range(18..90));
                    tx.execute(&st.rename_user, &[&id, &user.display_name, &user.age])?;
                    entry.update(&user, &["display_name", "age"], &[])?;
                }
                1 => {
                    user.display_name = display_name(&mut rng);
                    tx.execute(&st.clear_user, &[&id, &user.display_name])?;
                    entry.update(&user, &["display_name"], &["phone", "age"])?;
                }
                2 => {
                    user.phone = Some(phone(&mut rng));
                    user.active = rng.gen_bool(0.8);
                    tx.execute(&st.phone_user, &[&id, &user.phone, &user.active])?;
                    entry.update(&user, &["phone", "active"], &[])?;
                }
                _ => {
                    user.email = email();
                    tx.execute(&st.email_user, &[&id, &user.email])?;
                    entry.update(&user, &["email"], &[])?;
                }
            }
        }
        Action::DeleteUser => {
            let Some(row) = tx.query_opt(&st.pick_user, &[&account])? else {
                return fallback(tx, st, tenant, entry);
            };
            let id: String = row.get(0);
            tx.execute(&st.delete_user, &[&id])?;
            entry.delete(&User {
                id,
                tenant_id: tenant.id.clone(),
                account_id: account.clone(),
                ..User::default()
            })?;
        }
        Action::IssueInvoice => {
            let invoice = Invoice {
                id: new_id("inv"),
                tenant_id: tenant.id.clone(),
                account_id: account.clone(),
                amount_cents: rng.gen_range(500..250_000),
                status: InvoiceStatus::Open.into(),
                issued_at: Some(stamp),
                paid_at: None,
            };
            tx.execute(
                &st.insert_invoice,
                &[
                    &invoice.id,
                    &invoice.tenant_id,
                    &invoice.account_id,
                    &invoice.amount_cents,
                    &time,
                ],
            )?;
            let balance = adjust(tx, st, &account, invoice.amount_cents)?;
            entry
                .create(&invoice)?
                .update(&account_msg(balance), &["balance_cents"], &[])?;
        }
        Action::PayInvoice | Action::VoidInvoice => {
            let Some(row) = tx.query_opt(&st.pick_open_invoice, &[&account])? else {
                return fallback(tx, st, tenant, entry);
            };
            let (id, amount): (String, i64) = (row.get(0), row.get(1));
            let mut invoice = Invoice {
                id: id.clone(),
                tenant_id: tenant.id.clone(),
                account_id: account.clone(),
                ..Invoice::default()
            };
            if planned == Action::PayInvoice {
                invoice.status = InvoiceStatus::Paid.into();
                invoice.paid_at = Some(stamp);
                tx.execute(&st.pay_invoice, &[&id, &time])?;
                entry.update(&invoice, &["status", "paid_at"], &[])?;
            } else {
                invoice.status = InvoiceStatus::Void.into();
                tx.execute(&st.void_invoice, &[&id])?;
                entry.update(&invoice, &["status"], &["paid_at"])?;
            }
            let balance = adjust(tx, st, &account, -amount)?;
            entry.update(&account_msg(balance), &["balance_cents"], &[])?;
        }
        Action::ChangePlan => {
            let plan = ["free", "team", "business", "enterprise"][rng.gen_range(0..4)];
            tx.execute(&st.set_plan, &[&account, &plan])?;
            entry.update(
                &Account {
                    plan: plan.into(),
                    ..account_msg(0)
                },
                &["plan"],
                &[],
            )?;
        }
        Action::CloseAccount => {
            let reason =
                ["customer request", "non-payment", "merged", "fraud review"][rng.gen_range(0..4)];
            tx.execute(&st.close_account, &[&account, &reason])?;
            entry.update(
                &Account {
                    closed_reason: Some(reason.into()),
                    ..account_msg(0)
                },
                &["closed_reason"],
                &[],
            )?;
        }
        Action::DeleteAccount => {
            let invoices: Vec<Invoice> = tx
                .query(&st.delete_account_invoices, &[&account])?
                .iter()
                .map(|r| Invoice {
                    id: r.get(0),
                    tenant_id: tenant.id.clone(),
                    account_id: account.clone(),
                    ..Invoice::default()
                })
                .collect();
            let users: Vec<User> = tx
                .query(&st.delete_account_users, &[&account])?
                .iter()
                .map(|r| User {
                    id: r.get(0),
                    tenant_id: tenant.id.clone(),
                    account_id: account.clone(),
                    ..User::default()
                })
                .collect();
            tx.execute(&st.delete_account, &[&account])?;
            entry
                .delete_items(&invoices)?
                .delete_items(&users)?
                .delete(&account_msg(0))?;
        }
    }
    Ok(planned)
}

/// A signup instead of an action that found nothing to work on.
///
/// Besides there being no such account, this happens when the account's
/// last user or open invoice went just before it was locked: the locking
/// statement's `EXISTS` test saw an older snapshot, and a transaction that
/// only locked the account (and changed its users or invoices) does not
/// make PostgreSQL test the account again. Later statements see the
/// current state, so nothing is recorded that did not happen.
fn fallback(
    tx: &mut Transaction<'_>,
    st: &Statements,
    tenant: &Tenant,
    entry: &mut NewEntry,
) -> Result<Action> {
    signup(tx, st, tenant, entry)?;
    Ok(Action::Signup)
}

/// Locks an account of `tenant` that `need` allows, found by probing its
/// primary key from a random point in both directions; `None` when every
/// such account is locked by another writer or there is none.
fn pick_account(
    tx: &mut Transaction<'_>,
    st: &Statements,
    tenant: &Tenant,
    need: Need,
) -> Result<Option<String>> {
    let probe = new_id("acct");
    let i = Need::ALL.iter().position(|n| *n == need).unwrap_or(0);
    for statement in &st.pick_account[i] {
        if let Some(row) = tx.query_opt(statement, &[&tenant.id, &probe])? {
            return Ok(Some(row.get(0)));
        }
    }
    Ok(None)
}

fn adjust(tx: &mut Transaction<'_>, st: &Statements, account: &str, by: i64) -> Result<i64> {
    Ok(tx.query_one(&st.adjust_balance, &[&account, &by])?.get(0))
}

/// A new account with one to three users.
fn signup(
    tx: &mut Transaction<'_>,
    st: &Statements,
    tenant: &Tenant,
    entry: &mut NewEntry,
) -> Result<()> {
    let mut rng = rand::thread_rng();
    let (time, stamp) = now();
    let account = Account {
        id: new_id("acct"),
        tenant_id: tenant.id.clone(),
        name: company(&mut rng),
        plan: "free".into(),
        balance_cents: 0,
        created_at: Some(stamp),
        closed_reason: None,
    };
    tx.execute(
        &st.insert_account,
        &[
            &account.id,
            &account.tenant_id,
            &account.name,
            &account.plan,
            &time,
        ],
    )?;
    let users: Vec<User> = (0..rng.gen_range(1..=3))
        .map(|_| new_user(&tenant.id, &account.id, &mut rng))
        .collect();
    for user in &users {
        insert_user(tx, st, user)?;
    }
    entry.create(&account)?.create_items(&users)?;
    Ok(())
}

fn insert_user(tx: &mut Transaction<'_>, st: &Statements, u: &User) -> Result<()> {
    tx.execute(&st.insert_user, &u.params())?;
    Ok(())
}

fn new_id(prefix: &str) -> String {
    format!("{prefix}-{}", Uuid::new_v4().simple())
}

fn email() -> String {
    format!("{}@demo.example", Uuid::new_v4().simple())
}

const FIRST: [&str; 8] = [
    "Ada", "Grace", "Alan", "Edsger", "Barbara", "Donald", "Frances", "Ken",
];
const LAST: [&str; 8] = [
    "Lovelace", "Hopper", "Turing", "Dijkstra", "Liskov", "Knuth", "Allen", "Thompson",
];

fn display_name(rng: &mut impl Rng) -> String {
    format!(
        "{} {}",
        FIRST[rng.gen_range(0..FIRST.len())],
        LAST[rng.gen_range(0..LAST.len())]
    )
}

fn company(rng: &mut impl Rng) -> String {
    let kinds = [
        "Labs",
        "Systems",
        "Works",
        "Analytics",
        "Foods",
        "Logistics",
    ];
    format!(
        "{} {}",
        LAST[rng.gen_range(0..LAST.len())],
        kinds[rng.gen_range(0..kinds.len())]
    )
}

fn phone(rng: &mut impl Rng) -> String {
    format!("+1 555 {:04}", rng.gen_range(0..10_000))
}

fn new_user(tenant: &str, account: &str, rng: &mut impl Rng) -> User {
    User {
        id: new_id("user"),
        tenant_id: tenant.into(),
        account_id: account.into(),
        email: email(),
        display_name: display_name(rng),
        phone: rng.gen_bool(0.5).then(|| phone(rng)),
        age: rng.gen_bool(0.7).then(|| rng.gen_range(18..90)),
        active: true,
        avatar: (0..16).map(|_| rng.gen()).collect(),
    }
}

/// The time now, to the microsecond (PostgreSQL's precision, so that the
/// row and the entry hold the same instant), as a SQL parameter and as a
/// protobuf timestamp.
fn now() -> (SystemTime, prost_types::Timestamp) {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let micros = since.subsec_micros();
    let time = UNIX_EPOCH + Duration::new(since.as_secs(), micros * 1000);
    let stamp = prost_types::Timestamp {
        seconds: i64::try_from(since.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(micros * 1000).unwrap_or(0),
    };
    (time, stamp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_opening_round_has_every_action() {
        for (action, _) in WEIGHTS {
            assert!(OPENING.contains(&action), "{action:?}");
        }
    }

    #[test]
    fn weights_pick_every_action() {
        let mut rng = rand::thread_rng();
        let mut seen = std::collections::HashSet::new();
        for _ in 0..10_000 {
            seen.insert(weighted(&mut rng));
        }
        assert_eq!(seen.len(), WEIGHTS.len());
    }

    #[test]
    fn timestamps_are_whole_microseconds() {
        let (time, stamp) = now();
        assert_eq!(stamp.nanos % 1000, 0);
        let since = time.duration_since(UNIX_EPOCH).unwrap();
        assert_eq!(i64::try_from(since.as_secs()).unwrap(), stamp.seconds);
        assert_eq!(i64::from(since.subsec_nanos()), i64::from(stamp.nanos));
    }
}
