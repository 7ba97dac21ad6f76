//! SGLD sampling (method.md §3); [`init`]: where the chains start.
pub mod init;
