"""python -m jaxtag.report: Figure-4 style bars and a markdown table from runs' test metrics."""
import json
import os

from helpers import processes


def test_report_writes_picture_and_table_from_the_metrics(trained, tmp_path):
    _, workdir, _ = trained
    out = tmp_path / "report.png"
    result = processes.run_cli("jaxtag.report", f"--workdirs={workdir}", f"--out={out}", timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert out.stat().st_size > 10_000 and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with open(os.path.join(workdir, "eval", "test_metrics.json")) as f:
        metrics = json.load(f)
    table = (tmp_path / "report.md").read_text().splitlines()
    assert len(table) == 2 + len(metrics["tags"]) + 1
    sad = next(line for line in table if line.startswith("| Emotion-Sad |"))
    cells = [c.strip() for c in sad.strip("|").split("|")]
    assert cells[1] == f"{metrics['maa']['Emotion-Sad']:.3f}"
    assert cells[2] == f"{metrics['baseline_maa']['Emotion-Sad']:.3f}"
    assert cells[3] == f"{metrics['roc_auc']['Emotion-Sad']:.3f}"


def test_report_puts_every_named_run_side_by_side(trained, tmp_path):
    """`--workdirs a b` (the documented form) reports both runs, not only the first."""
    _, workdir, _ = trained
    other = tmp_path / "other_run"
    os.makedirs(other / "eval")
    with open(os.path.join(workdir, "eval", "test_metrics.json")) as f:
        metrics = json.load(f)
    metrics["maa"]["Emotion-Sad"] = 0.123
    (other / "eval" / "test_metrics.json").write_text(json.dumps(metrics))
    out = tmp_path / "two.png"
    result = processes.run_cli("jaxtag.report", "--workdirs", workdir, str(other), f"--out={out}", timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    table = (tmp_path / "two.md").read_text().splitlines()
    assert table[0].startswith(f"| tag | {os.path.basename(workdir)} MAA | other_run MAA | all-negative MAA |")
    sad = [c.strip() for c in next(l for l in table if l.startswith("| Emotion-Sad |")).strip("|").split("|")]
    assert sad[2] == "0.123" and sad[1] != "0.123"
