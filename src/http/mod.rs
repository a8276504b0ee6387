//! HTTP plumbing shared by every route: the error envelope, request ids, extractors,
//! the router, the operational endpoints and the OpenAPI document.

pub mod error;
pub mod extract;
pub mod openapi;
pub mod ops;
pub mod request_id;
pub mod router;

pub use error::AppError;
