//! Link-time glue for libtorch.
//!
//! `torch-sys` tells its direct dependents where libtorch lives (`DEP_TCH_LIBTORCH_LIB`, from its
//! `links = "tch"` key). We bake that directory into every binary we build (service, tests,
//! benches) as an rpath, so nobody has to set `LD_LIBRARY_PATH`. When the libtorch in use is a
//! CUDA build we also force `libtorch_cuda.so` into the link: it has no symbol that our code names
//! directly, so `--as-needed` would drop it and `tch::Cuda::is_available()` would be false even on
//! a GPU machine.

use std::path::Path;

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let Ok(dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        println!("cargo:warning=torch-sys did not report a libtorch directory; no rpath set");
        return;
    };
    println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    if Path::new(&dir).join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch_cuda,--as-needed");
    }
}
