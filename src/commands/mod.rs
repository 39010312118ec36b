//! The subcommands of the `tidewatch` binary, one module each.

pub mod demo;
pub mod generate;
pub mod loadgen;
pub mod replay;
pub mod serve;
pub mod train;
