//! `AppError`: the one place where errors become HTTP responses.
//!
//! Every error body is `{"error": {"code", "message", "request_id"}}` and nothing else.
//! 4xx messages speak to the caller about their request; 5xx messages are fixed strings and
//! the real cause is logged once, here, never sent (SPEC §6.1).

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::openapi::{ErrorBody, ErrorDetail};
use super::request_id::current_request_id;

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
            Self::NotFound(_) => StatusCode::NOT_FOUND,
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
            Self::MethodNotAllowed => "method_not_allowed",
            Self::Conflict(_) => "conflict",
            Self::PayloadTooLarge => "payload_too_large",
            Self::BudgetExceeded => "budget_exceeded",
            Self::RateLimited { .. } => "rate_limited",
            Self::TooManyParallelRequests => "too_many_parallel_requests",
            Self::UpstreamRejected { .. } => "upstream_rejected",
            Self::UpstreamError => "upstream_error",
            Self::UpstreamTimeout => "upstream_timeout",
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
            Self::RateLimited { retry_after_s } => {
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

impl From<sea_orm::DbErr> for AppError {
    fn from(err: sea_orm::DbErr) -> Self {
        use sea_orm::DbErr;
        match err {
            DbErr::Conn(_) | DbErr::ConnectionAcquire(_) => Self::Unavailable(err.into()),
            other => Self::Internal(other.into()),
        }
    }
}

/// 404 for every path tollgate does not serve.
pub async fn not_found() -> AppError {
    AppError::NotFound("no such route".into())
}

/// 405 for a known path with the wrong method.
pub async fn method_not_allowed() -> AppError {
    AppError::MethodNotAllowed
}
