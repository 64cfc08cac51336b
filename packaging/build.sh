#!/usr/bin/env bash
# Builds pdrelay's .deb and .rpm from Cargo.toml ([package.metadata.deb] for cargo-deb,
# [package.metadata.generate-rpm] for cargo-generate-rpm):
#
#   1. cargo build --release                          the binary
#   2. cargo run --release --example gen_docs         man pages and bash/zsh/fish completions from
#                                                     the CLI, into <target>/release/pdrelay-gen/
#                                                     (man pages gzipped; a stripped copy of the
#                                                     binary for the rpm)
#   3. cargo deb --no-build, cargo generate-rpm       the packages, into OUTDIR
#
# Usage: packaging/build.sh [OUTDIR]     (default: <target>/packages; <target> is CARGO_TARGET_DIR
# or target/). Prints the two package paths last. Needs cargo-deb and cargo-generate-rpm:
#   cargo install --locked cargo-deb@3.8.0 cargo-generate-rpm@0.21.1
# and strip (binutils). Generated files live under the target dir only, never in the tree.
set -euo pipefail
cd "$(dirname "$0")/.."

target=${CARGO_TARGET_DIR:-target}
gen=$target/release/pdrelay-gen
out=${1:-$target/packages}

for tool in cargo-deb cargo-generate-rpm strip gzip; do
  if ! command -v "$tool" >/dev/null; then
    echo "build.sh: $tool is missing (cargo install --locked cargo-deb@3.8.0 cargo-generate-rpm@0.21.1; strip is in binutils)" >&2
    exit 1
  fi
done

echo "== cargo build --release"
cargo build --release --locked --bin pdrelay

echo "== man pages and completions into $gen"
rm -rf "$gen"
cargo run --release --locked --quiet --example gen_docs -- "$gen"
# -n: no name or time stamp in the .gz, so the same page gives the same bytes.
gzip -9n "$gen"/*.1
for f in pdrelay.1.gz pdrelay-send.1.gz pdrelay.bash _pdrelay pdrelay.fish; do
  [ -s "$gen/$f" ] || { echo "build.sh: gen_docs did not write $gen/$f" >&2; exit 1; }
done
# cargo-deb strips the binary it packages; cargo-generate-rpm does not, so it takes this copy.
cp "$target/release/pdrelay" "$gen/pdrelay"
strip --strip-all "$gen/pdrelay"

mkdir -p "$out"
rm -f "$out"/pdrelay_*.deb "$out"/pdrelay-*.rpm
echo "== cargo deb"
cargo deb --no-build --locked --output "$out"
echo "== cargo generate-rpm"
cargo generate-rpm --output "$out"

ls "$out"/pdrelay_*.deb "$out"/pdrelay-*.rpm
