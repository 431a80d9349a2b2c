#!/usr/bin/env bash
# Builds the Debian package of chatixia-core: both binaries (/usr/bin/chatixia-core,
# /usr/bin/chatixia-sidecar), the systemd unit (/usr/lib/systemd/system/
# chatixia-core.service), its system user (/usr/lib/sysusers.d/chatixia-core.conf), and
# the config file /etc/chatixia-core/chatixia-core.toml (a conffile: the package's
# settings, then packaging/chatixia-core.toml with every key commented out), with the
# maintainer scripts of packaging/debian. Uses dpkg-deb on a staged tree (no cargo-deb
# to install); dpkg-shlibdeps (dpkg-dev) computes Depends when present.
#
#   scripts/build-deb.sh [--profile NAME] [--core BIN --sidecar BIN] [--out DIR]
#                        [--compress xz|gzip|zstd|none]
#
#   --profile NAME   cargo profile to build (default: release)
#   --core BIN       package this chatixia-core binary instead of building (with --sidecar)
#   --sidecar BIN    package this chatixia-sidecar binary
#   --out DIR        where the .deb goes (default: target/debian)
#   --compress TYPE  dpkg-deb's compression (default: xz; the test uses none: faster)
#
# Prints the path of the package on its last line. Debug information is stripped from
# the packaged binaries.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

profile=release
core=""
sidecar=""
out="$root/target/debian"
compress=xz
while [ $# -gt 0 ]; do
  case "$1" in
    --profile) profile="$2"; shift 2 ;;
    --core) core="$2"; shift 2 ;;
    --sidecar) sidecar="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --compress) compress="$2"; shift 2 ;;
    *) echo "build-deb.sh: unknown argument $1 (see the comment at the top)" >&2; exit 2 ;;
  esac
done
if { [ -n "$core" ] && [ -z "$sidecar" ]; } || { [ -z "$core" ] && [ -n "$sidecar" ]; }; then
  echo "build-deb.sh: give both --core and --sidecar, or neither" >&2
  exit 2
fi

for tool in dpkg-deb strip; do
  command -v "$tool" >/dev/null || { echo "build-deb.sh: $tool is missing (apt-get install dpkg binutils)" >&2; exit 1; }
done

if [ -z "$core" ]; then
  cargo build --locked --profile "$profile" -p chatixia-core --bin chatixia-core \
    -p chatixia-sidecar --bin chatixia-sidecar >&2
  dir="$profile"
  [ "$profile" = dev ] && dir=debug
  target_dir="${CARGO_TARGET_DIR:-$root/target}"
  core="$target_dir/$dir/chatixia-core"
  sidecar="$target_dir/$dir/chatixia-sidecar"
fi

version=$(sed -n '/^\[package\]/,/^\[/s/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
arch=$(dpkg --print-architecture)
[ -n "$version" ] || { echo "build-deb.sh: no version in Cargo.toml's [package]" >&2; exit 1; }

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
pkg="$stage/chatixia-core"
install -d -m 0755 "$pkg/DEBIAN" "$pkg/usr/bin" "$pkg/etc/chatixia-core" \
  "$pkg/usr/lib/systemd/system" "$pkg/usr/lib/sysusers.d" "$pkg/usr/share/doc/chatixia-core"
install -m 0755 "$core" "$pkg/usr/bin/chatixia-core"
install -m 0755 "$sidecar" "$pkg/usr/bin/chatixia-sidecar"
strip --strip-debug "$pkg/usr/bin/chatixia-core" "$pkg/usr/bin/chatixia-sidecar"
install -m 0644 packaging/chatixia-core.service "$pkg/usr/lib/systemd/system/chatixia-core.service"
install -m 0644 packaging/chatixia-core.sysusers "$pkg/usr/lib/sysusers.d/chatixia-core.conf"
cat packaging/debian/chatixia-core.toml.head packaging/chatixia-core.toml \
  > "$pkg/etc/chatixia-core/chatixia-core.toml"
chmod 0644 "$pkg/etc/chatixia-core/chatixia-core.toml"
install -m 0644 README.md "$pkg/usr/share/doc/chatixia-core/README.md"
install -m 0644 packaging/debian/copyright "$pkg/usr/share/doc/chatixia-core/copyright"
for script in postinst prerm postrm; do
  install -m 0755 "packaging/debian/$script" "$pkg/DEBIAN/$script"
done
echo /etc/chatixia-core/chatixia-core.toml > "$pkg/DEBIAN/conffiles"

# Depends from the binaries' shared libraries (dpkg-shlibdeps wants a debian/control).
depends="libc6, libgcc-s1"
if command -v dpkg-shlibdeps >/dev/null; then
  mkdir -p "$stage/src/debian"
  printf 'Source: chatixia-core\n\nPackage: chatixia-core\nArchitecture: any\n' \
    > "$stage/src/debian/control"
  line=$(cd "$stage/src" && dpkg-shlibdeps -O \
    -e"$pkg/usr/bin/chatixia-core" -e"$pkg/usr/bin/chatixia-sidecar" 2>/dev/null)
  depends="${line#shlibs:Depends=}"
else
  echo "build-deb.sh: dpkg-shlibdeps (dpkg-dev) is missing: Depends: $depends" >&2
fi

size=$(du -sk --exclude=DEBIAN "$pkg" | cut -f1)
cat > "$pkg/DEBIAN/control" <<EOF
Package: chatixia-core
Version: $version
Architecture: $arch
Maintainer: chatixia-core developers <chatixia-core@localhost>
Installed-Size: $size
Depends: $depends
Section: net
Priority: optional
Description: thread-per-core io_uring server for the chatixia agent mesh
 chatixia-core serves the chatixia mesh: the WebSocket signaling relay, the agent
 registry, the task hub, invite and approval pairing, and the dashboard, on one
 pinned thread per core. chatixia-sidecar is the agents' WebRTC sidecar.
 .
 The service (chatixia-core.service) runs as the system user chatixia-core with its
 state in /var/lib/chatixia-core and its settings in
 /etc/chatixia-core/chatixia-core.toml; it is not started on install.
EOF

mkdir -p "$out"
deb="$out/chatixia-core_${version}_${arch}.deb"
dpkg-deb --root-owner-group -Z"$compress" --build "$pkg" "$deb" >&2
echo "$deb"
