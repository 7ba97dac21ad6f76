#![no_main]
//! The checkpoint reader on arbitrary bytes: safetensors structure, training state, checksum
//! (the check itself is skipped under cfg(fuzzing), so inputs get past it), then every tensor
//! view and the state as JSON, as a resume reads them.
use libfuzzer_sys::fuzz_target;
use sadajem::store::checkpoint;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let path = Path::new("checkpoints/latest.safetensors");
    if let Ok(file) = checkpoint::verify(path, data.to_vec()) {
        let st = file.safetensors();
        for (_, view) in st.tensors() {
            let numel: usize = view.shape().iter().product();
            assert_eq!(view.data().len(), numel * view.dtype().size());
        }
        let _ = file.state::<serde_json::Value>(path);
    }
});
