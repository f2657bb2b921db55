#!/usr/bin/env bash
# Once, on the CPU machine, before a GPU call (README, "On a GPU"): what the device machine cannot fetch, in .gpu/
# (ignored by git through .git/info/exclude; never committed): ART and torchattacks as wheels for its Python 3.12,
# and a copy of the shared CIFAR-10 JPEG archive. Then: run(command="bash benchmarks/gpu/run.sh", carry=[".gpu"]).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$root"
grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude
mkdir -p .gpu/whl .gpu/data
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux2014_x86_64 --platform any -d .gpu/whl \
  adversarial-robustness-toolbox==1.20.1 torchattacks==3.5.1
data=${1:-../shared/data/cifar10-jpeg.tar.gz}
cp "$data" .gpu/data/cifar10-jpeg.tar.gz
du -sh .gpu
