//! Every form of `#[command_handler]`, executed through a bus built from the registry: an
//! aggregate's create method, `&self` methods taking the command by value and by reference,
//! `#[command(target = ..)]`, a create-or-update method taking `Option<&Self>`, the `State<T>`
//! and `&CommandContext` extras, a command that
//! implements `Validate`, and a free `async fn` returning something other than events.
#![deny(warnings)]

use dtx::cqrs::{CommandBus, CommandContext, CommandError, Committed, State, Validate, Validator};
use dtx::{Aggregate, Apply, DomainEvent, Id, command_handler};
use serde::{Deserialize, Serialize};
use std::fmt;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Opened {
    owner: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Deposited {
    amount: u64,
    fee: u64,
    memo: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Closed {}

#[derive(Debug, Clone, DomainEvent)]
enum AccountEvent {
    Opened(Opened),
    Deposited(Deposited),
    Closed(Closed),
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, Aggregate)]
#[aggregate(event = AccountEvent)]
struct Account {
    id: Id<Account>,
    owner: String,
    balance: u64,
    closed: bool,
}

impl Apply<Opened> for Account {
    fn apply(&mut self, event: &Opened) {
        self.owner.clone_from(&event.owner);
    }
}

impl Apply<Deposited> for Account {
    fn apply(&mut self, event: &Deposited) {
        self.balance += event.amount - event.fee;
    }
}

impl Apply<Closed> for Account {
    fn apply(&mut self, _: &Closed) {
        self.closed = true;
    }
}

/// Shared state given to the bus.
#[derive(Debug, Clone, Copy)]
struct Fees {
    per_deposit: u64,
}

/// Why the account refused a command.
#[derive(Debug, PartialEq, Eq)]
enum Refused {
    NoOwner,
    Closed,
    NotEmpty(u64),
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoOwner => f.write_str("an account needs an owner"),
            Self::Closed => f.write_str("the account is closed"),
            Self::NotEmpty(balance) => write!(f, "the account still holds {balance}"),
        }
    }
}

impl std::error::Error for Refused {}

/// The create form: no receiver, found through the default `account_id` field.
#[derive(Debug, Clone)]
struct OpenAccount {
    account_id: Id<Account>,
    owner: String,
}

/// Taken by value (so `Clone`), validated before its handler runs.
#[derive(Debug, Clone)]
struct Deposit {
    account_id: Id<Account>,
    amount: u64,
    memo: String,
}

impl Validate for Deposit {
    fn validate(&self, v: &mut Validator) {
        v.check(self.amount > 0, "amount", "must be positive");
    }
}

/// Taken by reference (so not `Clone`), found through another field.
#[derive(Debug)]
struct Close {
    account: Id<Account>,
}

/// Create or update: opens the account with a deposit, or deposits into it.
#[derive(Debug)]
struct Pay {
    account_id: Id<Account>,
    amount: u64,
}

/// Handled by a free `async fn`.
#[derive(Debug)]
struct OpenWithDeposit {
    account_id: Id<Account>,
    owner: String,
    amount: u64,
}

#[command_handler]
impl Account {
    fn open(cmd: OpenAccount, ctx: &CommandContext) -> Result<Opened, Refused> {
        if cmd.owner.is_empty() {
            return Err(Refused::NoOwner);
        }
        assert_eq!(ctx.metadata().causation_id.is_some(), cmd.owner == "grace");
        Ok(Opened { owner: cmd.owner })
    }

    fn deposit(
        &self,
        cmd: Deposit,
        State(fees): State<Fees>,
    ) -> Result<Vec<AccountEvent>, Refused> {
        if self.closed {
            return Err(Refused::Closed);
        }
        Ok(vec![
            Deposited {
                amount: cmd.amount,
                fee: fees.per_deposit,
                memo: cmd.memo,
            }
            .into(),
        ])
    }

