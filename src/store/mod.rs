//! The bottom layer: how sadajem's files are written and read, and nothing about training.
//! - [`atomic`]: whole-or-nothing writes (temporary file, fsync, rename).
//! - [`checkpoint`]: the checkpoint file format (safetensors + state JSON + CRC-32).
//! - [`pickle`]: the `torch.save` format without Python, read as untrusted input.
//!
//! Everything above (data, model, sampler, eval, train, report, interop) may use it; it uses
//! none of them.
pub mod atomic;
pub mod checkpoint;
pub mod pickle;
