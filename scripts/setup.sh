#!/usr/bin/env bash
# Assemble a CPU libtorch 2.13.0 from PyPI wheels into ./libtorch (git-ignored), so that plain
# `cargo build/test/run` work (see .cargo/config.toml and build.rs). Idempotent: a second run
# that finds the finished folder returns at once.
#
#   scripts/setup.sh          CPU libtorch (~490 MB unpacked)
#   scripts/setup.sh --cuda   also unpack libtorch_cuda and the nvidia runtime libraries it needs
#
# A LIBTORCH already exported by the user (e.g. a CUDA build) is respected: nothing is fetched.
set -euo pipefail
cd "$(dirname "$0")/.."

TORCH_VERSION=2.13.0
CUDART_VERSION=13.0.96
CUPTI_VERSION=13.0.85
dest=libtorch
stamp="$dest/.stargan-stamp"
want="torch-$TORCH_VERSION cudart-$CUDART_VERSION cupti-$CUPTI_VERSION${1:+ $1 nccl-headers}"

# torch-sys compiles a C++ wrapper: it needs g++.
if ! command -v g++ >/dev/null 2>&1; then
  echo "setup: installing g++" >&2
  apt-get update -qq && apt-get install -y -qq g++ >/dev/null
fi

need_python() {
  [ -n "${py:-}" ] && return 0
  py=$(command -v python3 || command -v python || true)
  if [ -z "$py" ] || ! "$py" -m pip --version >/dev/null 2>&1; then
    echo "setup: installing python3-pip" >&2
    apt-get update -qq && apt-get install -y -qq python3-pip >/dev/null
    py=$(command -v python3)
  fi
}
python_unzip() { "$py" - "$@" <<'PY'
import sys, zipfile, fnmatch
whl, out, pats = sys.argv[1], sys.argv[2], sys.argv[3:]
with zipfile.ZipFile(whl) as z:
    for n in z.namelist():
        if any(fnmatch.fnmatch(n, p) for p in pats):
            z.extract(n, out)
PY
}
cache=.cache/wheels
mkdir -p "$cache"

