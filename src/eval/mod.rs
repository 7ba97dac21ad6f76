//! Evaluation. Metrics are pure functions over arrays, each module beside the driver of
//! `sadajem eval` that measures it on a model ([`evaluate`] loads the model and runs them); this
//! module also holds the one helper that runs the network over a dataset, and [`inception`] the
//! network FID, KID and IS read.
pub mod accuracy;
pub mod attack;
pub mod calibration;
pub mod evaluate;
pub mod feature_stats;
pub mod fid;
pub mod generation;
pub mod inception;
pub mod ood;
pub mod robustness;

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

/// Reference values computed by scripts/make-metric-fixtures.py (NumPy, SciPy, scikit-learn).
#[cfg(test)]
pub(crate) mod reference {
    pub fn get(name: &str) -> serde_json::Value {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/metrics.json");
        let all: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        all[name].clone()
    }

    pub fn vec(v: &serde_json::Value) -> Vec<f64> {
        v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
    }

    /// A list of rows as a float64 tensor [N, D].
    pub fn matrix(v: &serde_json::Value) -> tch::Tensor {
        let rows: Vec<Vec<f64>> = v.as_array().unwrap().iter().map(vec).collect();
        let d = rows[0].len() as i64;
        tch::Tensor::from_slice(&rows.concat()).view([-1, d])
    }

    pub fn close(got: f64, want: f64, rel: f64) -> bool {
        (got - want).abs() <= rel * want.abs().max(1e-300)
    }
}
