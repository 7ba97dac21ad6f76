//! The network (a pre-activation Wide-ResNet) and its energy-based reading.
pub mod energy;
pub mod wrn;

pub use wrn::{Mode, Wrn};
