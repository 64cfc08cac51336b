#!/usr/bin/env bash
# Checks that patches/sled is sled 0.34.7 as published on crates.io plus exactly
# patches/sled-threadpool.patch: takes the published crate from Cargo's cache, or else from
# crates.io's download address, checks it against crates.io's checksum, and compares.
# Run from anywhere; CI runs it (.ci/run). Exit 1 with the difference when they disagree.
set -euo pipefail
cd "$(dirname "$0")"
SUM=7f96b4737c2ce5987354855aed3797279def4ebf734436c6aa4552cf8e169935 # crates.io's, sled 0.34.7
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
crate=$(ls "${CARGO_HOME:-$HOME/.cargo}"/registry/cache/*/sled-0.34.7.crate 2>/dev/null | head -1 || true)
if [ -z "$crate" ]; then
  crate="$T/sled-0.34.7.crate"
  curl -sSfL -o "$crate" https://static.crates.io/crates/sled/sled-0.34.7.crate
fi
echo "$SUM  $crate" | sha256sum -c --quiet
tar -xzf "$crate" -C "$T"
P="$T/sled-0.34.7"
# Left out of the copy: images, the upstream CI folder, cargo's own markers, the lock file.
rm -rf "$P/art" "$P/.github" "$P/.cargo-ok" "$P/.cargo_vcs_info.json" "$P/Cargo.lock" "$P/.gitignore"
diff -rq -x .cargo_vcs_info.json -x threadpool.rs -x lib.rs "$P" sled
{
  diff -u --label a/src/threadpool.rs --label b/src/threadpool.rs "$P/src/threadpool.rs" sled/src/threadpool.rs || true
  diff -u --label a/src/lib.rs --label b/src/lib.rs "$P/src/lib.rs" sled/src/lib.rs || true
} > "$T/now.patch"
diff -u sled-threadpool.patch "$T/now.patch"
echo "patches/sled = sled 0.34.7 + patches/sled-threadpool.patch"
