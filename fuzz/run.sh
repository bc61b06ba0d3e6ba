#!/usr/bin/env bash
# Builds and runs the keyward fuzz targets with libFuzzer (libfuzzer-sys) on
# the stable toolchain, without needing cargo-fuzz: the same instrumentation
# flags `cargo fuzz build -s none` passes.
#
#   fuzz/run.sh build                    build every target (release, debug assertions)
#   fuzz/run.sh smoke [RUNS]             run every target RUNS times (default 20000) from its seeds
#   fuzz/run.sh run TARGET RUNS [ARGS]   fuzz one target, corpus in fuzz/corpus/TARGET
#
# CARGO_TARGET_DIR is honoured (default fuzz/target).
set -euo pipefail
cd "$(dirname "$0")"

TARGETS=(token_parse session_token resource_pattern cidr_list http_credentials verify)
HOST="$(rustc -vV | sed -n 's/^host: //p')"
BIN_DIR="${CARGO_TARGET_DIR:-$PWD/target}/$HOST/release"

build() {
  # --target keeps these flags off build scripts and proc macros.
  RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares -Cllvm-args=-sanitizer-coverage-stack-depth \
--cfg fuzzing -Cdebug-assertions -Coverflow-checks" \
    cargo build --release --locked --target "$HOST" --bins
}

run_one() {
  local target=$1 runs=$2
  shift 2
  mkdir -p "corpus/$target" artifacts
  "$BIN_DIR/$target" "corpus/$target" "seeds/$target" -runs="$runs" \
    -print_final_stats=1 -artifact_prefix="artifacts/$target-" "$@"
}

case "${1:-}" in
  build) build ;;
  smoke)
    runs="${2:-20000}"
    scratch="$(mktemp -d)"
    trap 'rm -rf "$scratch"' EXIT
    for t in "${TARGETS[@]}"; do
      mkdir -p "$scratch/$t"
      start=$(date +%s)
      # A fresh corpus each time, seeded from seeds/; a crash fails the run.
      "$BIN_DIR/$t" "$scratch/$t" "seeds/$t" -runs="$runs" -max_len=256 \
        -artifact_prefix="$scratch/$t-" >"$scratch/$t.log" 2>&1 || {
        tail -n 40 "$scratch/$t.log"
        echo "fuzz target $t failed"
        exit 1
      }
      echo "$t: $(grep -E '^#[0-9]+[[:space:]]+DONE' "$scratch/$t.log" | tail -n1) ($(( $(date +%s) - start )) s)"
    done
    ;;
  run)
    [ $# -ge 3 ] || { echo "usage: $0 run TARGET RUNS [libFuzzer args]"; exit 2; }
    t=$2 runs=$3
    shift 3
    run_one "$t" "$runs" "$@"
    ;;
  *)
    sed -n '2,11p' "$0"
    exit 2
    ;;
esac