    fn pay(
        account: Option<&Account>,
        cmd: &Pay,
        State(fees): State<Fees>,
    ) -> Result<Vec<AccountEvent>, Refused> {
        let deposit = Deposited {
            amount: cmd.amount,
            fee: fees.per_deposit,
            memo: "pay".into(),
        };
        match account {
            None => Ok(vec![
                Opened {
                    owner: "payee".into(),
                }
                .into(),
                deposit.into(),
            ]),
            Some(account) if account.closed => Err(Refused::Closed),
            Some(_) => Ok(vec![deposit.into()]),
        }
    }

    #[command(target = account)]
    fn close(&self, _cmd: &Close) -> Result<Option<Closed>, Refused> {
        match (self.closed, self.balance) {
            (true, _) => Ok(None),
            (false, 0) => Ok(Some(Closed {})),
            (false, balance) => Err(Refused::NotEmpty(balance)),
        }
    }
}

/// Opens an account and makes a first deposit through follow-up commands; returns the balance
/// stream's version.
#[command_handler]
async fn open_with_deposit(
    cmd: OpenWithDeposit,
    State(fees): State<Fees>,
    ctx: &CommandContext,
) -> Result<u64, CommandError> {
    let _: Committed = ctx
        .execute(OpenAccount {
            account_id: cmd.account_id,
            owner: cmd.owner,
        })
        .await?;
    let deposited: Committed = ctx
        .execute(Deposit {
            account_id: cmd.account_id,
            amount: cmd.amount + fees.per_deposit,
            memo: "first deposit".into(),
        })
        .await?;
    Ok(deposited.version)
}

async fn run(bus: &CommandBus) -> Result<(), CommandError> {
    let ada = Id::<Account>::new();
    let opened: Committed = bus
        .execute(OpenAccount {
            account_id: ada,
            owner: "ada".into(),
        })
        .await?;
    assert_eq!((opened.version, opened.events), (1, 1));

    let again = bus
        .execute(OpenAccount {
            account_id: ada,
            owner: "ada".into(),
        })
        .await;
    assert!(matches!(again, Err(CommandError::AlreadyExists { .. })));

    let deposited: Committed = bus
        .execute(Deposit {
            account_id: ada,
            amount: 10,
            memo: "salary".into(),
        })
        .await?;
    assert_eq!(deposited.version, 2);

    let invalid = bus
        .execute(Deposit {
            account_id: ada,
            amount: 0,
            memo: String::new(),
        })
        .await;
    let Err(CommandError::Invalid { errors, .. }) = invalid else {
        panic!("a zero deposit is invalid: {invalid:?}")
    };
    assert_eq!(errors.violations()[0].field, "amount");

    let refused = bus.execute(Close { account: ada }).await;
    assert_eq!(
        refused
            .expect_err("the account holds 9")
            .domain::<Refused>(),
        Some(&Refused::NotEmpty(9))
    );

    let grace = Id::<Account>::new();
    let version: u64 = bus
        .execute(OpenWithDeposit {
            account_id: grace,
            owner: "grace".into(),
            amount: 5,
        })
        .await?;
    assert_eq!(version, 2);

    let payee = Id::<Account>::new();
    let first: Committed = bus
        .execute(Pay {
            account_id: payee,
            amount: 3,
        })
        .await?;
    let second: Committed = bus
        .execute(Pay {
            account_id: payee,
            amount: 3,
        })
        .await?;
    assert_eq!((first.version, second.version), (2, 3));

    let missing = bus.execute(Close { account: Id::new() }).await;
    assert!(matches!(missing, Err(CommandError::NotFound { .. })));
    Ok(())
}

fn main() {
    let bus = CommandBus::builder()
        .state(Fees { per_deposit: 1 })
        .registry()
        .build()
        .expect("every handler's state is given");
    tokio::runtime::Runtime::new()
        .expect("a runtime starts")
        .block_on(run(&bus))
        .expect("the commands succeed");
}
