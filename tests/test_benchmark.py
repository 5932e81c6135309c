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


def test_similarity_benchmark_compares_the_index_with_exact_search():
    """The --similar benchmark on its quick size (a few seconds): both
    indexes are built and searched, exact search finds itself, the IVF index its recall."""
    out = processes.run(["scripts/benchmark.py", "--similar", "--quick"], timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    exact = re.search(r"^exact \(faiss flat\): build [\d.]+ s; query median [\d.]+ ms, 95th percentile [\d.]+ ms; "
                      r"recall@10 against exact ([\d.]+)$", out.stdout, re.M)
    ivf = re.search(r"^IVF-Flat, tuned nprobe: build [\d.]+ s, nprobe (\d+) of (\d+) cells \(recall ([\d.]+) of other "
                    r"tracks' moments, tuned on sampled moments\); query median [\d.]+ ms, 95th percentile [\d.]+ ms; "
                    r"recall@10 against exact ([\d.]+)$", out.stdout, re.M)
    assert exact and float(exact.group(1)) == 1.0, out.stdout
    assert ivf and int(ivf.group(1)) < int(ivf.group(2)) and float(ivf.group(3)) >= 0.97, out.stdout
    assert float(ivf.group(4)) >= 0.9, out.stdout
