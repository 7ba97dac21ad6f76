//! Where libtorch is set up: device choice, CPU threads, seeding. Nothing else in the crate
//! touches these global settings.
use crate::config::{DeviceSpec, Precision};
use anyhow::{bail, Result};
use tch::{nn, Device};

/// The device `spec` names, checked to be really there. Plain `cuda` in a data-parallel worker
/// means its own GPU, `cuda:LOCAL_RANK` (LOCAL_RANK as launchers set it).
pub fn parse_device(spec: DeviceSpec) -> Result<Device> {
    let local_rank = std::env::var("LOCAL_RANK").ok().and_then(|r| r.parse::<usize>().ok());
    let device = match spec {
        DeviceSpec::Cpu => Device::Cpu,
        DeviceSpec::Cuda => Device::Cuda(local_rank.unwrap_or(0)),
        DeviceSpec::CudaIndex(i) => Device::Cuda(i),
    };
    if let Device::Cuda(i) = device {
        load_cuda_backend()?;
        let n = tch::Cuda::device_count();
        if n == 0 {
            bail!(
                "device `{spec}`: no CUDA device: libtorch's CUDA library is loaded but sees no GPU \
                 (no NVIDIA GPU or driver on this machine, or CUDA_VISIBLE_DEVICES hides them); use train.device = cpu"
            );
        }
        if (i as i64) >= n {
            bail!("device `{spec}` asked for, but libtorch sees {n} CUDA device(s): cuda:0 to cuda:{}", n - 1);
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

/// `train.deterministic`: deterministic GPU kernels, so that a run on a GPU repeats (and a
/// resumed one continues) bitwise, at some cost in speed; what PyTorch users get from
/// `torch.use_deterministic_algorithms(True)` with `cudnn.deterministic = True`. cuBLAS needs a
/// fixed workspace for it (CUBLAS_WORKSPACE_CONFIG, read when its first handle is made, so set
/// here before any CUDA work unless the user chose one). CPU kernels are deterministic for a
/// given thread count either way.
pub fn make_deterministic() {
    if std::env::var_os("CUBLAS_WORKSPACE_CONFIG").is_none() {
        std::env::set_var("CUBLAS_WORKSPACE_CONFIG", ":4096:8");
    }
    crate::shim::set_deterministic(true);
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
    info.lines().find(|l| l.starts_with("flags")).is_some_and(|l| l.split_whitespace().any(|f| f == "avx512_bf16" || f == "amx_bf16"))
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

/// What a command does on the GPU, for the advice when CUDA runs out of memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    /// `train` and `bench`: the three batches of an iteration, and validation.
    Training,
    /// `eval`: test-set forwards and attacks, and sampling chains.
    Evaluation,
    /// `sample`: sampling chains alone.
    Sampling,
    /// Anything else (no batch setting bounds its memory).
    Other,
}

impl Workload {
    /// The settings whose size bounds this workload's GPU memory.
    pub fn batch_settings(self) -> &'static [&'static str] {
        match self {
            Workload::Training => &["data.batch_size", "sampler.batch_size", "loss.px_batch_size", "data.eval_batch_size"],
            Workload::Evaluation => &["data.eval_batch_size", "sampler.batch_size"],
            Workload::Sampling => &["sampler.batch_size"],
            Workload::Other => &[],
        }
    }
}

/// The clear message for an error (or panic) text that is libtorch's CUDA out-of-memory
/// error, naming the batch settings to lower; None for any other text. libtorch's own first
/// sentences (how much it tried to allocate, how much was free) are kept; its advice on the
/// caching allocator and its C++ backtrace are not.
pub fn out_of_memory(message: &str, workload: Workload) -> Option<String> {
    let at = message.find("CUDA out of memory")?;
    // The text may be a Debug-formatted TchError inside a panic message: escaped newlines.
    let detail = message[at..].split(['\n', '"']).next().unwrap_or("").split("\\n").next().unwrap_or("");
    let detail = detail.split(" If reserved").next().unwrap_or(detail).trim().trim_end_matches('.');
    let settings = workload.batch_settings();
    let advice = match settings {
        [] => "free the GPU of other processes (nvidia-smi shows them) or run on the CPU".to_string(),
        [first, ..] => format!(
            "lower the batch settings that bound this command's GPU memory: {} (e.g. `--set {first}=…` with half \
             the value; a run continued with --resume reads them from RUN_DIR/config.toml), or free the GPU of \
             other processes (nvidia-smi shows them)",
            settings.join(", ")
        ),
    };
    Some(format!("the GPU ran out of memory ({detail}): {advice}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// libtorch's message as tch hands it over: inside a panic of `unwrap` on a TchError
    /// (Debug-formatted, newlines escaped), and as an error's Display.
    const OOM: &str = "CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 139.81 GiB of \
        which 1.06 GiB is free. Including non-PyTorch memory, this process has 138.7 GiB memory in use. If reserved \
        but unallocated memory is large try setting PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True to avoid \
        fragmentation.";

    #[test]
    fn cuda_out_of_memory_names_the_batch_settings_to_lower() {
        let panic = format!("called `Result::unwrap()` on an `Err` value: Torch(\"{OOM}\\nException raised from malloc at CUDACachingAllocator.cpp:1\\nframe #0: c10::Error\")");
        let display = format!("{OOM}\nException raised from malloc at CUDACachingAllocator.cpp:1\nframe #0: c10::Error");
        for text in [panic, display] {
            let m = out_of_memory(&text, Workload::Training).expect("an out-of-memory message");
            for key in ["data.batch_size", "sampler.batch_size", "loss.px_batch_size", "data.eval_batch_size"] {
                assert!(m.contains(key), "{m}");
            }
            assert!(m.contains("Tried to allocate 2.00 GiB") && m.contains("1.06 GiB is free"), "{m}");
            assert!(!m.contains("frame #0") && !m.contains("Exception raised") && !m.contains("expandable_segments"), "{m}");
            let e = out_of_memory(&text, Workload::Evaluation).unwrap();
            assert!(e.contains("data.eval_batch_size, sampler.batch_size") && !e.contains("loss.px_batch_size"), "{e}");
        }
        assert!(out_of_memory(OOM, Workload::Other).unwrap().contains("free the GPU"));
    }

    #[test]
    fn other_errors_are_left_alone() {
        for text in ["CUDA error: an illegal memory access was encountered", "out of memory", "DefaultCPUAllocator: can't allocate memory"] {
            assert_eq!(out_of_memory(text, Workload::Training), None, "{text}");
        }
    }

    #[test]
    fn device_names_are_checked() {
        assert_eq!(parse_device("cpu".parse().unwrap()).unwrap(), Device::Cpu);
        assert_eq!("cuda:3".parse(), Ok(DeviceSpec::CudaIndex(3)));
        for bad in ["gpu", "cuda:x", "CPU"] {
            let e = bad.parse::<DeviceSpec>().unwrap_err();
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
        if let Err(e) = parse_device(DeviceSpec::CudaIndex(7)) {
            let e = e.to_string();
            // The CPU install cannot load its CUDA library; the CUDA build loads it and finds no GPU.
            assert!(
                e.contains("cuda")
                    && (e.contains("CUDA library could not be loaded") || e.contains("no CUDA device") || e.contains("CUDA device(s)")),
                "{e}"
            );
        }
    }
}
