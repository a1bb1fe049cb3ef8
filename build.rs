//! Link-time glue for libtorch.
//!
//! `torch-sys` tells its direct dependents where libtorch lives (`DEP_TCH_LIBTORCH_LIB`, from its
//! `links = "tch"` key). We bake that directory into every binary we build (service, tests,
//! benches) as an rpath, so nobody has to set `LD_LIBRARY_PATH`. When the libtorch in use is a
//! CUDA build we also force `libtorch_cuda.so` into the link of every target that runs the model:
//! it has no symbol that our code names directly, so `--as-needed` would drop it and
//! `tch::Cuda::is_available()` would be false even on a GPU machine.

use std::path::{Path, PathBuf};

fn main() {
    embed_api_reference();
    compile_protocol();
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let Ok(dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        println!("cargo:warning=torch-sys did not report a libtorch directory; no rpath set");
        return;
    };
    println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    if Path::new(&dir).join("libtorch_cuda.so").exists() {
        // Only what runs the model: the load generator (`gradcam-load`) needs no libtorch.
        // Cargo refuses a per-kind argument for a kind of target the package lacks (the
        // container build copies no tests or examples), so each is given only where its
        // folder is there.
        let arg = "-Wl,--no-as-needed,-ltorch_cuda,--as-needed";
        println!("cargo:rustc-link-arg-bin=gradcam-serve={arg}");
        let root = PathBuf::from(
            std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"),
        );
        for kind in ["tests", "benches", "examples"] {
            if root.join(kind).is_dir() {
                println!("cargo:rustc-link-arg-{kind}={arg}");
            }
        }
    }
}

/// The Open Inference Protocol's gRPC service (proto/inference.proto), compiled with protox (no
/// `protoc` needed): the server's side and the client's, with the library's checking codec
/// (`crate::proto::codec`), and a client with prost's own codec for the load generator, which
/// links nothing of the library. Byte fields are `bytes::Bytes`, so that a request's images are
/// slices of its buffer, not copies.
fn compile_protocol() {
    println!("cargo:rerun-if-changed=proto/inference.proto");
    let files =
        protox::compile(["inference.proto"], ["proto"]).expect("proto/inference.proto compiles");
    tonic_prost_build::configure()
        .bytes(".")
        .codec_path("crate::proto::codec::Checked")
        .compile_fds(files.clone())
        .expect("code for proto/inference.proto is generated");
    let out =
        PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR for build scripts"));
    let plain = out.join("plain");
    std::fs::create_dir_all(&plain).expect("OUT_DIR is writable");
    tonic_prost_build::configure()
        .bytes(".")
        .build_server(false)
        .out_dir(plain)
        .compile_fds(files)
        .expect("client code for proto/inference.proto is generated");
}

/// The interactive API reference at `/docs` is swagger-ui-dist from npm, which
/// scripts/web_assets.sh installs into the cache (the version pinned in
/// scripts/web/package.json). When it is there, its bundle and stylesheet are copied into
/// OUT_DIR and the `swagger_ui` cfg is set; when not, the build goes on and `/docs` says how to
/// get it.
fn embed_api_reference() {
    println!("cargo::rustc-check-cfg=cfg(swagger_ui)");
    let root =
        PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let pin = root.join("scripts/web/package.json");
    println!("cargo:rerun-if-changed={}", pin.display());
    println!("cargo:rerun-if-env-changed=GRADCAM_CACHE");
    let version = std::fs::read_to_string(&pin).ok().and_then(|text| {
        let after = text.split("\"swagger-ui-dist\"").nth(1)?;
        Some(after.split('"').nth(1)?.to_string())
    });
    let cache = std::env::var_os("GRADCAM_CACHE")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("XDG_CACHE_HOME").map(|c| PathBuf::from(c).join("gradcam-serve"))
        })
        .or_else(|| {
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/gradcam-serve"))
        });
    let (Some(version), Some(cache)) = (version, cache) else {
        println!(
            "cargo:warning=no swagger-ui-dist pin or cache directory: /docs without the reference"
        );
        return;
    };
    let dir = cache.join(format!(
        "web/swagger-ui-dist-{version}/node_modules/swagger-ui-dist"
    ));
    let files = ["swagger-ui-bundle.js", "swagger-ui.css"];
    if !files.iter().all(|f| dir.join(f).is_file()) {
        println!(
            "cargo:warning=swagger-ui-dist {version} is not in {}: /docs will say so (scripts/setup.sh installs it)",
            dir.display()
        );
        return;
    }
    let out =
        PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR for build scripts"));
    for f in files {
        println!("cargo:rerun-if-changed={}", dir.join(f).display());
        std::fs::copy(dir.join(f), out.join(f)).expect("copying swagger-ui-dist into OUT_DIR");
    }
    println!("cargo:rustc-cfg=swagger_ui");
}
