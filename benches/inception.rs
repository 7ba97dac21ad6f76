//! Throughput of the FID Inception network on this machine: `Inception::features` end to end
//! (resize + forward) in fp32 and in bf16 (`eval.fid_precision`), batches of 50 and 100. Run with
//! `cargo bench --bench inception` on an otherwise idle machine (SADAJEM_INCEPTION or
//! ../shared/weights); results go to docs/performance.md by hand.
mod common;
use common::median_seconds;
use sadajem::config::Precision;
use sadajem::eval::inception::Inception;
use std::path::PathBuf;
use tch::{Device, Kind, Tensor};

fn main() {
    let threads = sadajem::engine::init(0);
    let path = std::env::var_os("SADAJEM_INCEPTION")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("../shared/weights/inception-2015-12-05-fid.torchscript.pt"));
    for precision in [Precision::Fp32, Precision::Bf16] {
        let net = Inception::load(&path, Device::Cpu, precision).expect("the Inception network loads");
        for batch in [50, 100] {
            let x = Tensor::rand([batch, 1, 28, 28], (Kind::Float, Device::Cpu)) * 2.0 - 1.0;
            let t = median_seconds(3, || {
                net.features(&x).unwrap();
            });
            println!("{threads} threads, batch {batch}: Inception::features {precision:?} {t:.3} s/batch = {:.1} images/s", batch as f64 / t);
        }
    }
}
