//! Billing: the credit ledger, and the credit held by requests in flight (reserve, then settle).
//! Invoices and payments join it here.

pub mod credit;
pub mod ledger;

pub use credit::{CreditError, CreditSettings, Credits, Hold};
pub use ledger::{InvoicePreview, Ledger, LedgerError, TeamCredit};
