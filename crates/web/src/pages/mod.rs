//! One module per area of the dashboard.

pub mod admin;
pub mod auth;
pub mod deployments;
pub mod home;
pub mod registry;
