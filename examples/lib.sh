# Shared by the examples' scripts, sourced from the repository's root: a
# temp dir ($work) removed on exit, with the processes a script started
# ($pids, each stopped); INT and TERM exit through that cleanup.
work=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; rm -rf "$work"' EXIT
trap 'exit 0' INT TERM

# The framegate binary to run: FRAMEGATE_BIN if set (the tests set it);
# else a release build.
framegate_bin() {
  if [[ -n "${FRAMEGATE_BIN:-}" ]]; then
    echo "$FRAMEGATE_BIN"
  else
    cargo build --quiet --release --bin framegate >&2
    echo "${CARGO_TARGET_DIR:-target}/release/framegate"
  fi
}
