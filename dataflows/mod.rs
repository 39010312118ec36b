//! Dataflow variants: each file is one whole pipeline, built from the operators in
//! [`crate::ops`] through the per-worker [`Env`](crate::runtime::Env).
//!
//! To add a variant: write `dataflows/<name>.rs` with `pub const NAME` and `pub fn build`
//! (copy `default.rs` and change the chain), then add its module to `variants!` below.

use anyhow::bail;
use timely::dataflow::Scope;

use crate::ops::Time;
use crate::runtime::{Env, Results};

/// A variant's entry point: builds the pipeline on one worker and returns the verdicts.
pub type Build = for<'s> fn(Scope<'s, Time>, &mut Env) -> anyhow::Result<Results<'s>>;

macro_rules! variants {
    ($($module:ident),* $(,)?) => {
        $(pub mod $module;)*

        /// Names of every variant, in registration order.
        pub const NAMES: &[&str] = &[$($module::NAME),*];

        /// The variant called `name`.
        pub fn lookup(name: &str) -> anyhow::Result<Build> {
            $(if name == $module::NAME { return Ok($module::build); })*
            bail!("no dataflow variant named {name:?} (known: {})", NAMES.join(", "))
        }
    };
}

variants! { default, strided }

/// The variant run when none is named.
pub const DEFAULT: &str = default::NAME;
