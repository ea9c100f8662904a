"""Locates the CUDA libraries the CUDA backend links, for cuda/meson.build.

Looks in the CUDA toolkit first, then in the system library folders, then in
the nvidia/* wheels of a Python environment (PyTorch installs cuDNN, NCCL and
cuBLAS there, headers included). The cuDNN frontend's headers come from the
nvidia-cudnn-frontend wheel (site-packages/include) or a folder on CPATH (the
GPU bundle's include/). Prints one `kind name value` line per find:
  lib <name> <path of the shared library>
  inc <header> <folder holding it>
A library or header not found prints nothing; the build decides what it needs.
"""
import glob
import os
import site
import sys

LIBS = ["cudart", "cublasLt", "cudnn", "nccl"]
HEADERS = ["cuda_runtime.h", "cublasLt.h", "cudnn.h", "nccl.h", "cudnn_frontend.h"]


def site_paths():
    paths = list(sys.path)
    try:
        paths += site.getsitepackages() + [site.getusersitepackages()]
    except AttributeError:  # virtualenvs built without the site helpers
        pass
    return paths


def wheel_roots():
    """nvidia/<package>/ and nvidia/cu<NN>/ folders of every site-packages."""
    paths = site_paths()
    roots = []
    for p in paths:
        for root in sorted(glob.glob(os.path.join(p, "nvidia", "*"))):
            if os.path.isdir(root) and root not in roots:
                roots.append(root)
    return roots


def find_lib(name, dirs):
    for d in dirs:
        exact = os.path.join(d, "lib%s.so" % name)
        if os.path.exists(exact):
            return exact
        # Wheels ship only the versioned name (libcudnn.so.9); take the newest.
        versioned = sorted(glob.glob(exact + ".*"), key=lambda p: (len(p), p))
        if versioned:
            return versioned[-1]
    return None


def main():
    cuda_home = sys.argv[1] if len(sys.argv) > 1 else "/usr/local/cuda"
    roots = wheel_roots()
    lib_dirs = [os.path.join(cuda_home, s) for s in ("lib64", "lib", "targets/x86_64-linux/lib")]
    lib_dirs += ["/usr/lib/x86_64-linux-gnu", "/usr/lib64", "/usr/lib"]
    lib_dirs += [os.path.join(r, "lib") for r in roots]
    inc_dirs = [os.path.join(cuda_home, "include"), "/usr/include"]
    inc_dirs += [os.path.join(r, "include") for r in roots]
    inc_dirs += [os.path.join(p, "include") for p in site_paths()]
    inc_dirs += [d for d in os.environ.get("CPATH", "").split(os.pathsep) if d]
    for name in LIBS:
        path = find_lib(name, lib_dirs)
        if path:
            print("lib", name, path)
    for header in HEADERS:
        for d in inc_dirs:
            if os.path.exists(os.path.join(d, header)):
                print("inc", header, d)
                break


if __name__ == "__main__":
    main()
