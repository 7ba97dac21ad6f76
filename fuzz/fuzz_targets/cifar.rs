#![no_main]
//! The CIFAR-10 and CIFAR-100 readers on the same bytes as their test file.
use libfuzzer_sys::fuzz_target;
use sadajem::data::{cifar, Split};

mod common;

fuzz_target!(|data: &[u8]| {
    common::put("test_batch.bin", data);
    common::put("test.bin", data);
    for set in [
        cifar::load_cifar10(common::scratch(), Split::Test),
        cifar::load_cifar100(common::scratch(), Split::Test),
    ]
    .into_iter()
    .flatten()
    {
        common::check(&set);
    }
});
