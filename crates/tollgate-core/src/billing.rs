//! Billing: the credit ledger, and the credit held by requests in flight (reserve, then settle).
//! Invoices and payments join it here.

pub mod analytics;
pub mod checkout;
pub mod credit;
pub mod invoicing;
pub mod ledger;
pub mod payments;
pub mod watch;

pub use analytics::UsageQuery;
pub use credit::{CreditError, CreditSettings, Credits, Hold, Monotonic};
pub use ledger::{InvoicePreview, Ledger, LedgerError, TeamCredit};
pub use payments::{
    Card, CheckoutRequest, CheckoutSession, CustomerDetails, EventError, EventObject, EventOutcome, Payment,
    PaymentError, PaymentMethod, PaymentProvider, PaymentRequest, PaymentSettings, PaymentStatus, Payments,
    ProviderError, ProviderEvent, Purpose,
};
