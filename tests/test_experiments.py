"""scripts/experiments.py: the results table is built from the runs' metrics, value for value."""
import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# In a subprocess: the script defines absl flags that other modules may also define.
BUILD = r'''
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location("experiments", "scripts/experiments.py")
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
print(json.dumps(module.results_table(json.loads(sys.stdin.read()))))
'''


def _record(config, auc, seconds):
    tags = ["Emotion-Happy", "Emotion-Sad"]
    metrics = {"tags": tags, "mean_roc_auc": auc, "mean_pr_auc": auc - 0.1, "mean_f1": 0.25, "mean_maa": 0.7,
               "mean_baseline_maa": 0.75, "roc_auc": {"Emotion-Happy": auc + 0.05, "Emotion-Sad": None},
               "categories": {"emotion": {"num_tags": 2, "mean_roc_auc": auc, "mean_pr_auc": auc - 0.1,
                                          "mean_f1": 0.25, "mean_maa": 0.7, "mean_baseline_maa": 0.75}}}
    return {"config": config, "model": config, "epochs": 3, "train_and_eval_seconds": seconds, "metrics": metrics}


def test_results_table_reports_each_runs_metrics():
    records = {"paper_cnn": _record("cnn", 0.61, 120.0), "resnet_lstm": _record("resnet_lstm", 0.88, 300.0)}
    out = subprocess.run([sys.executable, "-c", BUILD], input=json.dumps(records), cwd=REPO, capture_output=True,
                         text=True, timeout=300, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    assert out.returncode == 0, out.stderr[-2000:]
    table = json.loads(out.stdout.strip().splitlines()[-1]).splitlines()
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.strip("|").split("|")]
            for line in table if "| configs/" in line}
    assert rows["paper_cnn"][1:] == ["configs/cnn.py", "cnn", "0.610", "0.510", "0.250", "0.700", "0.750", "3", "2.0 min"]
    assert rows["resnet_lstm"][3] == "0.880" and rows["resnet_lstm"][-1] == "5.0 min"
    assert "| paper_cnn | emotion | 2 | 0.610 | 0.510 | 0.250 | 0.700 | 0.750 |" in table
    assert "| Emotion-Happy | 0.660 | 0.930 |" in table and "| Emotion-Sad | n/a | n/a |" in table
