#!/usr/bin/env bash
# Paired before/after of the token hot path: keyrot-core at REV (default: main's parent
# of your change, pass it explicitly) against the working tree, both linked into one
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
TOML
cp "$here/hot_path.rs" "$work/bench/src/main.rs"
(cd "$work/bench" && cargo build --release --quiet)
bin="$work/bench/target/release/hot-path-compare"
"$bin"
if command -v valgrind >/dev/null; then
  n=2000
  for j in 0 1 4 5; do
    base=$(valgrind --tool=callgrind --callgrind-out-file=/dev/null "$bin" "$j" 0 2>&1 | awk '/Collected/ {print $NF}')
    total=$(valgrind --tool=callgrind --callgrind-out-file=/dev/null "$bin" "$j" "$n" 2>&1 | awk '/Collected/ {print $NF}')
    echo "job $j: $(( (total - base) / n )) instructions per call (callgrind)"
  done
fi
