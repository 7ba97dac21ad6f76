//! Where libtorch is set up: device choice, CPU threads, seeding. Nothing else in the crate
//! touches these global settings.
use anyhow::{bail, Result};
use tch::Device;

/// Parses `cpu`, `cuda` or `cuda:N`, and checks the device is really there.
pub fn parse_device(spec: &str) -> Result<Device> {
    let device = match spec {
        "cpu" => Device::Cpu,
        "cuda" => Device::Cuda(0),
        s if s.starts_with("cuda:") => match s[5..].parse::<usize>() {
            Ok(i) => Device::Cuda(i),
            Err(_) => bail!("device `{s}`: expected `cpu`, `cuda` or `cuda:N` with N a GPU index"),
        },
        s => bail!("device `{s}`: expected `cpu`, `cuda` or `cuda:N`"),
    };
    if let Device::Cuda(i) = device {
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

/// libtorch's intra-op threads: `0` means one per core.
pub fn set_threads(threads: usize) -> usize {
    let n = if threads == 0 { available_cores() } else { threads };
    tch::set_num_threads(n as i32);
    n
}

pub fn available_cores() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

/// Seeds libtorch's generators (weight init, dropout). Our own streams (data order,
/// augmentation) have their own seeded RNGs.
pub fn seed_torch(seed: u64) {
    tch::manual_seed(seed as i64);
}
