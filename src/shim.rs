//! The Rust face of `csrc/shim.cpp`: ATen functions that tch 0.24 does not bind the way we
//! need them. Each wrapper turns the shim's error code into a `TchError`.
use std::ffi::{c_int, c_void, CStr};
use tch::{TchError, Tensor};

extern "C" {
    fn sj_last_error() -> *const std::ffi::c_char;
    fn sj_leaky_relu(x: *mut c_void, slope: f64, out: *mut *mut c_void) -> c_int;
    fn sj_rng_get_state(cuda_index: c_int, out: *mut *mut c_void) -> c_int;
    fn sj_rng_set_state(cuda_index: c_int, state: *mut c_void) -> c_int;
    fn sj_autocast_enter(device_type: c_int, prev_enabled: *mut c_int, prev_dtype: *mut c_int) -> c_int;
    fn sj_autocast_exit(device_type: c_int, prev_enabled: c_int, prev_dtype: c_int) -> c_int;
    fn sj_channels_last(x: *mut c_void, out: *mut *mut c_void) -> c_int;
    fn sj_make_channels_last_(param: *mut c_void) -> c_int;
    fn sj_set_deterministic(on: c_int) -> c_int;
    fn sj_profiler_start() -> c_int;
    fn sj_profiler_stop(path: *const std::ffi::c_char) -> c_int;
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
    // SAFETY: `x` is a live tensor for the call; the shim only reads it and writes a new
    // tensor pointer into `out` (or leaves it null and returns an error code).
    let rc = unsafe { sj_leaky_relu(x.as_ptr() as *mut c_void, slope, &mut out) };
    adopt(rc, out).expect("leaky_relu")
}

/// The state of libtorch's default generator for `device` (a uint8 tensor), for checkpoints.
pub fn rng_state(device: tch::Device) -> Tensor {
    let mut out = std::ptr::null_mut();
    // SAFETY: `out` is a valid out-pointer; the shim writes a fresh tensor into it on success.
    let rc = unsafe { sj_rng_get_state(cuda_index(device), &mut out) };
    adopt(rc, out).expect("reading the generator state")
}

/// Restores what `rng_state` returned; a state of the wrong size is an error.
pub fn set_rng_state(device: tch::Device, state: &Tensor) -> Result<(), TchError> {
    // A fresh copy: libtorch reads the state from the start of the tensor's storage, so a view
    // (one worker's row of a stacked checkpoint tensor) would hand it the wrong bytes.
    let state = state.to_device(tch::Device::Cpu).to_kind(tch::Kind::Uint8).copy();
    // SAFETY: `state` is a live, contiguous uint8 CPU tensor owned here for the whole call;
    // libtorch copies from it (and checks its size) without keeping it.
    let rc = unsafe { sj_rng_set_state(cuda_index(device), state.as_ptr() as *mut c_void) };
    if rc != 0 {
        return Err(last_error());
    }
    Ok(())
}

#[cfg(sadajem_distributed)]
extern "C" {
    fn sj_group_new(
        addr: *const std::ffi::c_char,
        port: c_int,
        rank: c_int,
        world: c_int,
        timeout_s: c_int,
        nccl_cuda_index: c_int,
        out: *mut *mut c_void,
    ) -> c_int;
    fn sj_group_free(g: *mut c_void);
    fn sj_group_allreduce_sum(g: *mut c_void, t: *mut c_void) -> c_int;
    fn sj_group_broadcast(g: *mut c_void, t: *mut c_void, root: c_int) -> c_int;
    fn sj_group_allgather(g: *mut c_void, t: *mut c_void, out: *mut *mut c_void) -> c_int;
    fn sj_group_barrier(g: *mut c_void) -> c_int;
}

/// A c10d process group (TCPStore rendezvous at `addr:port`) of `world` ranks, over Gloo
/// (tensors in host memory) or, given this rank's GPU, NCCL (tensors on that GPU).
/// Gloo's collective calls block until every rank has made the same call; NCCL's return once
/// the current CUDA stream waits for them. A rank that died makes them fail (an error, not a
/// hang) once its connections close or `timeout_s` passes.
#[cfg(sadajem_distributed)]
pub struct Group(*mut c_void);

#[cfg(sadajem_distributed)]
impl Group {
    pub fn new(addr: &str, port: u16, rank: usize, world: usize, timeout_s: u32, nccl_gpu: Option<usize>) -> Result<Group, TchError> {
        let c_addr = std::ffi::CString::new(addr).map_err(|_| TchError::Torch(format!("MASTER_ADDR `{addr}` contains NUL")))?;
        let mut out = std::ptr::null_mut();
        let gpu = nccl_gpu.map_or(-1, |i| i as c_int);
        // SAFETY: `c_addr` is a NUL-terminated string alive for the call (the shim copies it);
        // `out` receives an owned group pointer, freed once by `Drop`.
        let rc = unsafe { sj_group_new(c_addr.as_ptr(), port as c_int, rank as c_int, world as c_int, timeout_s as c_int, gpu, &mut out) };
        if rc != 0 {
            return Err(last_error());
        }
        Ok(Group(out))
    }

