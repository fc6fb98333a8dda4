#!/usr/bin/env bash
# The Debian package as an administrator meets it, on this machine (root
# needed; no running systemd needed): lintian; an upgrade from 0.1.0 (whose
# postinst wrote the secret into readback.toml) without a conffile question;
# `dpkg -i`; `dpkg -i` of the next version, which ships a changed
# readback.toml, without a conffile question; `dpkg --purge`, which leaves
# nothing behind.
# Usage: scripts/test-package.sh PACKAGE.deb   (built by scripts/package.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/postgres.sh # apt_install

deb=${1:?usage: scripts/test-package.sh PACKAGE.deb}
# It installs the package.
[ "$(id -u)" = 0 ] || exec sudo "$0" "$@"
command -v lintian >/dev/null || apt_install lintian

fail() { echo "package test failed: $*"; exit 1; }
conf=/etc/readback/readback.toml
secret=/etc/readback/jwt_secret
work=$(mktemp -d)
# Leaves the machine as it found it; and a package left installed by an
# interrupted run would turn the first install into an upgrade.
purge() { dpkg --purge readback >/dev/null 2>&1 || true; }
trap 'purge; rm -rf "$work"' EXIT
purge

echo "lintian"
lintian --allow-root --fail-on error,warning "$deb" ||
  fail "lintian (overrides belong in debian/readback.lintian-overrides, each with its reason)"

# The next version: the same package, one revision later, whose
# readback.toml gained a line, so dpkg has a new conffile to offer.
version=$(dpkg-deb -f "$deb" Version)
next="$work/readback-next.deb"
dpkg-deb -R "$deb" "$work/next"
printf '\n# Shipped by %s+1.\n' "$version" >>"$work/next$conf"
sed -i "s/^Version: .*/Version: $version+1/" "$work/next/DEBIAN/control"
(cd "$work/next" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | sort -z | xargs -0 md5sum) \
  >"$work/next/DEBIAN/md5sums"
dpkg-deb --root-owner-group -Zgzip -z1 -b "$work/next" "$next" >/dev/null

# The md5 dpkg recorded for a conffile (what the package shipped).
shipped_md5() { dpkg-query -W -f='${Conffiles}\n' readback | awk -v f="$1" '$1 == f { print $2 }'; }
check_installed() {
  local version=$1
  [ "$(dpkg-query -W -f='${Status} ${Version}' readback)" = "install ok installed $version" ] ||
    fail "readback $version is not installed"
  # Policy 10.7.3: the conffile is exactly what the package shipped.
  [ "$(md5sum <"$conf" | cut -d' ' -f1)" = "$(shipped_md5 "$conf")" ] ||
    fail "$conf differs from the package's (changed by a maintainer script?)"
  [ -z "$(dpkg --verify readback)" ] || fail "dpkg --verify: $(dpkg --verify readback)"
  [ "$(stat -c '%U:%G %a' "$secret")" = "root:readback 640" ] ||
    fail "$secret is $(stat -c '%U:%G %a' "$secret"), not root:readback 640"
  [ "$(tr -d '\n' <"$secret" | wc -c)" -ge 32 ] || fail "$secret holds fewer than 32 bytes"
  [ "$(stat -c '%U:%G %a' /etc/readback)" = "root:readback 750" ] || fail "/etc/readback is not root:readback 750"
  # The daemon's user reads the configuration and the secret at the
  # default path.
  runuser -u readback -- readbackd check-config >/dev/null || fail "readbackd check-config as readback"
  for path in /usr/share/man/man1/readbackd.1.gz /usr/share/bash-completion/completions/readbackd \
              /usr/share/zsh/vendor-completions/_readbackd /usr/share/fish/vendor_completions.d/readbackd.fish; do
    [ -s "$path" ] || fail "$path is not installed"
  done
}

