//! The Rust face of `csrc/shim.cpp`: ATen functions that tch 0.24 does not bind the way we
//! need them. Each wrapper turns the shim's error code into a `TchError`.
use std::ffi::{c_int, c_void, CStr};
use tch::{TchError, Tensor};

extern "C" {
    fn sj_last_error() -> *const std::ffi::c_char;
    fn sj_leaky_relu(x: *mut c_void, slope: f64, out: *mut *mut c_void) -> c_int;
    fn sj_rng_get_state(cuda_index: c_int, out: *mut *mut c_void) -> c_int;
    fn sj_rng_set_state(cuda_index: c_int, state: *mut c_void) -> c_int;
}

fn cuda_index(device: tch::Device) -> c_int {
    match device {
        tch::Device::Cuda(i) => i as c_int,
        _ => -1,
    }
}

fn last_error() -> TchError {
    // SAFETY: the shim returns a pointer into its thread-local string, valid until the next call.
    let msg = unsafe { CStr::from_ptr(sj_last_error()) };
    TchError::Torch(msg.to_string_lossy().into_owned())
}

/// Takes ownership of a tensor the shim allocated.
fn adopt(rc: c_int, out: *mut c_void) -> Result<Tensor, TchError> {
    if rc != 0 {
        return Err(last_error());
    }
    // SAFETY: on success `out` is a fresh `at::Tensor*`, the representation tch uses.
    Ok(unsafe { Tensor::from_ptr(out as *mut _) })
}

/// `leaky_relu(x, slope)` with autograd. tch's `Tensor::leaky_relu` fixes the slope at 0.01,
/// and the `prelu` workaround is measurably slower (see docs/performance.md).
pub fn leaky_relu(x: &Tensor, slope: f64) -> Tensor {
    let mut out = std::ptr::null_mut();
    let rc = unsafe { sj_leaky_relu(x.as_ptr() as *mut c_void, slope, &mut out) };
    adopt(rc, out).expect("leaky_relu")
}

/// The state of libtorch's default generator for `device` (a uint8 tensor), for checkpoints.
pub fn rng_state(device: tch::Device) -> Tensor {
    let mut out = std::ptr::null_mut();
    let rc = unsafe { sj_rng_get_state(cuda_index(device), &mut out) };
    adopt(rc, out).expect("reading the generator state")
}

/// Restores what `rng_state` returned; a state of the wrong size is an error.
pub fn set_rng_state(device: tch::Device, state: &Tensor) -> Result<(), TchError> {
    let state = state.to_device(tch::Device::Cpu).to_kind(tch::Kind::Uint8).contiguous();
    let rc = unsafe { sj_rng_set_state(cuda_index(device), state.as_ptr() as *mut c_void) };
    if rc != 0 {
        return Err(last_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leaky_relu_values_and_gradient() {
        let x = Tensor::from_slice(&[-2.0f64, -0.5, 0.0, 3.0]).set_requires_grad(true);
        let y = leaky_relu(&x, 0.2);
        assert_eq!(Vec::<f64>::try_from(&y).unwrap(), vec![-0.4, -0.1, 0.0, 3.0]);
        y.sum(None).backward();
        let g = Vec::<f64>::try_from(x.grad()).unwrap();
        assert_eq!(g[0], 0.2);
        assert_eq!(g[1], 0.2);
        assert_eq!(g[3], 1.0);
    }

    #[test]
    fn restoring_the_generator_state_replays_the_same_draws() {
        // Other tests draw from the same global generator in parallel threads and may slip a
        // draw in between; a broken restore never replays, so a few tries tell the two apart.
        let replayed = (0..20).any(|_| {
            let state = rng_state(tch::Device::Cpu);
            let a = Tensor::randn([5], (tch::Kind::Float, tch::Device::Cpu));
            set_rng_state(tch::Device::Cpu, &state).unwrap();
            let b = Tensor::randn([5], (tch::Kind::Float, tch::Device::Cpu));
            a.equal(&b)
        });
        assert!(replayed);
        assert!(set_rng_state(tch::Device::Cpu, &Tensor::from_slice(&[1u8, 2])).is_err());
    }

    #[test]
    fn shim_errors_become_results() {
        let x = Tensor::from_slice(&[1i64, 2]);
        let mut out = std::ptr::null_mut();
        let rc = unsafe { sj_leaky_relu(x.as_ptr() as *mut c_void, 0.2, &mut out) };
        let err = adopt(rc, out).unwrap_err().to_string();
        assert!(!err.is_empty());
    }
}
