//! One module per area of the dashboard.

pub mod admin;
pub mod auth;
pub mod clusters;
pub mod deployment_form;
pub mod deployment_page;
pub mod deployments;
pub mod home;
pub mod invitations;
pub mod members;
pub mod registry;
pub mod secrets;
pub mod tokens;
