//! The `torch.save` file format without Python: reads the tensors of a file Python wrote — a
//! state dict, or a checkpoint dict of nested dicts, lists, tensors and numbers — and writes
//! nested dicts of tensors that `torch.load` reads ([`save`]).
//!
//! `torch.save` has written two formats, and files of both are in use (pytorch-fid's Inception
//! weights date from 2019):
//! - since PyTorch 1.6, a zip archive: `<name>/data.pkl` (the object) and one record
//!   `<name>/data/<key>` per storage;
//! - before, the "legacy" stream: five pickles back to back (magic number, protocol version,
//!   system info, the object, the list of storage keys), then each storage as its element
//!   count (u64) and raw bytes.
//!
//! libtorch's `torch::pickle_load` reads only the first, and turns every `OrderedDict` — what
//! `state_dict()` returns — into None, so this module carries its own small pickle machine. It
//! knows every opcode of pickle protocols 2–5 that builds data, and the globals a checkpoint
//! holds: tensors (`torch._utils._rebuild_tensor_v2`, parameters) and `OrderedDict`. Any other
//! object becomes an opaque leaf, so an unknown class in a checkpoint costs that leaf, not the
//! file; it is reported ([`CodeUse`]), since `torch.load(weights_only=False)` would run it.
//! Nothing is executed: a global is only ever a name.
//!
//! The files come from strangers, so reading one is bounded: nesting, the work of the pickle
//! machine, and the bytes of storages and tensors (a [`Budget`] relative to the file's length,
//! capped by [`Limits`]) — see [`archive`] and docs/reliability.md.
//!
//! - [`archive`]: the formats as bytes, the budget, the object flattened (no libtorch: the fuzz
//!   target `pickle` drives it);
//! - `machine`: the pickle machine;
//! - `tensors` and `write` (with the `torch` feature): tensors made from the bytes, and files
//!   written.
pub mod archive;
/// Hostile files for the tests, shared with tests/hostile.rs.
#[cfg(test)]
#[path = "../../tests/support/forge.rs"]
pub(crate) mod forge;
mod machine;
#[cfg(feature = "torch")]
mod tensors;
#[cfg(feature = "torch")]
mod write;

pub use archive::{file_kind, Budget, Contents, FileKind, Limits, DEFAULT_MAX_BYTES};
pub use machine::{CodeUse, Dtype, MAX_DEPTH};
#[cfg(feature = "torch")]
pub use tensors::{load, load_tensors, Loaded};
#[cfg(feature = "torch")]
pub use write::{save, Object};
