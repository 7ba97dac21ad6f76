//! Where libtorch is set up: device choice, CPU threads, seeding. Nothing else in the crate
//! touches these global settings.
use anyhow::{bail, Result};
use crate::config::Precision;
use tch::{nn, Device};

/// Parses `cpu`, `cuda` or `cuda:N`, and checks the device is really there. Plain `cuda` in a
/// data-parallel worker means its own GPU, `cuda:LOCAL_RANK` (LOCAL_RANK as launchers set it).
pub fn parse_device(spec: &str) -> Result<Device> {
    let local_rank = std::env::var("LOCAL_RANK").ok().and_then(|r| r.parse::<usize>().ok());
    let device = match spec {
        "cpu" => Device::Cpu,
        "cuda" => Device::Cuda(local_rank.unwrap_or(0)),
        s if s.starts_with("cuda:") => match s[5..].parse::<usize>() {
            Ok(i) => Device::Cuda(i),
            Err(_) => bail!("device `{s}`: expected `cpu`, `cuda` or `cuda:N` with N a GPU index"),
        },
        s => bail!("device `{s}`: expected `cpu`, `cuda` or `cuda:N`"),
    };
    if let Device::Cuda(i) = device {
        load_cuda_backend()?;
        let n = tch::Cuda::device_count();
        if (i as i64) >= n {
            bail!(
                "device `{spec}` asked for, but libtorch sees {n} CUDA device(s); \
                 is LIBTORCH pointing at a CUDA build of torch 2.11.0 (see README, \"GPU\")?"
            );
        }
    }
    Ok(device)
}

/// Loads libtorch's CUDA library. Rust links with `--as-needed`, so nothing pulls
/// `libtorch_cuda.so` in at start-up, and without it libtorch sees no GPU. Loading it on demand
/// keeps the CPU-only install (whose CUDA library lacks cuBLAS/cuDNN) working.
fn load_cuda_backend() -> Result<()> {
    let built_against = std::path::Path::new(env!("SADAJEM_LIBTORCH_LIB")).join("libtorch_cuda.so");
    let mut errors = vec![];
    for candidate in [built_against.to_string_lossy().into_owned(), "libtorch_cuda.so".to_string()] {
        let name = std::ffi::CString::new(candidate.clone()).expect("no NUL in a path");
        // SAFETY: dlopen with a valid C string; the handle is kept for the process's life.
        let handle = unsafe { libc::dlopen(name.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
        if !handle.is_null() {
            return Ok(());
        }
        // SAFETY: dlerror returns a C string describing the last dlopen failure.
        let err = unsafe { std::ffi::CStr::from_ptr(libc::dlerror()) }.to_string_lossy().into_owned();
        errors.push(format!("{candidate}: {err}"));
    }
    bail!(
        "a CUDA device was asked for, but libtorch's CUDA library could not be loaded ({}); \
         build against a CUDA install of torch 2.11.0 (README, \"GPU\")",
        errors.join("; ")
    )
}

/// Sets up libtorch for this process: intra-op threads (`0` = one per core) and the allocator.
/// Returns the thread count.
pub fn init(threads: usize) -> usize {
    keep_freed_memory();
    let n = if threads == 0 { available_cores() } else { threads };
    tch::set_num_threads(n as i32);
    n
}

/// glibc hands every block over its mmap threshold straight back to the kernel when freed, so a
/// training step that allocates and frees the same activations each iteration pays page faults
/// for all of them: measured 30 % of wall time on the softmax demo (docs/performance.md). Raising
/// the thresholds keeps those blocks in the heap for reuse.
fn keep_freed_memory() {
    // SAFETY: mallopt only changes allocator tuning parameters.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20); // glibc's maximum on 64-bit
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
}

pub fn available_cores() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

/// Seeds libtorch's generators (weight init, dropout). Our own streams (data order,
/// augmentation) have their own seeded RNGs.
pub fn seed_torch(seed: u64) {
    tch::manual_seed(seed as i64);
}

/// What `train.precision = "auto"` becomes on `device`: bf16 on CUDA and on CPUs with native
/// bf16 arithmetic (AVX512-BF16 or AMX-BF16 in /proc/cpuinfo's flags), fp32 elsewhere.
pub fn resolve_precision(precision: Precision, device: Device) -> Precision {
    match precision {
        Precision::Auto if device.is_cuda() || cpu_has_native_bf16() => Precision::Bf16,
        Precision::Auto => Precision::Fp32,
        p => p,
    }
}

fn cpu_has_native_bf16() -> bool {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    info.lines()
        .find(|l| l.starts_with("flags"))
        .is_some_and(|l| l.split_whitespace().any(|f| f == "avx512_bf16" || f == "amx_bf16"))
}

/// Runs `f` with bf16 autocast on `device`'s type (CPU or CUDA): convolutions and matrix
/// products in bf16, the ops autocast keeps in fp32 in fp32.
pub fn autocast_bf16<T>(device: Device, f: impl FnOnce() -> T) -> T {
    let _guard = crate::shim::Autocast::enter(device);
    f()
}

/// Moves every 4-d variable of `vs` (the convolution weights) to the channels_last layout.
pub fn make_channels_last(vs: &nn::VarStore) {
    for (_, t) in vs.variables() {
        if t.dim() == 4 {
            crate::shim::make_channels_last_(&t);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_names_are_checked() {
        assert_eq!(parse_device("cpu").unwrap(), Device::Cpu);
        for bad in ["gpu", "cuda:x", "CPU"] {
            let e = parse_device(bad).unwrap_err().to_string();
            assert!(e.contains(bad) && e.contains("cuda:N"), "{e}");
        }
    }

    #[test]
    fn auto_precision_is_bf16_on_cuda_and_explicit_choices_stay() {
        assert_eq!(resolve_precision(Precision::Auto, Device::Cuda(0)), Precision::Bf16);
        for p in [Precision::Fp32, Precision::Bf16] {
            assert_eq!(resolve_precision(p, Device::Cpu), p);
            assert_eq!(resolve_precision(p, Device::Cuda(0)), p);
        }
        let expected = if cpu_has_native_bf16() { Precision::Bf16 } else { Precision::Fp32 };
        assert_eq!(resolve_precision(Precision::Auto, Device::Cpu), expected);
    }

    #[test]
    fn an_absent_gpu_is_a_clear_error() {
        // On a machine with a GPU and a CUDA libtorch this succeeds; then there is nothing to test.
        if let Err(e) = parse_device("cuda:7") {
            let e = e.to_string();
            assert!(e.contains("cuda") && (e.contains("CUDA library") || e.contains("CUDA device(s)")), "{e}");
        }
    }
}