    fn check(rc: c_int) -> Result<(), TchError> {
        if rc != 0 {
            return Err(last_error());
        }
        Ok(())
    }

    /// Sums `t` over the ranks, in place.
    pub fn allreduce_sum_(&self, t: &Tensor) -> Result<(), TchError> {
        // SAFETY: `self.0` is the live group this value owns; `t` is a live tensor the
        // collective writes in place and does not keep past the call.
        Self::check(unsafe { sj_group_allreduce_sum(self.0, t.as_ptr() as *mut c_void) })
    }

    /// Overwrites `t` with rank `root`'s, in place.
    pub fn broadcast_(&self, t: &Tensor, root: usize) -> Result<(), TchError> {
        // SAFETY: as in `allreduce_sum_`: a live group and a live tensor for the call.
        Self::check(unsafe { sj_group_broadcast(self.0, t.as_ptr() as *mut c_void, root as c_int) })
    }

    /// Every rank's `t` (same shape everywhere), stacked along a new first dimension by rank.
    pub fn allgather(&self, t: &Tensor) -> Result<Tensor, TchError> {
        let mut out = std::ptr::null_mut();
        // SAFETY: a live group, a live input tensor, and an out-pointer for the new tensor.
        let rc = unsafe { sj_group_allgather(self.0, t.as_ptr() as *mut c_void, &mut out) };
        adopt(rc, out)
    }

    pub fn barrier(&self) -> Result<(), TchError> {
        // SAFETY: `self.0` is the live group this value owns.
        Self::check(unsafe { sj_group_barrier(self.0) })
    }
}

#[cfg(sadajem_distributed)]
impl Drop for Group {
    fn drop(&mut self) {
        // SAFETY: the pointer came from `sj_group_new` and is freed exactly once, here.
        unsafe { sj_group_free(self.0) }
    }
}

#[cfg(sadajem_cuda)]
extern "C" {
    fn sj_cuda_peak_allocated(device: c_int, out: *mut i64) -> c_int;
    fn sj_cuda_reset_peak(device: c_int) -> c_int;
}

/// Peak bytes libtorch's caching allocator handed to tensors on GPU `index` since the last
/// [`cuda_reset_peak`] (torch.cuda.max_memory_allocated); None in a build without CUDA.
pub fn cuda_peak_allocated(index: usize) -> Option<i64> {
    #[cfg(sadajem_cuda)]
    {
        let mut out = 0i64;
        // SAFETY: `out` is a valid i64 out-pointer; the index is checked by the shim.
        let rc = unsafe { sj_cuda_peak_allocated(index as c_int, &mut out) };
        (rc == 0).then_some(out)
    }
    #[cfg(not(sadajem_cuda))]
    {
        let _ = index;
        None
    }
}

/// Starts the peak of [`cuda_peak_allocated`] afresh (nothing in a build without CUDA).
pub fn cuda_reset_peak(index: usize) {
    // SAFETY: takes only an index, which the shim checks.
    #[cfg(sadajem_cuda)]
    unsafe {
        sj_cuda_reset_peak(index as c_int);
    }
    #[cfg(not(sadajem_cuda))]
    let _ = index;
}

/// bf16 autocast on one device type while the guard lives (see `engine::autocast_bf16`).
pub struct Autocast {
    device_type: c_int,
    prev_enabled: c_int,
    prev_dtype: c_int,
}

impl Autocast {
    pub fn enter(device: tch::Device) -> Autocast {
        let device_type = if device.is_cuda() { 1 } else { 0 };
        let (mut prev_enabled, mut prev_dtype) = (0, 0);
        // SAFETY: two valid out-pointers for the previous state; the call sets thread-local flags.
        let rc = unsafe { sj_autocast_enter(device_type, &mut prev_enabled, &mut prev_dtype) };
        if rc != 0 {
            panic!("entering autocast: {}", last_error());
        }
        Autocast { device_type, prev_enabled, prev_dtype }
    }
}

impl Drop for Autocast {
    fn drop(&mut self) {
        // SAFETY: plain integers saved by `enter`; the call restores thread-local flags.
        let rc = unsafe { sj_autocast_exit(self.device_type, self.prev_enabled, self.prev_dtype) };
        // No panic in a drop (it would abort during an unwind): restoring two thread-local flags
        // has never failed, and if it did the next forwards would only compute in bf16.
        if rc != 0 {
            eprintln!("warning: leaving bf16 autocast failed: {}", last_error());
        }
    }
}

