//! Training: one iteration of each recipe, the loop around it, and checkpoints.
pub mod checkpoint;
#[cfg(feature = "torch")]
pub mod recipe;
#[cfg(feature = "torch")]
pub mod trainer;
