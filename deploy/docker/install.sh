#!/bin/sh
# Installs userland-proxy where dockerd can run it as its userland-proxy-path:
#   - copies the built project (bin/, dist/, the native engine if it was built, production
#     node_modules) to PREFIX
#     (default /opt/userland-proxy), owned by root, not writable by others;
#   - records the absolute path of node in PREFIX/dist/node-path, so the launcher never depends
#     on dockerd's PATH (override at run time with USERLAND_PROXY_NODE);
#   - prints the daemon.json change. It never edits daemon.json nor restarts dockerd.
# Usage (as root, from a checkout after `npm ci`): deploy/docker/install.sh [PREFIX]
# Rollback: remove "userland-proxy-path" from /etc/docker/daemon.json (dockerd then uses its own
# docker-proxy), restart dockerd, then rm -rf PREFIX.
set -eu
src=$(cd "$(dirname "$0")/../.." && pwd)
prefix=${1:-/opt/userland-proxy}
node=${USERLAND_PROXY_NODE:-$(command -v node || true)}

die() { echo "install.sh: $1" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "run as root: dockerd runs the proxy as root and the files must be root-owned"
[ -n "$node" ] && [ -x "$node" ] || die "cannot find node; set USERLAND_PROXY_NODE to its absolute path"
node=$(readlink -f "$node")
[ -r "$src/dist/cli.js" ] || die "not built: run npm ci in $src first"
case $prefix in /*) ;; *) die "PREFIX must be an absolute path (dockerd requires one): $prefix" ;; esac

tmp="$prefix.tmp.$$"
rm -rf "$tmp"
mkdir -p "$tmp"
cp -R "$src/bin" "$src/dist" "$src/package.json" "$src/package-lock.json" "$tmp/"
cp -R "$src/node_modules" "$tmp/"
engine="js (the native engine was not built: see npm ci's output)"
if [ -f "$src/build/Release/engine.node" ]; then
  mkdir -p "$tmp/build/Release"
  cp "$src/build/Release/engine.node" "$tmp/build/Release/"
  engine="native (splice; USERLAND_PROXY_ENGINE=js in dockerd's environment selects the JavaScript engine)"
fi
# Shared mode: dockerd execs the per-port shim itself (no shell in between, ~1 ms less per port);
# it hands each port to the engine of its network namespace and runs the Node launcher, renamed
# bin/userland-proxy-node, for anything else (-v, USERLAND_PROXY_SHARED=false, no engine).
shared="off (no shim built: a Node process per port)"
if [ -x "$src/build/Release/userland-proxy-shim" ]; then
  mv "$tmp/bin/userland-proxy" "$tmp/bin/userland-proxy-node"
  cp "$src/build/Release/userland-proxy-shim" "$tmp/bin/userland-proxy"
  shared="on (bin/userland-proxy is the shim; USERLAND_PROXY_SHARED=false in dockerd's environment turns it off)"
fi
(cd "$tmp" && npm prune --omit=dev --ignore-scripts --no-audit --no-fund >/dev/null 2>&1) || die "npm prune failed in $tmp"
printf '%s\n' "$node" > "$tmp/dist/node-path"
chown -R root:root "$tmp"
chmod -R go-w "$tmp"
chmod 755 "$tmp/bin/"*
rm -rf "$prefix.old"
[ -e "$prefix" ] && mv "$prefix" "$prefix.old"
mv "$tmp" "$prefix"
rm -rf "$prefix.old"

"$prefix/bin/userland-proxy" -v >/dev/null || die "the installed launcher does not run"
# An engine of this install already serving ports (this network namespace's) moves to the new code
# now, without unbinding a port or cutting a connection; otherwise it would serve the old code
# for as long as any of its mappings lives.
upgraded=$("$prefix/bin/userland-proxy" upgrade 2>&1) || echo "install: upgrade of the running engine: $upgraded" >&2
cat <<MSG
installed: $prefix/bin/userland-proxy (node: $node)
engine: $engine
shared engine: $shared
running engine: $upgraded
Add to /etc/docker/daemon.json, then restart dockerd (e.g. systemctl restart docker):
  {
    "userland-proxy": true,
    "userland-proxy-path": "$prefix/bin/userland-proxy"
  }
Rollback: remove "userland-proxy-path" from daemon.json, restart dockerd, rm -rf $prefix
MSG
