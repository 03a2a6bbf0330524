#!/bin/sh
# Run tests against softguard/_hotpath.c (and _link.c) built with AddressSanitizer and UBSan (issue 13,
# decision 0034): a read out of bounds or of freed memory, or undefined behaviour
# (a signed overflow), fails the run where a normal build would pass by luck.
#
#   tests/tools/asan_hotpath.sh [pytest arguments]   (default: the compiled path's tests)
#   HOTPATH_C=/path/to/other/_hotpath.c tests/tools/asan_hotpath.sh ...   (that source)
#
# The module is compiled into a scratch directory and imported as softguard._hotpath
# before softguard loads it; PYTHONMALLOC=malloc lets ASan see each bytes object's bounds.
set -eu
root=$(cd "$(dirname "$0")/../.." && pwd)
py="$root/.venv/bin/python"
scratch=${TMPDIR:-/tmp}/softguard-asan-$$
mkdir -p "$scratch"
trap 'rm -rf "$scratch"' EXIT
suffix=$("$py" -c 'import sysconfig; print(sysconfig.get_config_var("EXT_SUFFIX"))')
include=$("$py" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
so="$scratch/_hotpath$suffix"
${CC:-gcc} -shared -fPIC -O1 -g -fno-omit-frame-pointer \
    -fsanitize=address,undefined -fno-sanitize-recover=undefined \
    -I"$include" -I"$root/softguard" "${HOTPATH_C:-$root/softguard/_hotpath.c}" \
    "$root/softguard/_link.c" -o "$so"
preload=$(${CC:-gcc} -print-file-name=libasan.so)
[ $# -gt 0 ] || set -- tests/proxy/test_hotpath_fuzz.py tests/proxy/test_hotpath.py tests/sql/test_shape_numbers.py \
    tests/proxy/test_link.py
cd "$root"
LD_PRELOAD="$preload" PYTHONMALLOC=malloc \
ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
HOTPATH_SO="$so" "$py" -c '
import importlib.util, os, sys
import pytest
spec = importlib.util.spec_from_file_location("softguard._hotpath", os.environ["HOTPATH_SO"])
module = importlib.util.module_from_spec(spec)
sys.modules["softguard._hotpath"] = module
spec.loader.exec_module(module)
print("softguard._hotpath from", module.__file__)
# --capture=sys: a sanitizer report (written to fd 2) reaches the terminal.
sys.exit(pytest.main(["-q", "-p", "no:cacheprovider", "-n", "0", "--capture=sys", *sys.argv[1:]]))
' "$@"