/// libtorch's deterministic mode (see `engine::make_deterministic`) on or off.
pub fn set_deterministic(on: bool) {
    // SAFETY: takes an integer flag; sets libtorch's global context.
    let rc = unsafe { sj_set_deterministic(on as c_int) };
    if rc != 0 {
        panic!("setting deterministic mode: {}", last_error());
    }
}

/// Starts libtorch's operator profiler (CPU operators, on every thread): what
/// `sadajem bench --profile` records.
pub fn profiler_start() -> Result<(), TchError> {
    // SAFETY: no arguments; the shim turns a C++ exception into the error code.
    if unsafe { sj_profiler_start() } != 0 {
        return Err(last_error());
    }
    Ok(())
}

/// Stops the profiler [`profiler_start`] started and writes its events to `path` as a Chrome
/// trace (the format of torch.profiler's `export_chrome_trace`).
pub fn profiler_stop(path: &std::path::Path) -> Result<(), TchError> {
    let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| TchError::Torch(format!("{}: a path with a NUL byte", path.display())))?;
    // SAFETY: `c_path` is NUL-terminated and alive for the call; the shim only reads it.
    if unsafe { sj_profiler_stop(c_path.as_ptr()) } != 0 {
        return Err(last_error());
    }
    Ok(())
}

/// `x` with channels_last (NHWC) strides; same shape and values.
pub fn channels_last(x: &Tensor) -> Tensor {
    let mut out = std::ptr::null_mut();
    // SAFETY: `x` is live for the call and only read; `out` receives a fresh tensor.
    let rc = unsafe { sj_channels_last(x.as_ptr() as *mut c_void, &mut out) };
    adopt(rc, out).expect("channels_last")
}

/// Re-lays a 4-d parameter out as channels_last in place, keeping its identity.
pub fn make_channels_last_(param: &Tensor) {
    // SAFETY: `param` is live; the shim swaps its data for a channels_last copy (set_data),
    // keeping the tensor object that autograd and the optimiser hold.
    let rc = unsafe { sj_make_channels_last_(param.as_ptr() as *mut c_void) };
    if rc != 0 {
        panic!("channels_last parameter: {}", last_error());
    }
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
    fn autocast_runs_convolutions_in_bf16_only_inside_the_guard() {
        let x = Tensor::randn([2, 3, 8, 8], (tch::Kind::Float, tch::Device::Cpu));
        let w = Tensor::randn([4, 3, 3, 3], (tch::Kind::Float, tch::Device::Cpu));
        let conv = || x.conv2d(&w, None::<Tensor>, [1, 1], [1, 1], [1, 1], 1);
        let inside = {
            let _g = Autocast::enter(tch::Device::Cpu);
            conv()
        };
        assert_eq!(inside.kind(), tch::Kind::BFloat16);
        let outside = conv();
        assert_eq!(outside.kind(), tch::Kind::Float);
        // bf16 keeps 8 bits of mantissa: close to fp32, but not equal.
        let err = (inside.to_kind(tch::Kind::Float) - &outside).abs().max().double_value(&[]);
        let scale = outside.abs().max().double_value(&[]);
        assert!(err > 0.0 && err < 0.02 * scale, "{err} vs {scale}");
    }

    #[test]
    fn channels_last_keeps_values_and_changes_strides() {
        let x = Tensor::randn([2, 3, 4, 5], (tch::Kind::Float, tch::Device::Cpu));
        let y = channels_last(&x);
        assert!(y.equal(&x));
        assert_eq!(y.stride(), vec![60, 1, 15, 3]);
        let p = x.copy().set_requires_grad(true);
        make_channels_last_(&p);
        assert!(p.equal(&x) && p.requires_grad());
        assert_eq!(p.stride(), vec![60, 1, 15, 3]);
    }

    #[test]
    fn a_generator_state_restores_from_a_row_of_a_stacked_tensor() {
        // Checkpoints of data-parallel runs keep every worker's state as rows of one tensor.
        let g = |seed: i64| {
            tch::manual_seed(seed);
            rng_state(tch::Device::Cpu)
        };
        let stacked = Tensor::stack(&[g(1), g(2)], 0);
        let replays = (0..20).any(|_| {
            set_rng_state(tch::Device::Cpu, &stacked.get(1)).unwrap();
            let a = Tensor::randn([5], (tch::Kind::Float, tch::Device::Cpu));
            tch::manual_seed(2);
            let b = Tensor::randn([5], (tch::Kind::Float, tch::Device::Cpu));
            a.equal(&b)
        });
        assert!(replays);
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
