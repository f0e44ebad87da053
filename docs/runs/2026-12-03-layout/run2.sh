# Second call: the before tree (f125b8b) installed non-editable into its own folder, first on PYTHONPATH, so
# that none of the new tree's modules can be picked up; interleaved before/after/before on the same checkpoint.
set -o pipefail
source docs/runs/setup.sh
mkdir -p $OUT /tmp/before && tar -xf .before/before.tar -C /tmp/before
python3 -m pip install -q --no-index --no-deps --no-build-isolation --target /tmp/before-site /tmp/before >/dev/null 2>&1 \
  || echo "before install failed"
bench() {  # $1: label, $2: PYTHONPATH
  (cd /tmp && PYTHONPATH=$2 timeout 200 python3 -m ftcli bench --arch llama3-8b --mode ftcli --steps 10 --timeout 180 \
    --cache /tmp/bench --keep --out $OUT/bench-$1.json > $OUT/bench-$1.log 2>&1)
  (cd /tmp && PYTHONPATH=$2 python3 -c "import ftcli.cli.cmd_bench as c; print(\"$1:\", c.__file__)")
  grep -E "tok/s|failed" $OUT/bench-$1.log | sed "s/^/$1: /"
}
echo "start $(date +%T)"
bench before1 /tmp/before-site:/tmp/site
bench after3 /tmp/site
bench before2 /tmp/before-site:/tmp/site
echo "end $(date +%T)"
