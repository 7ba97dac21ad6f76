//! The optimiser: SGD with momentum and coupled weight decay, and the learning-rate schedule.
pub mod schedule;
pub mod sgd;

pub use sgd::Sgd;
