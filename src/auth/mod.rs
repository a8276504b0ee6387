//! Authentication: turning a bearer credential into an identity.

pub mod secrets;
