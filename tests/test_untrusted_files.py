"""No code path unpickles: user-supplied files (audio, CSVs, checkpoints' metadata, predictions)
are read with formats that cannot execute code."""
import os
import re

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


UNPICKLING = re.compile(r"\bimport (c?pickle|dill|joblib)\b|allow_pickle\s*=\s*True|pickle\.loads?\(")


def unpickling_files(folders) -> list[str]:
    offenders = []
    for folder in folders:
        for root, _, files in os.walk(folder):
            for name in files:
                if name.endswith(".py"):
                    path = os.path.join(root, name)
                    if UNPICKLING.search(open(path, encoding="utf-8").read()):
                        offenders.append(path)
    return offenders


def test_no_pickle_anywhere_in_the_package_or_scripts():
    assert unpickling_files([os.path.join(REPO, "jaxtag"), os.path.join(REPO, "scripts")]) == []


def test_the_pickle_check_finds_each_way_of_unpickling(tmp_path):
    """The scan above, run over files that do unpickle, finds each of them (and not a clean one)."""
    for i, line in enumerate(["import pickle", "import cpickle as p", "import dill", "np.load(f, allow_pickle = True)",
                              "data = pickle.loads(blob)", "import joblib"]):
        (tmp_path / f"bad{i}.py").write_text(f"x = 1\n{line}\n")
    (tmp_path / "clean.py").write_text("np.load(f, allow_pickle=False)\n")
    found = sorted(os.path.basename(p) for p in unpickling_files([str(tmp_path)]))
    assert found == [f"bad{i}.py" for i in range(6)]
