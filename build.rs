//! Compiles csrc/ (the shim: what tch lacks) against the libtorch that torch-sys links.
use std::path::PathBuf;

fn main() {
    // Without the `torch` feature (the fuzz targets' build) there is no libtorch to compile against.
    if std::env::var_os("CARGO_FEATURE_TORCH").is_none() {
        return;
    }
    println!("cargo:rerun-if-changed=csrc");
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    let libtorch = PathBuf::from(std::env::var("LIBTORCH").unwrap_or_else(|_| {
        panic!("LIBTORCH is not set: run scripts/setup-libtorch.sh (it installs libtorch into ./libtorch, which .cargo/config.toml points at), or export LIBTORCH=<path to a torch 2.11.0 install>/torch")
    }));
    let include = libtorch.join("include");
    if !include.join("ATen/ATen.h").exists() {
        panic!(
            "LIBTORCH={} has no include/ATen/ATen.h: run scripts/setup-libtorch.sh or point LIBTORCH at a torch 2.11.0 install",
            libtorch.display()
        );
    }
    // Let the binary find (and, for CUDA, dlopen) the libtorch it was built against, wherever
    // LIBTORCH points; .cargo/config.toml adds repo-relative rpaths for ./libtorch as well.
    let lib = libtorch.join("lib");
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    println!("cargo:rustc-env=SADAJEM_LIBTORCH_LIB={}", lib.display());
    let abi = std::env::var("LIBTORCH_CXX11_ABI").unwrap_or_else(|_| "1".into());
    let mut build = cc::Build::new();
    build
        .cpp(true)
        .pic(true)
        .warnings(false)
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        .flag("-std=c++17")
        .flag(format!("-D_GLIBCXX_USE_CXX11_ABI={abi}"))
        .flag("-DGLOG_USE_GLOG_EXPORT")
        .file("csrc/shim.cpp");
    // Data-parallel training needs c10d's Gloo backend: libtorch has the library but ships no
    // Gloo headers; scripts/setup-libtorch.sh unpacks Debian's next to it.
    println!("cargo:rustc-check-cfg=cfg(sadajem_distributed)");
    println!("cargo:rerun-if-env-changed=SADAJEM_GLOO_INCLUDE");
    let gloo = std::env::var_os("SADAJEM_GLOO_INCLUDE")
        .map(PathBuf::from)
        .unwrap_or_else(|| libtorch.parent().map(|p| p.join("gloo-include")).unwrap_or_default());
    println!("cargo:rustc-check-cfg=cfg(sadajem_cuda)");
    println!("cargo:rustc-check-cfg=cfg(sadajem_nccl)");
    let cuda = cuda_build(&mut build, &libtorch);
    if gloo.join("gloo/algorithm.h").exists() {
        println!("cargo:rerun-if-changed={}", gloo.display());
        build.include(&gloo).flag("-DUSE_C10D_GLOO").file("csrc/distributed.cpp");
        println!("cargo:rustc-cfg=sadajem_distributed");
        if cuda {
            // c10d's NCCL backend: data parallel on GPUs, all-reduce in device memory.
            build.flag("-DUSE_C10D_NCCL");
            println!("cargo:rustc-cfg=sadajem_nccl");
        }
    } else {
        println!(
            "cargo:warning=no Gloo headers in {} (scripts/setup-libtorch.sh puts them there, or set SADAJEM_GLOO_INCLUDE): building without `train --nproc`",
            gloo.display()
        );
    }
    build.compile("sadajem_shim");
}

/// The CUDA build, when LIBTORCH is a CUDA install with nccl.h beside it: `scripts/setup-libtorch.sh
/// --cuda` lays the NVIDIA wheels out as pip does (torch/ next to nvidia/nccl/include and
/// nvidia/cu13/include); other layouts name the directories with SADAJEM_NCCL_INCLUDE and
/// SADAJEM_CUDA_INCLUDE. Adds csrc/cuda.cpp and the CUDA headers; the binary then links
/// libtorch_cuda and c10_cuda and needs the CUDA libraries at start-up (README, "GPU").
fn cuda_build(build: &mut cc::Build, libtorch: &std::path::Path) -> bool {
    println!("cargo:rerun-if-env-changed=SADAJEM_NCCL_INCLUDE");
    println!("cargo:rerun-if-env-changed=SADAJEM_CUDA_INCLUDE");
    let site = libtorch.parent().map(PathBuf::from).unwrap_or_default();
    let dir = |var: &str, default: &str| std::env::var_os(var).map(PathBuf::from).unwrap_or_else(|| site.join(default));
    let (nccl, cuda) = (dir("SADAJEM_NCCL_INCLUDE", "nvidia/nccl/include"), dir("SADAJEM_CUDA_INCLUDE", "nvidia/cu13/include"));
    let found = nccl.join("nccl.h").exists()
        && cuda.join("cuda_runtime_api.h").exists()
        && libtorch.join("lib/libtorch_cuda.so").exists()
        && libtorch.join("include/torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp").exists();
    if !found {
        // The CPU install has libtorch_cuda but no nccl.h: the usual case, so no warning.
        return false;
    }
    build.include(&nccl).include(&cuda).flag("-DUSE_CUDA").file("csrc/cuda.cpp");
    // torch-sys links torch_cuda already (dropped by --as-needed unless used, as it now is);
    // the CUDA allocator, stream and guard functions the headers call live in c10_cuda.
    println!("cargo:rustc-link-lib=dylib=c10_cuda");
    println!("cargo:rustc-cfg=sadajem_cuda");
    true
}