# 0.1.0 as it was released: the same files but for its postinst and
# readback.toml (kept in scripts/package-previous/), no preinst or postrm.
echo "dpkg -i 0.1.0, then upgrade to $version"
previous="$work/readback-previous.deb"
dpkg-deb -R "$deb" "$work/previous"
cp scripts/package-previous/readback.toml "$work/previous$conf"
cp scripts/package-previous/postinst "$work/previous/DEBIAN/postinst"
rm -f "$work/previous/DEBIAN/preinst" "$work/previous/DEBIAN/postrm"
sed -i "s/^Version: .*/Version: $version~previous/" "$work/previous/DEBIAN/control"
(cd "$work/previous" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | sort -z | xargs -0 md5sum) \
  >"$work/previous/DEBIAN/md5sums"
dpkg-deb --root-owner-group -Zgzip -z1 -b "$work/previous" "$previous" >/dev/null
dpkg -i "$previous" </dev/null >"$work/previous.log" 2>&1 || { cat "$work/previous.log"; fail "dpkg -i (0.1.0)"; }
generated=$(sed -n 's/^jwt_secret = "\(.*\)"$/\1/p' "$conf")
[ ${#generated} -ge 32 ] || fail "0.1.0's postinst did not write a secret into $conf"
dpkg -i "$deb" </dev/null >"$work/from-previous.log" 2>&1 ||
  { cat "$work/from-previous.log"; fail "dpkg -i (upgrade from 0.1.0)"; }
! grep -q "Configuration file '$conf'" "$work/from-previous.log" ||
  { cat "$work/from-previous.log"; fail "the upgrade from 0.1.0 asked about $conf"; }
check_installed "$version"
[ "$(cat "$secret")" = "$generated" ] || fail "the upgrade from 0.1.0 did not keep its JWT secret"
purge
[ ! -e "$secret" ] || fail "purge left $secret"

echo "dpkg -i $(basename "$deb")"
dpkg -i "$deb" </dev/null >"$work/install.log" 2>&1 || { cat "$work/install.log"; fail "dpkg -i"; }
check_installed "$version"
secret_md5=$(md5sum <"$secret")
# What systemd's StateDirectory= and LogsDirectory= would create, and a
# database in it, for the purge to remove.
install -d -o readback -g readback -m 750 /var/lib/readback /var/log/readback
runuser -u readback -- readbackd migrate >/dev/null || fail "readbackd migrate as readback"
[ -s /var/lib/readback/readback.db ] || fail "no database at /var/lib/readback/readback.db"

echo "dpkg -i (upgrade to $version+1)"
# stdin is closed: a conffile question would fail the upgrade.
dpkg -i "$next" </dev/null >"$work/upgrade.log" 2>&1 || { cat "$work/upgrade.log"; fail "dpkg -i (upgrade)"; }
! grep -q "Configuration file '$conf'" "$work/upgrade.log" ||
  { cat "$work/upgrade.log"; fail "the upgrade asked about $conf"; }
check_installed "$version+1"
grep -q "^# Shipped by $version+1" "$conf" || fail "the upgrade did not install the new $conf"
[ "$(md5sum <"$secret")" = "$secret_md5" ] || fail "the upgrade replaced the JWT secret"

echo "dpkg --purge"
dpkg --purge readback >"$work/purge.log" 2>&1 || { cat "$work/purge.log"; fail "dpkg --purge"; }
for path in /etc/readback /var/lib/readback /var/log/readback /usr/bin/readbackd \
            /etc/systemd/system/multi-user.target.wants/readbackd.service; do
  [ ! -e "$path" ] || fail "$path is left after purge"
done
dpkg-query -W -f='${Status}' readback 2>/dev/null | grep -q 'not-installed' ||
  [ -z "$(dpkg-query -W -f='${Status}' readback 2>/dev/null)" ] || fail "readback is still known to dpkg"
# Kept on purge, as Debian does with system accounts (debian/postrm).
getent passwd readback >/dev/null || fail "the readback system user was removed"
echo "package installs, upgrades without a conffile question, and purges cleanly"
