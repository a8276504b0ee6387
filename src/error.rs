//! `AppError`: the one place where errors become HTTP responses.
//!
//! Every error body is `{"error": {"code", "message", "request_id"}}` and nothing else.
//! 4xx messages speak to the caller about their request; 5xx messages are fixed strings and
//! the real cause is logged once, here, never sent (SPEC §6.1).
//!
//! A leaf every layer may use. Lower layers keep their own error types and never name a
//! status: storage says what *kind* of failure it had through [`Classify`] (a conflict,
//! a missing reference, an outage), and this module alone decides what that means over
//! HTTP. The limiter's refusals are mapped by their one caller, the proxy pipeline.

use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::request_id::current_request_id;

/// The body of every error response.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable machine-readable code, e.g. `invalid_request`, `unauthorized`,
    /// `forbidden`, `not_found`, `conflict`, `rate_limited`, `budget_exceeded`,
    /// `upstream_error`, `upstream_timeout`.
    #[schema(example = "invalid_request")]
    pub code: String,
    /// About the caller's request for 4xx; a fixed text for 5xx.
    pub message: String,
    /// The request's `X-Request-ID`.
    pub request_id: String,
}

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("{0}")]
    InvalidRequest(String),
    /// Every authentication failure: one identical body, whatever failed.
    #[error("authentication failed")]
    Unauthorized,
    #[error("the key has expired")]
    KeyExpired,
    #[error("the key or its team is blocked")]
    KeyBlocked,
    #[error("{0}")]
    Forbidden(String),
    #[error("this key may not call this route")]
    RouteNotAllowed,
    #[error("model `{0}` is not allowed for this key")]
    ModelNotAllowed(String),
    #[error("{0}")]
    JwtPolicyDenied(String),
    #[error("{0}")]
    JwtUnmapped(String),
    #[error("{0}")]
    NotFound(String),
    /// No Ollama server has the model (SPEC §11 rule 1).
    #[error("model `{0}` is not available on any server")]
    ModelNotFound(String),
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("{0}")]
    Conflict(String),
    #[error("request body too large")]
    PayloadTooLarge,
    #[error("budget exceeded")]
    BudgetExceeded,
    #[error("rate limit exceeded")]
    RateLimited { retry_after_s: u64 },
    #[error("too many parallel requests")]
    TooManyParallelRequests,
    /// An upstream 4xx: its status and Ollama's message, which is about the caller's request.
    #[error("{message}")]
    UpstreamRejected { status: StatusCode, message: String },
    #[error("upstream error")]
    UpstreamError,
    #[error("upstream timeout")]
    UpstreamTimeout,
    /// Every server is busy (queue full or waited too long, or Ollama's "server busy").
    #[error("the model servers are busy; retry later")]
    UpstreamBusy { retry_after_s: u64 },
    #[error("limits unavailable")]
    LimitsUnavailable,
    #[error("mapping conflict")]
    MappingConflict,
    #[error("authentication service unavailable")]
    AuthUnavailable,
    /// A dependency (database) is down; the cause is logged, not sent.
    #[error("service unavailable")]
    Unavailable(#[source] anyhow::Error),
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl AppError {
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::InvalidRequest(message.into())
    }

    pub fn internal(err: impl Into<anyhow::Error>) -> Self {
        Self::Internal(err.into())
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::InvalidRequest(_) => StatusCode::BAD_REQUEST,
            Self::Unauthorized | Self::KeyExpired => StatusCode::UNAUTHORIZED,
            Self::KeyBlocked
            | Self::Forbidden(_)
            | Self::RouteNotAllowed
            | Self::ModelNotAllowed(_)
            | Self::JwtPolicyDenied(_)
            | Self::JwtUnmapped(_) => StatusCode::FORBIDDEN,
            Self::NotFound(_) | Self::ModelNotFound(_) => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::BudgetExceeded | Self::RateLimited { .. } | Self::TooManyParallelRequests => {
                StatusCode::TOO_MANY_REQUESTS
            }
            Self::UpstreamRejected { status, .. } => *status,
            Self::UpstreamError => StatusCode::BAD_GATEWAY,
            Self::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            Self::LimitsUnavailable
            | Self::UpstreamBusy { .. }
            | Self::MappingConflict
            | Self::AuthUnavailable
            | Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The stable machine-readable code in the envelope.
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidRequest(_) => "invalid_request",
            Self::Unauthorized => "unauthorized",
            Self::KeyExpired => "key_expired",
            Self::KeyBlocked => "key_blocked",
            Self::Forbidden(_) => "forbidden",
            Self::RouteNotAllowed => "route_not_allowed",
            Self::ModelNotAllowed(_) => "model_not_allowed",
            Self::JwtPolicyDenied(_) => "jwt_policy_denied",
            Self::JwtUnmapped(_) => "jwt_unmapped",
            Self::NotFound(_) => "not_found",
            Self::ModelNotFound(_) => "model_not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::Conflict(_) => "conflict",
            Self::PayloadTooLarge => "payload_too_large",
            Self::BudgetExceeded => "budget_exceeded",
            Self::RateLimited { .. } => "rate_limited",
            Self::TooManyParallelRequests => "too_many_parallel_requests",
            Self::UpstreamRejected { .. } => "upstream_rejected",
            Self::UpstreamError => "upstream_error",
            Self::UpstreamTimeout => "upstream_timeout",
            Self::UpstreamBusy { .. } => "upstream_busy",
            Self::LimitsUnavailable => "limits_unavailable",
            Self::MappingConflict => "mapping_conflict",
            Self::AuthUnavailable => "auth_unavailable",
            Self::Unavailable(_) => "service_unavailable",
            Self::Internal(_) => "internal_error",
        }
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let status = self.status();
        let request_id = current_request_id();
        match &self {
            Self::Internal(cause) => {
                tracing::error!(request_id = %request_id, error = ?cause, "internal error")
            }
            Self::Unavailable(cause) => {
                tracing::warn!(request_id = %request_id, error = %cause, "dependency unavailable")
            }
            _ => {}
        }
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code().to_string(),
                message: self.to_string(),
                request_id: request_id.to_string(),
            },
        };
        let mut response = (status, axum::Json(body)).into_response();
        let headers = response.headers_mut();
        match &self {
            Self::RateLimited { retry_after_s } | Self::UpstreamBusy { retry_after_s } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_s));
            }
            Self::BudgetExceeded => {
                headers.insert("x-should-retry", HeaderValue::from_static("false"));
            }
            _ => {}
        }
        response
    }
}

/// What kind of failure a lower layer had, in words that do not name HTTP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// A uniqueness rule said no (a duplicate id or identity).
    Conflict,
    /// The request refers to something that does not exist.
    MissingReference,
    /// A dependency cannot be reached; the request may succeed later.
    Unavailable,
    /// Anything else: a bug or an unexpected answer.
    Internal,
}

/// Implemented by lower layers' error types so that `?` turns them into an [`AppError`].
pub trait Classify: std::error::Error + Send + Sync + 'static {
    fn class(&self) -> ErrorClass;
}

impl<E: Classify> From<E> for AppError {
    fn from(err: E) -> Self {
        match err.class() {
            ErrorClass::Conflict => AppError::Conflict("already exists".into()),
            ErrorClass::MissingReference => {
                AppError::invalid("refers to something that does not exist")
            }
            ErrorClass::Unavailable => AppError::Unavailable(err.into()),
            ErrorClass::Internal => AppError::Internal(err.into()),
        }
    }
}

/// A body that could not be read: too large (413) or cut off (400).
impl From<BytesRejection> for AppError {
    fn from(rejection: BytesRejection) -> Self {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            AppError::PayloadTooLarge
        } else {
            AppError::invalid("could not read the request body")
        }
    }
}
