#![no_main]
//! The IDX (MNIST) reader on one file of a test split. The first byte picks which file the
//! rest of the input is; the other file is a valid one of 3 images of 2x2.
use libfuzzer_sys::fuzz_target;
use sadajem::data::{idx, Split};

mod common;

const IMAGES: &[u8] = &[
    0, 0, 8, 3, 0, 0, 0, 3, 0, 0, 0, 2, 0, 0, 0, 2, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11,
];
const LABELS: &[u8] = &[0, 0, 8, 1, 0, 0, 0, 3, 7, 0, 9];

fuzz_target!(|data: &[u8]| {
    let Some((&which, file)) = data.split_first() else {
        return;
    };
    let (images, labels) = if which & 1 == 0 {
        (file, LABELS)
    } else {
        (IMAGES, file)
    };
    common::put("t10k-images-idx3-ubyte", images);
    common::put("t10k-labels-idx1-ubyte", labels);
    if let Ok(set) = idx::load(common::scratch(), Split::Test) {
        common::check(&set);
    }
});
