#!/usr/bin/env bash
# Makes gpu-bundle/: what a bare GPU machine (no internet, no package manager)
# may lack to build essence: meson, ninja and pkg-config (Python wheels), and
# libcjson and the OpenMP build of OpenBLAS with their headers, copied from
# this machine's Debian packages, with .pc files that locate themselves; and
# the cuDNN frontend's headers (the nvidia-cudnn-frontend wheel, which
# tools/setup.sh installs) for the cuDNN attention.
# gpu-bundle/env.sh puts it all on PATH and the compiler/linker/loader paths.
# Then it checks that the bundle alone configures and builds a scratch copy.
#
# Usage: tests/gpu/make_bundle.sh [--no-check]
# Needs: pip (PyPI reachable), libcjson-dev, libopenblas0-openmp + its -dev.
# No symbolic links: the bundle travels as plain files.
set -euo pipefail
cd "$(dirname "$0")/../.."
B=gpu-bundle
MESON_VERSION=1.0.1  # the meson this project is developed with
MA=$(gcc -print-multiarch 2>/dev/null || echo x86_64-linux-gnu)
OBLAS_LIB=/usr/lib/$MA/openblas-openmp
OBLAS_INC=/usr/include/$MA/openblas-openmp
CJSON_LIB=$(ls /usr/lib/"$MA"/libcjson.so.1 2>/dev/null || true)

die() { echo "make_bundle: $*" >&2; exit 1; }
[ -n "$CJSON_LIB" ] && [ -f /usr/include/cjson/cJSON.h ] || die "libcjson (libcjson-dev) is not installed here"
[ -f "$OBLAS_LIB/libopenblas.so.0" ] && [ -f "$OBLAS_INC/cblas.h" ] ||
    die "the OpenMP build of OpenBLAS (libopenblas-openmp-dev) is not installed here"

rm -rf "$B"
mkdir -p "$B"/{bin,lib,include/cjson,include/openblas,pkgconfig}

echo "== meson $MESON_VERSION, ninja, pkgconf (pip --target $B/py)"
python3 -m pip install --quiet --disable-pip-version-check --no-compile --target "$B/py" \
    "meson==$MESON_VERSION" ninja pkgconf
# pip's launchers name this machine's Python; plain sh wrappers replace them.
[ -x "$B/py/bin/ninja" ] || die "the ninja wheel carried no binary"
[ -x "$B/py/pkgconf/.bin/pkgconf" ] || die "the pkgconf wheel carried no binary"
cp "$B/py/bin/ninja" "$B/bin/ninja"
rm -rf "$B/py/bin"
cat > "$B/bin/meson" <<'EOF'
#!/bin/sh
# meson from the bundle's wheels, on whatever python3 this machine has.
here=$(cd "$(dirname "$0")/.." && pwd)
PYTHONPATH="$here/py${PYTHONPATH:+:$PYTHONPATH}" exec python3 -m mesonbuild.mesonmain "$@"
EOF
cat > "$B/bin/pkg-config" <<'EOF'
#!/bin/sh
exec "$(cd "$(dirname "$0")/.." && pwd)/py/pkgconf/.bin/pkgconf" "$@"
EOF
chmod +x "$B/bin/meson" "$B/bin/pkg-config"

echo "== libcjson, OpenBLAS (OpenMP) and the runtime libraries OpenBLAS needs"
cp /usr/include/cjson/cJSON.h "$B/include/cjson/"
cp "$CJSON_LIB" "$B/lib/libcjson.so.1"
cp "$OBLAS_INC"/{cblas.h,f77blas.h,openblas_config.h} "$B/include/openblas/"
cp "$(readlink -f "$OBLAS_LIB/libopenblas.so.0")" "$B/lib/libopenblas.so.0"
# libgfortran/libquadmath come with OpenBLAS, not with a C compiler.
for dep in libgfortran.so.5 libquadmath.so.0; do
    path=$(ldd "$OBLAS_LIB/libopenblas.so.0" | awk -v d="$dep" '$1 == d {print $3}')
    [ -n "$path" ] || die "libopenblas.so.0 does not link $dep here"
    cp "$(readlink -f "$path")" "$B/lib/$dep"
