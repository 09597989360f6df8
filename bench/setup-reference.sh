#!/usr/bin/env bash
# Create bench/.venv (git-ignored) with what a user of the reference has: the full PyPI
# torch==2.13.0 wheel with its nvidia dependencies, and numpy; and facenet-pytorch 2.6.0's MTCNN,
# the face detector ours follows (its pins ask for torch 2.2, so it and torchvision 0.28, the
# torchvision of torch 2.13, go in without their dependencies; requests is imported by its package). Idempotent: a venv that already
# imports torch 2.13.0 is left alone. Prints the venv's python on stdout (everything else goes to
# stderr), so callers can do:  py=$(bench/setup-reference.sh)
#
# Where /tmp/wheels exists (a local wheel cache), pip looks there first; PyPI is still used for
# anything it lacks, so the script works the same on a fresh machine.
set -euo pipefail
cd "$(dirname "$0")"

TORCH_VERSION=2.13.0
venv=.venv
py="$venv/bin/python"

ready() {
  [ -x "$py" ] && "$py" -c "import numpy, PIL, torch, facenet_pytorch; assert torch.__version__.startswith('$TORCH_VERSION')" \
    >/dev/null 2>&1
}

if ! ready; then
  base=$(command -v python3 || command -v python || true)
  if [ -z "$base" ]; then
    echo "setup-reference: python3 is required" >&2
    exit 1
  fi
  if [ ! -x "$py" ] && ! "$base" -m venv "$venv" >&2; then
    # Debian/Ubuntu ship venv's ensurepip separately.
    echo "setup-reference: installing python3-venv" >&2
    rm -rf "$venv"
    apt-get update -qq >&2 && apt-get install -y -qq python3-venv >&2
    "$base" -m venv "$venv" >&2
  fi
  find_links=()
  if [ -d /tmp/wheels ]; then
    find_links=(--find-links /tmp/wheels)
  fi
  echo "setup-reference: installing torch==$TORCH_VERSION and numpy into bench/$venv" >&2
  "$py" -m pip install --disable-pip-version-check -q "${find_links[@]}" \
    "torch==$TORCH_VERSION" numpy pillow requests >&2
  "$py" -m pip install --disable-pip-version-check -q --no-deps "${find_links[@]}" \
    torchvision==0.28.0 facenet-pytorch==2.6.0 >&2
  if ! ready; then
    echo "setup-reference: bench/$venv does not import torch $TORCH_VERSION after the install" >&2
    exit 1
  fi
fi

echo "$(pwd)/$py"
