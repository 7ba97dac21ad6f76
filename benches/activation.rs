//! LeakyReLU(0.2) through the shim vs tch's `prelu` workaround (a fixed one-element weight),
//! forward + backward on the activation shapes of a WRN-16-4 SADA-JEM batch (64 images of
//! 32×32), and a whole WRN-16-4 forward + backward for scale. Run with
//! `cargo bench --bench activation` on an otherwise idle machine; results go to
//! docs/performance.md by hand.
mod common;
use common::median_seconds;
use sadajem::shim;
use tch::{Device, Kind, Tensor};

fn main() {
    let threads = sadajem::engine::init(0);
    // (channels, side) of every activation in a WRN-16-4 forward (2 per block + head).
    let mut shapes = vec![];
    for (w, s, blocks) in [(64, 32, 2), (128, 16, 2), (256, 8, 2)] {
        for b in 0..blocks {
            let first_side = if b == 0 && w > 64 { s * 2 } else { s };
            shapes.push((if b == 0 { w / 2 } else { w }, first_side));
            shapes.push((w, first_side));
        }
    }
    shapes[0].0 = 16;
    shapes.push((256, 8));
    let inputs: Vec<Tensor> = shapes.iter().map(|&(c, s)| Tensor::randn([64, c, s, s], (Kind::Float, Device::Cpu)).set_requires_grad(true)).collect();
    let weight = Tensor::from_slice(&[0.2f32]);
    let run = |act: &dyn Fn(&Tensor) -> Tensor| {
        for x in &inputs {
            let y = act(x);
            let g = Tensor::run_backward(&[y.sum(None)], &[x], false, false);
            drop(g);
        }
    };
    let shim_s = median_seconds(15, || run(&|x| shim::leaky_relu(x, 0.2)));
    let prelu_s = median_seconds(15, || run(&|x| x.prelu(&weight)));
    println!("threads {threads}: LeakyReLU fwd+bwd over WRN-16-4 activations, batch 64");
    println!("  shim leaky_relu: {:.4} s", shim_s);
    println!("  prelu workaround: {:.4} s ({:+.0}%)", prelu_s, 100.0 * (prelu_s / shim_s - 1.0));

    let vs = tch::nn::VarStore::new(Device::Cpu);
    let cfg = sadajem::config::ModelConfig { depth: 16, widen: 4, ..Default::default() };
    let net = sadajem::model::Wrn::new(&vs.root(), &cfg, 3, 10);
    let x = Tensor::randn([64, 3, 32, 32], (Kind::Float, Device::Cpu));
    let step = median_seconds(5, || {
        let y = net.forward(&x, sadajem::model::Mode::Train);
        y.sum(None).backward();
    });
    println!("  whole WRN-16-4 forward+backward (shim activations): {:.4} s", step);
    println!("  the prelu workaround would add ≈{:.1}% to it", 100.0 * (prelu_s - shim_s) / step);
}
