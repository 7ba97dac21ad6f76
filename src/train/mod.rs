//! Training: one iteration of each recipe ([`recipe`]), the loop around it ([`trainer`]), the
//! session it advances — start, resume, checkpoints, rollback ([`session`]) — what it shows
//! and logs ([`progress`]), and data-parallel workers ([`distributed`]).
pub mod distributed;
pub mod progress;
pub mod recipe;
pub mod session;
pub mod trainer;
