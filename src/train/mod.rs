//! Training: one iteration of each recipe, the loop around it, and data-parallel workers.
pub mod distributed;
pub mod recipe;
pub mod trainer;
