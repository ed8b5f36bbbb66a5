//! Billing: the credit ledger today; reserve-then-settle on the inference path, invoices and
//! payments join it here.

pub mod ledger;

pub use ledger::{Ledger, LedgerError};
