#!/usr/bin/env bash
# The whole GPU job as one call (README, "On a GPU"): about 8 minutes on one H200, every stage with its own time
# budget, so a slow stage is cut (and said so) and the rest still runs. On the device machine, from the repo root:
#   bash benchmarks/gpu/run.sh                 # $OUT: where the packed results go (the device tool sets it)
# On a CPU, the same script on tiny overlays of the same suites (benchmarks/gpu/dry-*.toml), as CI runs it:
#   OUT=/tmp/gpu-dry PYTHON=.venv/bin/python bash benchmarks/gpu/run.sh --dry-run
# Travels with the checkout (prepare once on the CPU machine: bash benchmarks/gpu/prepare.sh): .gpu/whl (ART and
# torchattacks wheels, installed without dependencies: the device machine has no registry) and .gpu/data (the
# CIFAR-10 JPEG copy: nothing outside the device machine can be reached); name .gpu in `carry`.
# Stages: install, cuda, paper and paper-code (the two suites over one store, each its own stage so that a cut
# paper-code keeps paper's results; their base recipes differ, so they share no node), report (paper-code
# --against paper), perf (--device cuda), pack (at most 8 files of at most 16 MiB, one folder deep, under $OUT).
set -u
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
cd "$root"
dry=0
[ "${1:-}" = "--dry-run" ] && dry=1
OUT=${OUT:?set OUT to the folder the results go to}
PY=${PYTHON:-python3}
work=${GPU_WORK:-/tmp/gpu-job}
rm -rf "$work" && mkdir -p "$work" "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$work/site:$root${PYTHONPATH:+:$PYTHONPATH}"
log="$OUT/log.txt"
: > "$log"
stages="$OUT/stages.tsv"
printf 'stage\tbudget_s\tseconds\tstatus\n' > "$stages"

# Budgets (seconds), each overridable for a test: GPU_BUDGET_<STAGE>=N.
# About 8 minutes in all: the device tool's command limit is 10, and a lent GPU has 15 with its start.
declare -A budget=([install]=30 [cuda]=30 [paper]=210 [paper-code]=120 [report]=30 [perf]=60 [pack]=30)
for name in "${!budget[@]}"; do
  var="GPU_BUDGET_${name^^}"; var=${var//-/_}
  [ -n "${!var:-}" ] && budget[$name]=${!var}
done

# stage NAME CMD...: runs CMD under NAME's budget (SIGINT first: the benchmark says what it kept), logs it, and
# records seconds and status (ok, cut after N s, failed rc, skipped: why).
stage() {
  local name=$1; shift
  local started=$SECONDS status
  echo "=== $name (budget ${budget[$name]} s): $*" | tee -a "$log"
  timeout --signal=INT --kill-after=15 "${budget[$name]}" "$@" >> "$log" 2>&1
  local rc=$?
  if [ $rc -eq 0 ]; then status=ok
  elif [ $rc -eq 124 ] || [ $rc -eq 130 ] || [ $rc -eq 137 ]; then status="cut after ${budget[$name]} s"
  else status="failed (exit $rc)"; fi
  printf '%s\t%s\t%s\t%s\n' "$name" "${budget[$name]}" "$((SECONDS - started))" "$status" >> "$stages"
  echo "=== $name: $status in $((SECONDS - started)) s" | tee -a "$log"
  [ "$status" = ok ]
}
skip() {
  printf '%s\t%s\t0\tskipped: %s\n' "$1" "${budget[$1]}" "$2" >> "$stages"
  echo "=== $1: skipped: $2" | tee -a "$log"
}

if [ $dry -eq 1 ]; then
  declare -A suite=([paper]=benchmarks/gpu/dry-paper.toml [paper-code]=benchmarks/gpu/dry-paper-code.toml)
  device=cpu; data=(); perf_args=(--device cpu --arch small-cnn --images 8)
else
  declare -A suite=([paper]=suites/paper.toml [paper-code]=suites/paper-code.toml)
  device=cuda; data=(--data-dir .gpu/data/cifar10-jpeg.tar.gz); perf_args=(--device cuda --arch resnet18-cifar --images 1000)
fi

if ls .gpu/whl/*.whl > /dev/null 2>&1; then
  stage install "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$work/site" .gpu/whl/*.whl
elif [ $dry -eq 1 ]; then
  skip install "dry run: the toolkits are already installed here"
else
  skip install "no wheels in .gpu/whl (run benchmarks/gpu/prepare.sh on the CPU machine)"
fi
if [ $dry -eq 1 ]; then
  skip cuda "dry run on the CPU"
else
  stage cuda "$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; x = torch.randn(4096, 4096, device='cuda'); torch.cuda.synchronize(); print(torch.cuda.get_device_name(), torch.__version__, float((x @ x).sum()))" \
    || echo "=== cuda does not work: the suites run anyway and say which device they ran on" | tee -a "$log"
fi
for name in paper paper-code; do
  stage "$name" "$PY" -m benchmark run "${suite[$name]}" --device "$device" "${data[@]}" --out "$work/runs/$name" \
    --store "$work/runs/artefacts"
done
if [ -f "$work/runs/paper/results.json" ] && [ -f "$work/runs/paper-code/results.json" ]; then
  stage report "$PY" -m benchmark report "$work/runs/paper-code" --against "$work/runs/paper"
else
  skip report "a suite has no results.json (its stage was cut or failed)"
fi
stage perf "$PY" -m benchmark perf "${perf_args[@]}" --out "$work/perf.md"

# Pack: each run folder (results.json, examples.csv, report.md, run.json, figures/) as one .tar.gz, the perf table,
# the log and the stage table: at most 8 files, none over 16 MiB, one folder deep.
pack() {
  for suite in paper paper-code; do
    [ -d "$work/runs/$suite" ] && tar -czf "$OUT/$suite.tar.gz" -C "$work/runs" \
      --exclude=artefacts "$suite"
  done
  [ -f "$work/perf.md" ] && cp "$work/perf.md" "$OUT/perf.md"
  "$PY" -c "import platform, torch; print(platform.platform()); print('torch', torch.__version__); print(torch.cuda.get_device_name() if torch.cuda.is_available() else 'no CUDA device')" > "$OUT/machine.txt" 2>&1
  command -v nvidia-smi > /dev/null && nvidia-smi >> "$OUT/machine.txt" 2>&1
  for f in "$OUT"/*; do
    [ "$(stat -c %s "$f")" -le $((16 * 1024 * 1024)) ] || { echo "$f is over 16 MiB"; return 1; }
  done
  return 0
}
started=$SECONDS
if pack >> "$log" 2>&1; then status=ok; else status="failed (pack)"; fi
printf 'pack\t%s\t%s\t%s\n' "${budget[pack]}" "$((SECONDS - started))" "$status" >> "$stages"
echo "stages:" && column -t -s $'\t' "$stages" | tee -a "$log"
! cut -f4 "$stages" | grep -q '^failed' # a cut stage is said so above; only a failed one fails the call
