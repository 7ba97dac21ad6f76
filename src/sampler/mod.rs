//! SGLD sampling (docs/method.md §3): where the chains start ([`init`]), the persistent replay
//! buffer they continue from ([`buffer`]), and the step rules ([`sgld`]).
pub mod buffer;
pub mod init;
pub mod sgld;
