#!/usr/bin/env bash
# Builds the .deb and .rpm of bridge-agent with nfpm (pinned in
# hack/tools/nfpm, built into the tool cache) from packaging/nfpm.yaml.
# Usage: hack/package.sh [-o DIR]   (default dist/)
# Environment:
#   VERSION  the version, e.g. 0.3.1 or v0.3.1 or `git describe` output
#            (default: git describe); the package version is made from it
#   ARCHS    GOARCHs to build (default "amd64 arm64")
#   FORMATS  packagers (default "deb rpm")
# Prints the packages' paths, one per line.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
out=dist
while getopts o: opt; do
  case $opt in
    o) out=$OPTARG ;;
    *) echo "usage: hack/package.sh [-o DIR]" >&2; exit 2 ;;
  esac
done
mkdir -p "$out"
out=$(cd "$out" && pwd)

version=${VERSION:-$(git -C "$root" describe --tags --always --dirty 2>/dev/null || echo dev)}
# Package version: a tag v1.2.3 is 1.2.3; n commits after it 1.2.3+n.gHASH;
# no tag at all 0.0.0+git.HASH. Both dpkg and rpm order these correctly.
pkgver=${version#v}
if [[ $pkgver =~ ^([0-9]+(\.[0-9]+)*)-([0-9]+)-(g[0-9a-f]+)(-dirty)?$ ]]; then
  pkgver="${BASH_REMATCH[1]}+${BASH_REMATCH[3]}.${BASH_REMATCH[4]}${BASH_REMATCH[5]:+.dirty}"
elif [[ ! $pkgver =~ ^[0-9][0-9A-Za-z.+~]*$ ]]; then
  pkgver="0.0.0+git.$(printf '%s' "$pkgver" | tr -c '0-9A-Za-z.\n' '.')"
fi

nfpm="$("$here/build-tools.sh" nfpm | tail -n 1)/nfpm"
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
gzip -9n <"$root/packaging/bridge-agent.8" >"$stage/bridge-agent.8.gz"
gzip -9n <"$root/packaging/changelog" >"$stage/changelog.gz"

cd "$root"
for arch in ${ARCHS:-amd64 arm64}; do
  mkdir -p "$stage/$arch"
  cp "$stage/bridge-agent.8.gz" "$stage/changelog.gz" "$stage/$arch/"
  CGO_ENABLED=0 GOOS=linux GOARCH=$arch go build -trimpath \
    -ldflags "-s -w -X github.com/bridge-agent/bridge-agent/internal/version.Version=$version" \
    -o "$stage/$arch/bridge-agent" ./cmd/bridge-agent
  for format in ${FORMATS:-deb rpm}; do
    case $format in
      deb) target="$out/bridge-agent_${pkgver}_${arch}.deb" ;;
      rpm)
        case $arch in amd64) rarch=x86_64 ;; arm64) rarch=aarch64 ;; *) rarch=$arch ;; esac
        target="$out/bridge-agent-${pkgver}-1.${rarch}.rpm" ;;
      *) echo "package: unknown format $format" >&2; exit 2 ;;
    esac
    VERSION=$pkgver ARCH=$arch STAGE="$stage/$arch" \
      "$nfpm" package --config packaging/nfpm.yaml --packager "$format" --target "$target" >&2
    echo "$target"
  done
done
