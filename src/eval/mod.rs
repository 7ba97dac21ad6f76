//! Evaluation. Metrics are pure functions over arrays; this module also holds the one helper
//! that runs the network over a dataset, and [`inception`] the network FID, KID and IS read.
pub mod accuracy;
pub mod inception;

use crate::data::{augment, ImageSet};
use crate::model::{Mode, Wrn};
use tch::{Device, Tensor};

/// Logits [N, C] of images `idx` of `set`, in eval mode, without gradients, on the CPU.
pub fn logits(net: &Wrn, set: &ImageSet, idx: &[usize], batch: usize, device: Device) -> Tensor {
    let mut rng = rand::SeedableRng::seed_from_u64(0); // unused: no augmentation
    let parts: Vec<Tensor> = idx
        .chunks(batch)
        .map(|chunk| {
            let (x, _) = augment::batch(set, chunk, &augment::Augment::NONE, &mut rng);
            tch::no_grad(|| net.forward(&x.to_device(device), Mode::Eval)).to_device(Device::Cpu)
        })
        .collect();
    Tensor::cat(&parts, 0)
}
