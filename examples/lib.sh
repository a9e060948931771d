# Shared by the examples' scripts: the framegate binary to run.
# FRAMEGATE_BIN if set (the tests set it); else a release build.
framegate_bin() {
  if [[ -n "${FRAMEGATE_BIN:-}" ]]; then
    echo "$FRAMEGATE_BIN"
  else
    cargo build --quiet --release --bin framegate >&2
    echo "${CARGO_TARGET_DIR:-target}/release/framegate"
  fi
}
