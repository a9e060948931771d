#!/usr/bin/env bash
# Builds every cargo-fuzz target in fuzz/ and runs each for a bounded time
# (FUZZ_SECONDS, default 20) from a scratch copy of its seed corpus, so a run
# leaves the repository as it was. Exits non-zero if any target crashed,
# hung or failed an assertion; the input that did it is printed (base64) and
# kept under fuzz/artifacts/<target>/.
# Usage: tests/fuzz.sh [TARGET...]   (default: every target)
# Needs the nightly toolchain (libFuzzer's instrumentation is nightly-only);
# installs cargo-fuzz on first use.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
seconds=${FUZZ_SECONDS:-20}
# No sanitizer: the crate forbids unsafe, and ASan would have to reach
# aws-lc's C build too. Debug assertions and overflow checks stay on.
flags=(--sanitizer none --debug-assertions)

if ! cargo +nightly --version >/dev/null 2>&1; then
  echo "fuzz: needs the nightly toolchain (rustup toolchain install nightly)" >&2
  exit 1
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz"
  cargo install --quiet cargo-fuzz --locked
fi

# The fuzz crate has no lockfile of its own: it starts from the main crate's,
# so the code fuzzed is built with the dependency versions the tests use.
if [ ! -f fuzz/Cargo.lock ] || [ Cargo.lock -nt fuzz/Cargo.lock ]; then
  cp Cargo.lock fuzz/Cargo.lock
fi

if [ $# -gt 0 ]; then
  targets=("$@")
else
  mapfile -t targets < <(cargo +nightly fuzz list)
fi
echo "fuzz: building ${targets[*]}"
cargo +nightly fuzz build "${flags[@]}"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
failed=()
for t in "${targets[@]}"; do
  mkdir -p "$work/$t" "fuzz/artifacts/$t"
  if [ -d "fuzz/corpus/$t" ]; then cp -R "fuzz/corpus/$t/." "$work/$t/"; fi
  before=$(ls "fuzz/artifacts/$t" | sort)
  echo "fuzz: $t for ${seconds}s ($(ls "$work/$t" | wc -l) seeds)"
  # -timeout: one input running this long is a hang, reported as a crash.
  if cargo +nightly fuzz run "${flags[@]}" "$t" "$work/$t" -- \
    -max_total_time="$seconds" -timeout=10 -print_final_stats=1 \
    > "$work/$t.log" 2>&1; then
    grep -E '^(stat::number_of_executed_units|stat::new_units_added)' "$work/$t.log" |
      sed "s/^/fuzz: $t: /" || true
  else
    failed+=("$t")
    echo "fuzz: $t FAILED; the end of its log:" >&2
    tail -40 "$work/$t.log" >&2
    for a in $(comm -13 <(echo "$before") <(ls "fuzz/artifacts/$t" | sort)); do
      echo "fuzz: $t: input fuzz/artifacts/$t/$a (base64):" >&2
      base64 -w0 "fuzz/artifacts/$t/$a" >&2
      echo >&2
      echo "fuzz: replay: cargo +nightly fuzz run ${flags[*]} $t fuzz/artifacts/$t/$a" >&2
    done
  fi
done
if [ ${#failed[@]} -gt 0 ]; then echo "fuzz: failed: ${failed[*]}" >&2; fi
echo "fuzz: $((${#targets[@]} - ${#failed[@]})) passed, ${#failed[@]} failed"
[ ${#failed[@]} -eq 0 ]
