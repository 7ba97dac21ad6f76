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
        panic!("LIBTORCH={} has no include/ATen/ATen.h: run scripts/setup-libtorch.sh or point LIBTORCH at a torch 2.11.0 install", libtorch.display());
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
    if gloo.join("gloo/algorithm.h").exists() {
        println!("cargo:rerun-if-changed={}", gloo.display());
        build.include(&gloo).flag("-DUSE_C10D_GLOO").file("csrc/distributed.cpp");
        println!("cargo:rustc-cfg=sadajem_distributed");
    } else {
        println!(
            "cargo:warning=no Gloo headers in {} (scripts/setup-libtorch.sh puts them there, or set SADAJEM_GLOO_INCLUDE): building without `train --nproc`",
            gloo.display()
        );
    }
    build.compile("sadajem_shim");
}
