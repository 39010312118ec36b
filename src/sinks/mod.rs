//! Where verdicts go: the alert body and the webhook that posts it.

pub mod alert;
pub mod webhook;
