// torch-sys links against libtorch but leaves finding it at run time to the user; bake the folder
// into the binaries' rpath so nothing has to be exported. Also compile csrc/autocast.cpp, the
// per-device autocast switch tch does not expose, against the same libtorch's headers.
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    println!("cargo:rerun-if-env-changed=LIBTORCH_CXX11_ABI");
    println!("cargo:rerun-if-changed=csrc/autocast.cpp");
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
    cc::Build::new()
        .cpp(true)
        .file("csrc/autocast.cpp")
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        .flag("-std=c++17")
        .flag(format!("-D_GLIBCXX_USE_CXX11_ABI={abi}"))
        .flag("-DGLOG_USE_GLOG_EXPORT")
        .warnings(false)
        .compile("stargan_autocast");
}
