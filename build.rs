// torch-sys links against libtorch but leaves finding it at run time to the user; bake the folder
// into the binaries' rpath so nothing has to be exported. Also compile csrc/autocast.cpp, the
// per-device autocast switch tch does not expose, against the same libtorch's headers.
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    println!("cargo:rerun-if-env-changed=LIBTORCH_CXX11_ABI");
    println!("cargo:rerun-if-changed=csrc/autocast.cpp");
    println!("cargo:rerun-if-changed=csrc/c10d.cpp");
    // Where scripts/setup.sh puts the face detector's weights: the binary looks there by default.
    let manifest = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    println!("cargo:rustc-env=STARGAN_FACE_MODELS_DEFAULT={manifest}/face-models");
    let lib = PathBuf::from(
        std::env::var("DEP_TCH_LIBTORCH_LIB").expect("torch-sys did not report where libtorch is"),
    );
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    // With a CUDA libtorch, nothing of ours calls into libtorch_cuda.so directly, so the linker's
    // --as-needed drops it and the CUDA backend never registers ("Could not run ... from the
    // 'CUDA' backend"; tch-rs#980). Keep it (and libtorch.so, which pulls in the rest) linked.
    if lib.join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch_cuda,-ltorch,--as-needed");
    }
    // torch-sys reports `<libtorch>/lib` (or `site-packages/torch/lib`); the headers sit beside it.
    let include = lib.parent().expect("libtorch lib folder has a parent").join("include");
    let abi = std::env::var("LIBTORCH_CXX11_ABI").unwrap_or_else(|_| "1".into());
    let build = || {
        let mut b = cc::Build::new();
        b.cpp(true)
            .include(&include)
            .include(include.join("torch/csrc/api/include"))
            .flag("-std=c++17")
            .flag(format!("-D_GLIBCXX_USE_CXX11_ABI={abi}"))
            .flag("-DGLOG_USE_GLOG_EXPORT")
            .warnings(false);
        b
    };
    build().file("csrc/autocast.cpp").compile("stargan_autocast");
    // c10d (csrc/c10d.cpp): ProcessGroupGloo's header is empty without USE_C10D_GLOO and includes
    // <gloo/...> headers the torch wheel does not ship; Debian's libgloo-dev provides them (headers
    // only: Gloo's code is inside libtorch_cpu.so). NCCL only with a CUDA libtorch and nccl.h.
    let mut c10d = build();
    c10d.file("csrc/c10d.cpp").define("USE_C10D_GLOO", None);
    let gloo = [
        std::env::var("STARGAN_GLOO_INCLUDE").ok(),
        Some(format!("{manifest}/.cache/gloo/usr/include")),
        Some("/usr/include".into()),
    ]
    .into_iter()
    .flatten()
    .find(|d| std::path::Path::new(d).join("gloo/algorithm.h").exists())
    .unwrap_or_else(|| panic!("Gloo's headers are missing: run scripts/setup.sh (it unpacks Debian's libgloo-dev into .cache/gloo)"));
    c10d.include(gloo);
    println!("cargo:rerun-if-env-changed=STARGAN_GLOO_INCLUDE");
    println!("cargo:rerun-if-env-changed=STARGAN_NCCL_INCLUDE");
    if lib.join("libtorch_cuda.so").exists() {
        // scripts/setup.sh --cuda unpacks the wheels' headers into <libtorch>/cuda; a CUDA libtorch
        // from elsewhere names its header folders in STARGAN_NCCL_INCLUDE.
        let nv = lib.parent().expect("libtorch lib folder has a parent").join("cuda/nvidia");
        let dirs: Vec<PathBuf> = match std::env::var_os("STARGAN_NCCL_INCLUDE") {
            Some(d) => std::env::split_paths(&d).collect(),
            None if nv.join("nccl/include/nccl.h").exists() => {
                vec![nv.join("nccl/include"), nv.join("cu13/include"), nv.join("cu13/include/cccl")]
            }
            None => Vec::new(),
        };
        if dirs.is_empty() {
            println!(
                "cargo:warning=a CUDA libtorch without NCCL's headers: data-parallel training gets Gloo only"
            );
        } else {
            for dir in dirs {
                c10d.include(dir);
            }
            c10d.define("USE_C10D_NCCL", None).define("USE_CUDA", None).define("STARGAN_NCCL", None);
            println!("cargo:rustc-cfg=stargan_nccl");
        }
    }
    println!("cargo:rustc-check-cfg=cfg(stargan_nccl)");
    c10d.compile("stargan_c10d");
}