# The face detector's weights (MTCNN, MIT licence) from the facenet-pytorch wheel, into face-models/
# where the binary looks for them; and two public-domain photos from scikit-image's wheel (NASA's
# astronaut, the cameraman) that the face tests run on.
FACENET_VERSION=2.6.0
SKIMAGE_VERSION=0.26.0
faces=face-models
rm -rf "$faces".tmp.* .cache/photos.tmp.*   # left by an interrupted run
if [ "$(cat "$faces/.stargan-stamp" 2>/dev/null)" != "facenet-pytorch-$FACENET_VERSION" ]; then
  need_python
  "$py" -m pip download -q --no-deps --only-binary=:all: -d "$cache" "facenet-pytorch==$FACENET_VERSION"
  ftmp=$(mktemp -d "${faces}.tmp.XXXXXX") && chmod 755 "$ftmp"
  python_unzip "$cache/facenet_pytorch-$FACENET_VERSION-py3-none-any.whl" "$ftmp" 'facenet_pytorch/data/?net.pt'
  mv "$ftmp"/facenet_pytorch/data/*.pt "$ftmp"/
  rm -rf "$ftmp/facenet_pytorch"
  echo "facenet-pytorch-$FACENET_VERSION" > "$ftmp/.stargan-stamp"
  rm -rf "$faces" && mv "$ftmp" "$faces"
  echo "setup: face detector weights ready in $faces" >&2
fi
photos=.cache/photos
if [ ! -f "$photos/astronaut.png" ] || [ ! -f "$photos/camera.png" ]; then
  need_python
  "$py" -m pip download -q --no-deps --only-binary=:all: \
    --python-version 3.11 --implementation cp --platform manylinux_2_28_x86_64 \
    --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
    -d "$cache" "scikit-image==$SKIMAGE_VERSION"
  ptmp=$(mktemp -d "${photos}.tmp.XXXXXX")
  python_unzip "$(ls "$cache"/scikit_image-"$SKIMAGE_VERSION"-*.whl | head -n1)" "$ptmp" \
    'skimage/data/astronaut.png' 'skimage/data/camera.png'
  mkdir -p "$photos" && mv "$ptmp"/skimage/data/*.png "$photos"/ && rm -rf "$ptmp"
fi

# Gloo's headers for csrc/c10d.cpp (data-parallel training): Debian's libgloo-dev, unpacked into
# .cache/gloo rather than installed. Headers only: Gloo's code is inside libtorch_cpu.so, and no
# separate libgloo may be linked (../shared/notes/distributed-c10d.md).
gloo=.cache/gloo
rm -rf "$gloo".tmp.*   # left by an interrupted run
if [ ! -f "$gloo/usr/include/gloo/algorithm.h" ]; then
  gtmp=$(mktemp -d "${gloo}.tmp.XXXXXX")
  if ! (cd "$gtmp" && apt-get download -qq libgloo-dev 2>/dev/null); then
    apt-get update -qq && (cd "$gtmp" && apt-get download -qq libgloo-dev)
  fi
  dpkg -x "$gtmp"/libgloo-dev_*.deb "$gtmp/root"
  rm -rf "$gloo" && mv "$gtmp/root" "$gloo" && rm -rf "$gtmp"
  echo "setup: Gloo headers ready in $gloo/usr/include" >&2
fi

# The server's browser test drives Debian's chromium with playwright-core (npm, pinned in
# tests/browser/package-lock.json).
if ! command -v chromium >/dev/null 2>&1; then
  echo "setup: installing chromium (for the page's browser test)" >&2
  apt-get update -qq && apt-get install -y -qq chromium >/dev/null
fi
if ! command -v npm >/dev/null 2>&1; then
  echo "setup: installing nodejs and npm" >&2
  apt-get update -qq && apt-get install -y -qq nodejs npm >/dev/null
fi
if [ ! -f tests/browser/node_modules/playwright-core/package.json ]; then
  (cd tests/browser && npm ci --no-audit --no-fund --silent) >&2
fi

if [ -n "${LIBTORCH:-}" ] && [ "$(realpath -m "$LIBTORCH")" != "$(realpath -m "$dest")" ]; then
  echo "setup: using LIBTORCH=$LIBTORCH from the environment" >&2
  exit 0
fi

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
need_python

# The wheel's libraries do not depend on the Python version; pin the tag so every machine
# fetches the same file whatever its Python is.
"$py" -m pip download -q --no-deps --only-binary=:all: \
  --python-version 3.11 --implementation cp --platform manylinux_2_28_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_25_x86_64 \
  -d "$cache" "torch==$TORCH_VERSION" "nvidia-cuda-runtime==$CUDART_VERSION" \
  "nvidia-cuda-cupti==$CUPTI_VERSION"

tmp=$(mktemp -d "${dest}.tmp.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
torch_whl=$(ls "$cache"/torch-"$TORCH_VERSION"-*.whl | head -n1)
libs=(torch/lib/libtorch_cpu.so torch/lib/libtorch.so torch/lib/libc10.so torch/lib/libgomp.so.1)
if [ "${1:-}" = "--cuda" ]; then
  libs+=(torch/lib/libtorch_cuda.so torch/lib/libc10_cuda.so 'torch/lib/libtorch_cuda_linalg.so'
         torch/lib/libtorch_nvshmem.so torch/lib/libcaffe2_nvrtc.so)
fi
python_unzip "$torch_whl" "$tmp" 'torch/include/*' 'torch/share/cmake/*' "${libs[@]}"
mkdir -p "$tmp/lib"
mv "$tmp"/torch/include "$tmp/include"
mv "$tmp"/torch/share "$tmp/share"
mv "$tmp"/torch/lib/* "$tmp/lib/"
rmdir "$tmp/torch/lib" "$tmp/torch"
for w in "$cache"/nvidia_cuda_runtime-"$CUDART_VERSION"-*.whl "$cache"/nvidia_cuda_cupti-"$CUPTI_VERSION"-*.whl; do
  python_unzip "$w" "$tmp/nv" 'nvidia/cu13/lib/libcudart.so.13' 'nvidia/cu13/lib/libcupti.so.13'
done
if [ "${1:-}" = "--cuda" ]; then
  # The CUDA libraries torch 2.13's wheel depends on (its METADATA's Requires-Dist), from PyPI, with
  # their own component wheels; every shared library lands beside libtorch_cuda.so ($ORIGIN).
  cuda_cache=.cache/wheels-cuda
  mkdir -p "$cuda_cache"
  "$py" -m pip download -q --only-binary=:all: \
    --python-version 3.11 --implementation cp --platform manylinux_2_28_x86_64 \
    --platform manylinux_2_27_x86_64 --platform manylinux_2_25_x86_64 --platform manylinux_2_24_x86_64 \
    --platform manylinux_2_18_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$cuda_cache" \
    "cuda-toolkit[cublas,cudart,cufft,cufile,cupti,curand,cusolver,cusparse,nvjitlink,nvrtc,nvtx]==13.0.3" \
    nvidia-cudnn-cu13==9.20.0.48 nvidia-cusparselt-cu13==0.8.1 nvidia-nccl-cu13==2.29.7 \
    nvidia-nvshmem-cu13==3.4.5 nvidia-cuda-crt==13.0.88 nvidia-cuda-cccl==13.0.85
  for w in "$cuda_cache"/nvidia_*.whl; do
    python_unzip "$w" "$tmp/nv" 'nvidia/*/lib/*.so*' 'nvidia/*/*/lib/*.so*'
    # Headers for csrc/c10d.cpp's NCCL part: ProcessGroupNCCL.hpp includes nccl.h (which must be
    # the 2.29.7 torch pins: its Options embed ncclConfig_t) and, through ATen's CUDA context, the
    # runtime's, cuBLAS', cuSPARSE's and cuSOLVER's headers. build.rs finds them in cuda/.
    python_unzip "$w" "$tmp/cuda" 'nvidia/*/include/*'
  done
fi
find "$tmp/nv" -name '*.so*' -exec mv -f {} "$tmp/lib/" \;
rm -rf "$tmp/nv"
echo "$TORCH_VERSION" > "$tmp/build-version"
echo "$want" > "$tmp/.stargan-stamp"
rm -rf "$dest"
mv "$tmp" "$dest"
trap - EXIT
echo "setup: libtorch $TORCH_VERSION ready in $dest ($(du -sh "$dest" | cut -f1))" >&2
