//! Training: one iteration of each recipe, the loop around it, checkpoints, and data-parallel
//! workers.
pub mod checkpoint;
#[cfg(feature = "torch")]
pub mod distributed;
#[cfg(feature = "torch")]
pub mod recipe;
#[cfg(feature = "torch")]
pub mod trainer;
