#![no_main]
//! The torch.save reader (`pickle::archive::read`, what `sadajem import` runs before making
//! tensors) on arbitrary bytes as a file: zip archive or legacy stream, within a 64 MiB budget.
//! A file it accepts must be consistent: every tensor inside its storage, every storage holding
//! its bytes, and everything together within the budget. run.sh caps each allocation
//! (-malloc_limit_mb) below what the budget allows in all, so an allocation the budget did not
//! bound is a failure.
use libfuzzer_sys::fuzz_target;
use sadajem::store::pickle::{archive, Budget, Limits};

mod common;

const LIMITS: Limits = Limits { max_bytes: 64 << 20 };

fuzz_target!(|data: &[u8]| {
    let path = common::put("checkpoint.pt", data);
    let Ok(c) = archive::read(&path, &LIMITS) else { return };
    let budget = Budget::for_file(data.len() as u64, &LIMITS);
    let mut spent: u64 = 0;
    for s in c.storages.values() {
        assert_eq!(s.bytes.len() as u64, s.numel * s.dtype.size());
        spent += s.bytes.len() as u64;
    }
    for (name, t) in &c.tensors {
        let s = &c.storages[&t.storage];
        assert_eq!(s.dtype, t.dtype, "{name}");
        let numel: u64 = t.size.iter().map(|&d| d as u64).product();
        if numel > 0 {
            let last = t.offset as u128 + t.size.iter().zip(&t.stride).map(|(&d, &st)| (d as u128 - 1) * st as u128).sum::<u128>();
            assert!(last < s.numel as u128, "{name} overruns its storage");
        }
        spent += numel * t.dtype.size();
    }
    assert!(spent <= budget.bytes, "{spent} bytes spent of a budget of {}", budget.bytes);
});
