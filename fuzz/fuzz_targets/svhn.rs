#![no_main]
//! The SVHN reader (MATLAB level-5 MAT-files) on one file.
use libfuzzer_sys::fuzz_target;
use sadajem::data::svhn;

mod common;

fuzz_target!(|data: &[u8]| {
    let path = common::put("test_32x32.mat", data);
    if let Ok(set) = svhn::load_mat(&path) {
        common::check(&set);
    }
});
