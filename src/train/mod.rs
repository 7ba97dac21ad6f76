//! Training: one iteration of each recipe, the loop around it, and checkpoints.
pub mod checkpoint;
pub mod recipe;
pub mod trainer;
