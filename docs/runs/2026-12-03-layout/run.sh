# Issue 15 (the package layout): ftcli bench on the Llama-3.1-8B shape before (f125b8b, carried as
# .before/before.tar) and after the re-layout, in one call on one H200, interleaved after/before/after so that
# drift shows; then the GPU tests at the new paths. Carry .whl and .before. Output lands in $OUT.
set -o pipefail
source docs/runs/setup.sh
mkdir -p $OUT /tmp/before && tar -xf .before/before.tar -C /tmp/before
bench() {  # $1: label
  timeout 200 ftcli bench --arch llama3-8b --mode ftcli --steps 10 --timeout 180 --cache /tmp/bench --keep \
    --out $OUT/bench-$1.json > $OUT/bench-$1.log 2>&1
  grep -E "tok/s|failed" $OUT/bench-$1.log | sed "s/^/$1: /"
}
install() { python3 -m pip install -q --no-index --no-deps --no-build-isolation -e "$1" >/dev/null 2>&1 || echo "install $1 failed"; }
echo "start $(date +%T)"
bench after1
install /tmp/before; (cd /tmp && python3 -c "import ftcli, os; print('before tree:', os.path.dirname(ftcli.__file__))")
bench before
install .; (cd /tmp && python3 -c "import ftcli, os; print('after tree:', os.path.dirname(ftcli.__file__))")
bench after2
[ $SECONDS -lt 420 ] && timeout $((590 - SECONDS)) pytest -m gpu tests/engine/test_gpu.py tests/kernels/test_gpu.py -q -rs \
  -p no:cacheprovider > $OUT/gpu-tests.log 2>&1
tail -3 $OUT/gpu-tests.log
echo "end $(date +%T)"
