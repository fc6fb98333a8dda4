#!/usr/bin/env bash
# Builds the Debian package: the binary, then the man pages and shell
# completions generated from its own command-line definitions (`readbackd
# generate`, into target/generated/), then the .deb with cargo-deb.
# Arguments go to `cargo deb`, e.g.
#   scripts/package.sh                                  # target/debian/readback_<version>_<arch>.deb
#   scripts/package.sh --profile dev --output x.deb     # quicker, for tests
set -euo pipefail
cd "$(dirname "$0")/.."

profile=release
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
  [ "${args[i]}" = --profile ] && profile=${args[i + 1]}
done
cargo build --locked --profile "$profile" --bin readbackd
bin=target/$profile/readbackd
[ "$profile" = dev ] && bin=target/debug/readbackd

generated=target/generated
rm -rf "$generated"
"$bin" generate man "$generated/man" >/dev/null
gzip -9n "$generated"/man/*.1
for shell in bash zsh fish; do
  "$bin" generate completions "$shell" "$generated/completions" >/dev/null
done
cargo deb --locked --no-build "$@"
