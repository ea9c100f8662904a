#!/usr/bin/env bash
# Checks that gpu-bundle/ alone can build essence: a scratch copy of the tree
# is configured and built with the bundle's meson, ninja and pkg-config, and
# the binary must resolve libcjson and OpenBLAS to the bundle's copies.
# Usage: tests/gpu/check_bundle.sh [scratch-dir]   (default: a fresh temp dir)
set -uo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
[ -f gpu-bundle/env.sh ] || { echo "check_bundle: gpu-bundle/ is missing: run tests/gpu/make_bundle.sh" >&2; exit 1; }
scratch=${1:-$(mktemp -d /tmp/essence-bundle-check.XXXXXX)}
mkdir -p "$scratch/src"
fail() { echo "check_bundle: $*" >&2; exit 1; }

# The tree as it would travel: tracked and untracked files git does not ignore.
git ls-files -co --exclude-standard -z | tar -C "$root" --null -T - -cf - | tar -C "$scratch/src" -xf - ||
    fail "could not copy the tree"
cp -r gpu-bundle "$scratch/src/"
cd "$scratch/src"

# Only system directories and the bundle: no pyenv, no user tools.
PATH=/usr/bin:/bin
unset PYTHONPATH PKG_CONFIG_PATH CPATH LIBRARY_PATH LD_LIBRARY_PATH
# shellcheck source=/dev/null
. gpu-bundle/env.sh
for tool in meson ninja pkg-config; do
    case "$(command -v $tool)" in
        "$PWD"/gpu-bundle/*) ;;
        *) fail "$tool resolves to $(command -v $tool), not the bundle" ;;
    esac
done
echo "meson $(meson --version), ninja $(ninja --version), pkg-config $(pkg-config --version) from the bundle"
for pc in libcjson openblas; do
    pkg-config --exists $pc || fail "pkg-config cannot see $pc"
done
meson setup build-bundle -Dcuda=disabled -Dmpi=disabled > setup.log 2>&1 || { tail -n 30 setup.log; fail "meson setup failed"; }
grep -E 'Run-time dependency (libcjson|openblas)|Library (cjson|openblas)' setup.log
grep -q 'Run-time dependency libcjson found: YES' setup.log || fail "meson did not find the bundle's libcjson"
grep -q 'Run-time dependency openblas found: YES' setup.log || grep -q 'Library openblas found: YES' setup.log ||
    fail "meson did not find OpenBLAS"
ninja -C build-bundle essence > build.log 2>&1 || { tail -n 30 build.log; fail "ninja failed"; }
deps=$(ldd build-bundle/essence)  # whole, not piped into grep -q (SIGPIPE under pipefail)
grep -E 'cjson|openblas|gfortran' <<< "$deps"
for lib in libcjson.so.1 libopenblas.so.0; do
    grep -q "$lib => $PWD/gpu-bundle/lib/" <<< "$deps" || fail "$lib does not load from the bundle"
done
build-bundle/essence --help > /dev/null 2>&1 || fail "the bundle-built essence does not run"

# This machine's own OpenBLAS satisfied meson.build's first look-up; a bare
# machine falls through to dependency('openblas'): check that path alone.
mkdir -p blasprobe
cat > blasprobe/meson.build <<'MESON'
project('blasprobe', 'c')
executable('probe', 'probe.c', dependencies: [dependency('openblas', method: 'pkg-config'),
  dependency('libcjson', method: 'pkg-config')])
MESON
cat > blasprobe/probe.c <<'C'
#include <cblas.h>
#include <cjson/cJSON.h>
#include <stdio.h>
int main(void) {
    float a[4] = {1, 2, 3, 4}, b[4] = {1, 0, 0, 1}, c[4] = {0};
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, 2, 2, 2, 1, a, 2, b, 2, 0, c, 2);
    cJSON *j = cJSON_Parse("[1]");
    int ok = j && c[0] == 1 && c[3] == 4;
    cJSON_Delete(j);
    puts(ok ? "ok" : "wrong");
    return !ok;
}
C
(meson setup blasprobe/build blasprobe && ninja -C blasprobe/build) > probe.log 2>&1 ||
    { tail -n 20 probe.log; fail "a project using only the bundle's .pc files does not build"; }
blasprobe/build/probe > /dev/null || fail "cblas_sgemm from the bundle gave a wrong result"
grep -q "libopenblas.so.0 => $PWD/gpu-bundle/lib/" <<< "$(ldd blasprobe/build/probe)" ||
    fail "the probe did not load the bundle's OpenBLAS"
echo "pkg-config path: openblas and libcjson from the bundle's .pc files link and run"
[ -n "${1:-}" ] || rm -rf "$scratch"
echo "check_bundle: ok"
