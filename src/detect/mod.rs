//! Detection: where scoring runs (the CPU or, with feature `gpu`, a GPU).

pub mod gpu;
