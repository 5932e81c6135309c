"""scripts/benchmark.py runs and prints what it promises (tiny sizes; speed is not asserted)."""
import re

import pytest

from helpers import processes


@pytest.mark.slow
def test_benchmark_prints_its_table_and_ends_with_the_cnn_lstm_train_rate(pretrained_cache):
    out = processes.run(["scripts/benchmark.py", "--quick", "--repeats=1", "--nopipeline", "--musicnn"], timeout=900,
                        JAXTAG_CACHE=pretrained_cache)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.strip().splitlines()
    assert lines[0].startswith("JAX ") and "devices:" in lines[0]
    assert re.match(r"matmul peak \(2048x2048 f32, XLA\): [\d.]+ GFLOP/s", lines[1])
    rows = {}
    for name in ("cnn", "cnn_lstm"):
        row = next(l for l in lines if l.startswith(f"{name} ") and "padded to" in l)
        rows[name] = [float(v) for v in row.split()[1:7] if not v.endswith("%")]
        assert len(rows[name]) == 4 and all(v > 0 for v in rows[name])  # train, GFLOP/s, infer, GFLOP/s
        compiled = re.search(rf"^{name}: compilations for an epoch of 8 tracks of random lengths: (\d+) \((\d+) length buckets\)",
                             out.stdout, re.M)
        assert compiled and int(compiled.group(1)) == int(compiled.group(2)) > 1
    for kind in ("frozen trunk", "fine-tuned", "fine-tuned, XLA's own kernel gradients"):
        rate = re.search(rf"^musicnn_lstm train step, {re.escape(kind)}: ([\d.]+) windows/s", out.stdout, re.M)
        assert rate and float(rate.group(1)) > 0, kind
    final = re.fullmatch(r"cnn_lstm train windows/s: ([\d.]+)", lines[-1])
    assert final and float(final.group(1)) == rows["cnn_lstm"][0]
