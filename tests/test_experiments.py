"""docs/results.md (scripts/experiments.py): the results table is built from the runs' metrics,
value for value."""
from jaxtag.evaluation.report import results_table


def _record(config, auc, seconds):
    tags = ["Emotion-Happy", "Emotion-Sad"]
    metrics = {"tags": tags, "mean_roc_auc": auc, "mean_pr_auc": auc - 0.1, "mean_f1": 0.25, "mean_maa": 0.7,
               "mean_baseline_maa": 0.75, "roc_auc": {"Emotion-Happy": auc + 0.05, "Emotion-Sad": None},
               "categories": {"emotion": {"num_tags": 2, "mean_roc_auc": auc, "mean_pr_auc": auc - 0.1,
                                          "mean_f1": 0.25, "mean_maa": 0.7, "mean_baseline_maa": 0.75}},
               "checkpoint": {"epoch": 2, "which": "best", "validation": {"mean_roc_auc": auc + 0.02}}}
    return {"config": config, "model": config, "epochs": 3, "train_and_eval_seconds": seconds, "metrics": metrics}


def test_results_table_reports_each_runs_metrics():
    records = {"paper_cnn": _record("cnn", 0.61, 120.0), "resnet_lstm": _record("resnet_lstm", 0.88, 300.0)}
    table = results_table(records).splitlines()
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.strip("|").split("|")]
            for line in table if "| configs/" in line}
    assert rows["paper_cnn"][1:] == ["configs/cnn.py", "cnn", "0.610", "0.510", "0.250", "0.700", "0.750", "0.630", "0",
                                     "3", "2.0 min"]
    assert rows["resnet_lstm"][3] == "0.880" and rows["resnet_lstm"][-1] == "5.0 min"
    assert "| paper_cnn | emotion | 2 | 0.610 | 0.510 | 0.250 | 0.700 | 0.750 |" in table
    assert "| Emotion-Happy | 0.660 | 0.930 |" in table and "| Emotion-Sad | n/a | n/a |" in table


def test_a_record_without_validation_scores_shows_na():
    record = _record("cnn", 0.61, 60.0)
    del record["metrics"]["checkpoint"]   # records written before the validation score was kept
    row = next(l for l in results_table({"paper_cnn": record}).splitlines() if l.startswith("| paper_cnn | configs/"))
    assert [c.strip() for c in row.strip("|").split("|")][8] == "n/a"


def test_experiments_on_several_splits_show_mean_and_sample_std():
    runs = [_record("musicnn_lstm", auc, 60.0)["metrics"] for auc in (0.80, 0.86, 0.83)]
    record = {**_record("musicnn_lstm", 0.80, 180.0), "runs": runs, "split_seeds": [0, 1, 2]}
    table = results_table({"musicnn_lstm": record, "paper_cnn": _record("cnn", 0.61, 60.0)}).splitlines()
    row = [c.strip() for c in next(l for l in table if l.startswith("| musicnn_lstm | configs/")).strip("|").split("|")]
    # ROC-AUC 0.80, 0.86, 0.83: mean 0.83, sample std 0.03; PR-AUC 0.1 lower; F1 constant.
    assert row[3:10] == ["0.830 ± 0.030", "0.730 ± 0.030", "0.250 ± 0.000", "0.700 ± 0.000", "0.750 ± 0.000",
                         "0.850 ± 0.030", "0, 1, 2"]
    # The per-category and per-tag tables show the first split.
    assert "| musicnn_lstm | emotion | 2 | 0.800 | 0.700 | 0.250 | 0.700 | 0.750 |" in table