done
# The link-time names as GNU ld scripts instead of symbolic links.
echo 'INPUT(libcjson.so.1)' > "$B/lib/libcjson.so"
echo 'INPUT(libopenblas.so.0)' > "$B/lib/libopenblas.so"

cjson_version=$(dpkg-query -W -f '${Version}' libcjson1 2>/dev/null | cut -d- -f1)
oblas_version=$(dpkg-query -W -f '${Version}' libopenblas0-openmp 2>/dev/null | cut -d+ -f1)
cat > "$B/pkgconfig/libcjson.pc" <<EOF
prefix=\${pcfiledir}/..
libdir=\${prefix}/lib
includedir=\${prefix}/include

Name: libcjson
Description: cJSON (bundled copy)
Version: ${cjson_version:-1.7}
Libs: -L\${libdir} -lcjson
Cflags: -I\${includedir} -I\${includedir}/cjson
EOF
cat > "$B/pkgconfig/openblas.pc" <<EOF
prefix=\${pcfiledir}/..
libdir=\${prefix}/lib
includedir=\${prefix}/include/openblas

Name: openblas
Description: OpenBLAS, OpenMP build (bundled copy)
Version: ${oblas_version:-0.3}
Libs: -L\${libdir} -lopenblas
Cflags: -I\${includedir}
EOF
echo "== cuDNN frontend headers"
FE_INC=$(python3 cuda/find_cuda_libs.py | awk '$1 == "inc" && $2 == "cudnn_frontend.h" {print $3}')
[ -n "$FE_INC" ] || die "no cudnn_frontend.h here (tools/setup.sh installs nvidia-cudnn-frontend)"
cp -r "$FE_INC"/cudnn_frontend "$FE_INC"/cudnn_frontend*.h "$FE_INC"/cudnn_backend_base.h "$B/include/"
fe_version=$(python3 -c 'import importlib.metadata as m; print(m.version("nvidia-cudnn-frontend"))' 2>/dev/null || true)

cat > "$B/env.sh" <<'EOF'
# Source this: puts gpu-bundle's tools first on PATH and its libraries and
# headers on the compiler, linker and loader paths. System ones still work.
_esb=$(cd "$(dirname "${BASH_SOURCE[0]:-$0}")" && pwd)
export PATH="$_esb/bin:$PATH"
export PYTHONPATH="$_esb/py${PYTHONPATH:+:$PYTHONPATH}"
export PKG_CONFIG="$_esb/bin/pkg-config"
export PKG_CONFIG_PATH="$_esb/pkgconfig:/usr/lib/x86_64-linux-gnu/pkgconfig:/usr/lib64/pkgconfig:/usr/lib/pkgconfig:/usr/share/pkgconfig${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}"
export CPATH="$_esb/include:$_esb/include/openblas${CPATH:+:$CPATH}"
export LIBRARY_PATH="$_esb/lib${LIBRARY_PATH:+:$LIBRARY_PATH}"
export LD_LIBRARY_PATH="$_esb/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export ESSENCE_GPU_BUNDLE="$_esb"
unset _esb
EOF

{
    echo "made $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(uname -m)"
    echo "meson $MESON_VERSION, ninja $("$B/bin/ninja" --version), pkgconf $("$B/bin/pkg-config" --version)"
    echo "libcjson ${cjson_version:-?}, openblas-openmp ${oblas_version:-?}, cudnn-frontend ${fe_version:-?}"
} > "$B/VERSIONS"
echo "== $(du -sm "$B" | cut -f1) MiB in $B ($(find "$B" -type f | wc -l) files)"
[ "$(du -sm "$B" | cut -f1)" -lt 60 ] || die "$B is over 60 MiB: too big to carry"

[ "${1:-}" = "--no-check" ] && exit 0
bash tests/gpu/check_bundle.sh
