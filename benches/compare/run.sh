#!/usr/bin/env bash
# Paired before/after of the token hot path: keyrot-core at REV (the commit before your
# change) against the working tree, both linked into one
# binary and run interleaved in shuffled rounds (median of per-round ratios new/old),
# then counted with callgrind (instructions per call, repeatable).
#   bash benches/compare/run.sh REV
# Needs git, cargo and (for the counts) valgrind. Builds in a temporary directory.
set -euo pipefail
rev=${1:?usage: run.sh REV}
here=$(cd "$(dirname "$0")" && pwd)
top=$(git -C "$here" rev-parse --show-toplevel)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/old" "$work/bench/src"
git -C "$top" archive "$rev" | tar -x -C "$work/old"
# Two packages of one name need distinct versions in one lock file.
sed -i '0,/^version = "0.1.0"/s//version = "0.0.1"/' "$work/old/Cargo.toml"
cat > "$work/bench/Cargo.toml" <<TOML
[package]
name = "hot-path-compare"
version = "0.0.0"
edition = "2024"
publish = false

[workspace]

[dependencies]
old = { package = "keyrot-core", path = "$work/old/keyrot-core" }
new = { package = "keyrot-core", path = "$top/keyrot-core" }
tokio = { version = "1", features = ["rt-multi-thread", "macros"] }
serde_json = "1"
cpu-time = "1"
TOML
cp "$here/hot_path.rs" "$work/bench/src/main.rs"
cp "$top/benches/benches/paired/mod.rs" "$work/bench/src/paired.rs"
(cd "$work/bench" && cargo build --release --quiet)
bin="$work/bench/target/release/hot-path-compare"
"$bin"
if command -v valgrind >/dev/null; then
  n=2000
  count() { valgrind --tool=callgrind --callgrind-out-file=/dev/null "$bin" "$@" 2>&1 | awk '/Collected/ {print $NF}'; }
  # Instructions per call, setup subtracted (N calls minus none), three runs each: the
  # process's random hash seeds and allocation pattern move a count by up to about 1 %.
  for spec in "0 0 KeyRing::verify-old" "0 1 KeyRing::verify-new" "1 0 cache-hit-old" "1 1 cache-hit-new"; do
    set -- $spec
    runs=""
    for _ in 1 2 3; do
      runs="$runs $(( ($(count "$1" "$2" "$n") - $(count "$1" "$2" 0)) / n ))"
    done
    echo "$3: instructions per call (callgrind, 3 runs):$runs"
  done
fi
