//! Throughput of the FID Inception network on this machine: `Inception::features` end to end
//! (resize + forward) in fp32, and the bare TorchScript forward in fp32 and bf16. Run with
//! `cargo bench --bench inception` on an otherwise idle machine (SADAJEM_INCEPTION or
//! ../shared/weights); results go to docs/performance.md by hand.
mod common;
use common::median_seconds;
use sadajem::eval::inception::Inception;
use std::path::PathBuf;
use tch::{Device, Kind, Tensor};

fn main() {
    let threads = sadajem::engine::init(0);
    let path = std::env::var_os("SADAJEM_INCEPTION")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("../shared/weights/inception-2015-12-05-fid.torchscript.pt"));
    let batch = 50;
    let x = Tensor::rand([batch, 1, 28, 28], (Kind::Float, Device::Cpu)) * 2.0 - 1.0;
    let net = Inception::load(&path, Device::Cpu).expect("the Inception network loads");
    let t = median_seconds(3, || {
        net.features(&x).unwrap();
    });
    println!("{threads} threads, batch {batch}: Inception::features fp32 {:.3} s/batch = {:.1} images/s", t, batch as f64 / t);

    let input = Tensor::rand([batch, 3, 299, 299], (Kind::Float, Device::Cpu)) * 2.0 - 1.0;
    for kind in [Kind::Float, Kind::BFloat16] {
        let mut m = tch::CModule::load(&path).unwrap();
        m.set_eval();
        m.to(Device::Cpu, kind, false);
        let xi = input.to_kind(kind);
        let t = median_seconds(3, || {
            let _ = tch::no_grad(|| m.forward_ts(&[&xi]).unwrap());
        });
        println!("TorchScript forward {kind:?}: {t:.3} s/batch = {:.1} images/s", batch as f64 / t);
    }
}
