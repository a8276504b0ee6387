//! HTTP plumbing shared by every route: the error envelope, request ids, extractors,
//! the router and the operational endpoints.

pub mod error;
pub mod extract;
pub mod ops;
pub mod request_id;
pub mod router;

pub use error::AppError;
