//! Errors as gRPC statuses with xAI's texts. The REST `code` strings are these statuses'
//! descriptions, so a refusal reads the same on both surfaces; nothing internal reaches a
//! message (what is not the client's business is logged here and answered in general terms).

use tollgate_core::{AdmitError, AnswerError, AuthError, DeferredError, ResponseError, SettleError};
use tollgate_gateway::GatewayError;
use tonic::{Code, Status};

/// A request refused at admission.
pub(crate) fn refused(error: &AdmitError) -> Status {
    let code = match error {
        AdmitError::UnknownModel(_) => Code::NotFound,
        AdmitError::NotServed { .. }
        | AdmitError::NoTokenizer(_)
        | AdmitError::ToolNotOffered(_)
        | AdmitError::ToolNotForModel { .. } => Code::InvalidArgument,
        AdmitError::EndpointDenied(_)
        | AdmitError::ModelDenied(_)
        | AdmitError::Unpriced(_)
        | AdmitError::TeamBlocked { .. }
        | AdmitError::TeamBlockedByOperator { .. } => Code::PermissionDenied,
        AdmitError::OutOfCredit(_) | AdmitError::RateLimited { .. } => Code::ResourceExhausted,
        AdmitError::Unavailable(source) => {
            tracing::error!(error = %source, "credit or limits could not be checked");
            Code::Unavailable
        }
    };
    Status::new(code, error.client_message())
}

/// The upstream failed: a refusal of the client's request is passed on, the rest said plainly.
pub(crate) fn upstream(error: &GatewayError) -> Status {
    match error {
        GatewayError::Status { status, message } if *status == 429 => Status::resource_exhausted(message.clone()),
        GatewayError::Status { status, message } if (400..500).contains(status) && *status != 401 && *status != 403 => {
            Status::invalid_argument(message.clone())
        }
        GatewayError::Timeout => Status::deadline_exceeded("The model server did not answer in time"),
        GatewayError::Unavailable(_) => {
            tracing::warn!(%error, "upstream unavailable");
            Status::unavailable("The model server is unavailable")
        }
        GatewayError::AtCapacity => Status::resource_exhausted(
            "The model is at capacity: every server running it is serving as many requests as it may. Try again shortly.",
        ),
        GatewayError::Status { .. } | GatewayError::InvalidResponse(_) => {
            tracing::warn!(%error, "upstream failed");
            Status::internal("The model server failed to answer")
        }
    }
}

/// A request that could not be settled: not charged, and not reported complete.
pub(crate) fn unsettled(error: &SettleError) -> Status {
    tracing::error!(%error, "a request could not be settled");
    match error {
        SettleError::CostOverflow(_) => Status::internal("The request could not be priced; it was not charged"),
        SettleError::Record(_) => Status::unavailable("The request could not be recorded; it was not charged"),
    }
}

/// Why an answer could not be given.
pub(crate) fn unanswered(error: &AnswerError) -> Status {
    match error {
        AnswerError::Upstream { error, .. } => upstream(error),
        AnswerError::Settle(error) => unsettled(error),
    }
}

/// A key that does not open the API.
pub(crate) fn unauthorized(error: &AuthError, presented: &str, console_url: &str) -> Status {
    match error {
        // xAI answers a wrong key as REST's 400: INVALID_ARGUMENT.
        AuthError::Invalid => {
            Status::invalid_argument(tollgate_domain::keys::incorrect_key_message(presented, console_url))
        }
        AuthError::Disabled => Status::permission_denied("The API key is disabled"),
        AuthError::Blocked => Status::permission_denied("The API key is blocked"),
        AuthError::Expired => Status::permission_denied("The API key has expired"),
        AuthError::Revoked => Status::unauthenticated("The management key has been revoked"),
        AuthError::WrongKind => Status::permission_denied(
            "This kind of key cannot call this API: inference takes an API key, the Management API a management key",
        ),
        AuthError::Store(store) => {
            tracing::error!(error = %store, "a key could not be read");
            Status::unavailable("The service is unavailable; try again")
        }
    }
}

/// Deferred completions' storage failed.
pub(crate) fn deferred_unavailable(error: &DeferredError) -> Status {
    tracing::error!(%error, "deferred completions failed");
    Status::unavailable("Deferred completions are unavailable; try again")
}

/// Stored completions' storage failed.
pub(crate) fn stored_unavailable(error: &ResponseError) -> Status {
    tracing::error!(%error, "stored completions failed");
    match error {
        ResponseError::Store(_) => Status::unavailable("Stored responses are unavailable; try again"),
        ResponseError::Sealed(_) => Status::internal("The stored response cannot be read"),
    }
}

/// A completion produced and charged that could not be stored.
pub(crate) fn unstored(error: &ResponseError) -> Status {
    tracing::error!(%error, "a completion could not be stored");
    Status::unavailable(
        "The completion was produced and charged, but it could not be stored; send it again without store_messages or retry",
    )
}

/// A REST status (as a deferred failure was recorded) as the gRPC code of the same meaning.
pub(crate) fn code_of_http(status: u16) -> Code {
    match status {
        400 | 422 => Code::InvalidArgument,
        401 => Code::Unauthenticated,
        403 => Code::PermissionDenied,
        404 => Code::NotFound,
        429 => Code::ResourceExhausted,
        503 => Code::Unavailable,
        504 => Code::DeadlineExceeded,
        _ => Code::Internal,
    }
}
