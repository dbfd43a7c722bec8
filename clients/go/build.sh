#!/usr/bin/env bash
# Builds the Go client into clients/go/bin/ (gpushare-conformance, example) with Debian 12's
# Go toolchain and packaged Go libraries; installs nothing (scripts/setup does: see README.md).
#
# Go module downloads are not reachable here, so the module builds with -mod=vendor from a
# vendor/ directory made by this script: symlinks to the packaged sources under
# /usr/share/gocode/src and a vendor/modules.txt listing their packages, at the versions go.mod
# requires (those of Debian 12's packages). The gRPC and protobuf stubs are generated into
# gen/ by protoc with Debian's protoc-gen-go and protoc-gen-go-grpc. vendor/, gen/ and bin/
# are git-ignored and rebuilt on every run. gofmt -l, go vet and go test (the unit tests, no
# daemon needed) must be clean before anything is built.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
gocode=${GOCODE:-/usr/share/gocode/src}
module=example.invalid/gpushare/clients/go

for tool in go gofmt protoc protoc-gen-go protoc-gen-go-grpc; do
  if ! command -v "$tool" >/dev/null; then
    echo "build.sh: $tool is missing: run scripts/setup (or see clients/go/README.md)" >&2
    exit 1
  fi
done

# The modules the client needs, directly or through grpc-go, with the Debian 12 package that
# ships each one and the version go.mod requires.
#   path                        package (bookworm)
modules=(
  google.golang.org/grpc        # golang-google-grpc-dev 1.33.3
  google.golang.org/protobuf    # golang-google-protobuf-dev 1.28.1
  github.com/golang/protobuf    # golang-github-golang-protobuf-1-5-dev 1.5.2
  google.golang.org/genproto    # golang-google-genproto-dev 0.0~git20200413.b5235f6
  golang.org/x/net              # golang-golang-x-net-dev 0.7.0
  golang.org/x/sys              # golang-golang-x-sys-dev 0.3.0
  golang.org/x/text             # golang-golang-x-text-dev 0.7.0
)

# Debian's golang-github-golang-protobuf-1-3-dev satisfies grpc's dependency as well as 1-5-dev,
# but its github.com/golang/protobuf (1.3.5) cannot handle the messages protoc-gen-go 1.28
# generates: the client builds, then panics decoding its first reply. 1.5 is built on
# google.golang.org/protobuf, and its go.mod says so.
if ! grep -q 'google.golang.org/protobuf' "$gocode/github.com/golang/protobuf/go.mod" 2>/dev/null; then
  echo "build.sh: $gocode/github.com/golang/protobuf is not 1.5: install golang-github-golang-protobuf-1-5-dev" >&2
  exit 1
fi

# The stubs.
rm -rf "$here/gen"
protoc -I "$root/proto" \
  --go_out="$here" --go_opt=module="$module" \
  --go_opt="Mgpushare/v1/gpushare.proto=$module/gen/gpushare/v1;gpusharev1" \
  --go-grpc_out="$here" --go-grpc_opt=module="$module" \
  --go-grpc_opt="Mgpushare/v1/gpushare.proto=$module/gen/gpushare/v1;gpusharev1" \
  "$root/proto/gpushare/v1/gpushare.proto"

# vendor/: one symlink per module, and modules.txt naming every package of each (a directory
# holding non-test .go files, outside testdata and outside nested modules).
rm -rf "$here/vendor"
mkdir -p "$here/vendor"
{
  for mod in "${modules[@]}"; do
    src="$gocode/$mod"
    if [ ! -f "$src/go.mod" ]; then
      echo "build.sh: $src/go.mod is missing: install the Debian package named in build.sh" >&2
      exit 1
    fi
    version=$(awk -v m="$mod" '$1 == m { print $2 }' "$here/go.mod")
    if [ -z "$version" ]; then
      echo "build.sh: go.mod does not require $mod" >&2
      exit 1
    fi
    gover=$(awk '$1 == "go" { print $2; exit }' "$src/go.mod")
    mkdir -p "$here/vendor/$(dirname "$mod")"
    ln -s "$src" "$here/vendor/$mod"
    echo "# $mod $version"
    echo "## explicit${gover:+; go $gover}"
    (cd "$src" && find . -name testdata -prune -o -type f -name '*.go' ! -name '*_test.go' -printf '%h\n') |
      sort -u | while read -r dir; do
        # Skip directories inside a nested module (one with its own go.mod).
        nested=false d=$dir
        while [ "$d" != . ]; do
          if [ -f "$src/$d/go.mod" ]; then nested=true; break; fi
          d=$(dirname "$d")
        done
        $nested || echo "$mod${dir#.}"
      done
  done
} > "$here/vendor/modules.txt.tmp"
mv "$here/vendor/modules.txt.tmp" "$here/vendor/modules.txt"

cd "$here"
export GOFLAGS=-mod=vendor GO111MODULE=on GOPROXY=off GOTOOLCHAIN=local
# go needs a build cache; where neither HOME nor XDG_CACHE_HOME says where (some CI
# environments), it is kept here, git-ignored.
if [ -z "${GOCACHE:-}" ] && [ -z "${HOME:-}" ] && [ -z "${XDG_CACHE_HOME:-}" ]; then
  export GOCACHE="$here/.gocache"
fi
unformatted=$(gofmt -l $(find . -path ./vendor -prune -o -path ./gen -prune -o -name '*.go' -print))
if [ -n "$unformatted" ]; then
  echo "build.sh: not gofmt-formatted:" $unformatted >&2
  exit 1
fi
go vet ./...
go test ./...
mkdir -p bin
go build -o bin/ ./cmd/...
echo "build.sh: built $(cd bin && echo *) in $here/bin"
