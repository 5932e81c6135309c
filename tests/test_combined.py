"""The combined pretrained model "musicnn": musicnn-msd's and musicnn-mtt's tags in one vocabulary
(the merge map), merged scores, its identity, and a library reusing what either network analysed
before."""
import json
import os
import pathlib

import numpy as np
import pytest
import soundfile as sf

from helpers import library_state, processes
from jaxtag.data.features import mel_spectrogram
from jaxtag.tagging import decisions
from jaxtag.library.run import LibraryOptions, tag_library
from jaxtag.tagging.tagger import CombinedTagger, Tagger
from jaxtag.tagging.vocabulary import MUSICNN_GROUPS, MUSICNN_MEMBERS, Vocabulary, musicnn_vocabulary

REFERENCE = pathlib.Path(__file__).resolve().parent / "data" / "musicnn_reference.npz"


@pytest.fixture(scope="module")
def model_tags():
    """The two models' tags, as their shipped reference statistics name them (no weights needed)."""
    return {m: decisions.load_reference(m)["tags"] for m in MUSICNN_MEMBERS}


@pytest.fixture(scope="module")
def combined(pretrained_cache):
    return Tagger.pretrained("musicnn", cache_dir=pretrained_cache, chunk_windows=4)


@pytest.fixture(scope="module")
def clip():
    with np.load(REFERENCE, allow_pickle=False) as npz:
        return npz["clip"].astype(np.float32), int(npz["sr"])


def test_the_merge_map_covers_every_tag_of_both_models_exactly_once(model_tags):
    vocab = musicnn_vocabulary(model_tags)
    members = [m for group in vocab.groups for m in group]
    assert sorted(members) == sorted((m, t) for m in MUSICNN_MEMBERS for t in model_tags[m])
    assert len(members) == len(set(members)) == 100
    assert len(vocab.tags) == len(set(vocab.tags)) == 100 - sum(len(g) - 1 for g in MUSICNN_GROUPS.values()) == 73
    assert set(vocab.members_of("female voice")) == {
        ("musicnn-msd", "female vocalists"), ("musicnn-msd", "female vocalist"), ("musicnn-mtt", "female"),
        ("musicnn-mtt", "woman"), ("musicnn-mtt", "female vocal"), ("musicnn-mtt", "female voice")}
    for shared in ("rock", "pop", "dance", "metal", "country", "ambient", "guitar", "electronic"):
        assert {m for m, _ in vocab.members_of(shared)} == set(MUSICNN_MEMBERS)
    # Moods stay moods, with their own names; subgenres keep theirs.
    from jaxtag.data.tags import MUSICNN_MSD_MOODS
    assert MUSICNN_MSD_MOODS <= set(vocab.tags)
    assert {"electro", "heavy metal", "House", "chillout"} <= set(vocab.tags)
    # A map that leaves a tag out, names one twice, or names one no model has, is refused.
    for broken in ({k: v for k, v in MUSICNN_GROUPS.items() if k != "beat"} | {"beats": (("musicnn-mtt", "beat"),)},
                   MUSICNN_GROUPS | {"voices": (("musicnn-mtt", "voice"),)},
                   MUSICNN_GROUPS | {"harp": (("musicnn-mtt", "harp"), ("musicnn-msd", "harp"))}):
        with pytest.raises(ValueError):
            Vocabulary.build(model_tags, broken)


def test_merged_scores_are_the_max_of_their_members(combined, clip):
    y, sr = clip
    taggram = combined.tag(y, sr=sr)
    msd, mtt = combined.members
    own = {m.model_name: m.tag(y, sr=sr) for m in (msd, mtt)}
    assert taggram.scores.shape == (3, 73) and taggram.model == "musicnn" and taggram.tags == list(combined.vocabulary.tags)
    for k, tag in enumerate(taggram.tags):
        members = combined.vocabulary.members_of(tag)
        expected = np.max([own[m].scores[:, own[m].tags.index(t)] for m, t in members], axis=0)
        np.testing.assert_array_equal(taggram.scores[:, k], expected)
    # Embeddings: the two networks' penultimate layers side by side.
    features = combined.encode_windows(combined.windows(mel_spectrogram(combined.load(y, sr)[0], combined.frontend)))
    _, embeddings = combined.across_windows(features, embeddings=True)
    assert embeddings.shape == (3, 400)


def test_fingerprint_follows_both_members_weights_and_the_merge_map(combined, model_tags, pretrained_cache):
    msd, mtt = combined.members
    # A member's fingerprint is that model's own: a library tagged with it is recognised.
    assert msd.fingerprint == Tagger.pretrained("musicnn-msd", cache_dir=pretrained_cache).fingerprint
    assert combined.fingerprint not in (msd.fingerprint, mtt.fingerprint)

    def changed(member):
        variables = {c: {"musicnn": dict(tree["musicnn"])} for c, tree in member.variables.items()}
        bias = variables["params"]["musicnn"]["output_dense"] = dict(variables["params"]["musicnn"]["output_dense"])
        bias["bias"] = np.asarray(bias["bias"]) + np.float32(1e-3)
        return Tagger(variables, member.meta)

    vocab = combined.vocabulary
    fingerprints = {combined.fingerprint,
                    CombinedTagger("musicnn", [changed(msd), mtt], vocab).fingerprint,
                    CombinedTagger("musicnn", [msd, changed(mtt)], vocab).fingerprint,
                    CombinedTagger("musicnn", [msd, mtt], Vocabulary.build(
                        model_tags, {k: v for k, v in MUSICNN_GROUPS.items() if k != "beat"})).fingerprint}
    assert len(fingerprints) == 4
    # Another merge map is not the shipped reference's: its decisions fall back to a fixed threshold.
    other = CombinedTagger("musicnn", [msd, mtt], Vocabulary.build(
        model_tags, {k: v for k, v in MUSICNN_GROUPS.items() if k != "beat"}))
    assert other.policy.rule == decisions.THRESHOLD and combined.policy.rule == decisions.EVIDENCE
    assert CombinedTagger("musicnn", [msd, mtt], vocab).fingerprint == combined.fingerprint


@pytest.mark.slow   # the library's decoding workers are processes
def test_a_library_tagged_with_msd_gains_only_mtts_run(combined, clip, tmp_path):
    y, sr = clip
    files = [str(tmp_path / "a.wav"), str(tmp_path / "b.wav")]
    sf.write(files[0], y, sr)
    sf.write(files[1], y[::-1].copy(), sr)
    msd, mtt = combined.members
    calls = {"musicnn-msd": 0, "musicnn-mtt": 0}
    for member in (msd, mtt):
        def counted(windows, member=member, encode=member.encode_chunk):
            calls[member.model_name] += 1
            return encode(windows)
        member.encode_chunk = counted
    try:
        out = tmp_path / "out"
        options = LibraryOptions(output_dir=str(out), workers=1, top_n=0, formats=("json",))
        first = tag_library(msd, files, options)
        assert sorted(first.tagged) == sorted(files) and calls["musicnn-msd"] > 0 and calls["musicnn-mtt"] == 0
        before = {n: library_state.stored(out, n) for n in ("a", "b")}

        calls.update({"musicnn-msd": 0, "musicnn-mtt": 0})
        second = tag_library(combined, files, options)
        assert sorted(second.tagged) == sorted(files) and not second.failed
        assert calls["musicnn-msd"] == 0 and calls["musicnn-mtt"] > 0   # only mtt's network ran
        for n, path in zip(("a", "b"), files):
            stored = library_state.stored(out, n)
            assert stored["model"] == combined.fingerprint and set(stored["parts"]) == {msd.fingerprint, mtt.fingerprint}
            np.testing.assert_array_equal(stored["parts"][msd.fingerprint]["scores"], before[n]["scores"])
            mtt_scores = stored["parts"][mtt.fingerprint]["scores"]
            np.testing.assert_allclose(mtt_scores, mtt.tag(path).scores, atol=1e-4)   # mtt's own analysis
            np.testing.assert_array_equal(stored["scores"], combined.vocabulary.merge([before[n]["scores"], mtt_scores]))
            np.testing.assert_array_equal(stored["embeddings"], np.concatenate(
                [before[n]["embeddings"], stored["parts"][mtt.fingerprint]["embeddings"]], axis=1))
        record = json.loads((out / "a.json").read_text())
        assert record["model"] == "musicnn" and len(record["tags"]) == 73

        # Back to msd alone, then to the combined model again: no network runs at all.
        calls.update({"musicnn-msd": 0, "musicnn-mtt": 0})
        third = tag_library(msd, files, options)
        assert sorted(third.derived) == sorted(files) and calls == {"musicnn-msd": 0, "musicnn-mtt": 0}
        np.testing.assert_array_equal(library_state.stored(out, "a")["scores"], before["a"]["scores"])
        fourth = tag_library(combined, files, options)
        assert sorted(fourth.derived) == sorted(files) and calls == {"musicnn-msd": 0, "musicnn-mtt": 0}
        assert library_state.stored(out, "b")["model"] == combined.fingerprint
        assert os.path.exists(out / "library.json")
    finally:
        for member in (msd, mtt):
            del member.encode_chunk


@pytest.mark.slow
def test_tag_cli_accepts_the_combined_model(clip, pretrained_cache, tmp_path):
    y, sr = clip
    path = str(tmp_path / "clip.wav")
    sf.write(path, y, sr)
    out = tmp_path / "out"
    result = processes.run(["-m", "jaxtag.tag", path, f"--output_dir={out}", "--model=musicnn", "--formats=json"],
                           JAXTAG_CACHE=pretrained_cache)
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads((out / "clip.json").read_text())
    assert record["model"] == "musicnn" and len(record["tags"]) == 73 and len(record["windows"]) == 3


def test_the_shipped_combined_reference_is_of_its_members_calibration_tracks(model_tags):
    """musicnn.json (scripts/real_music_report.py calibrate --models=musicnn, from the members'
    stored outputs): the vocabulary's tags, the same tracks and windows as each member's reference,
    statistics that follow from its per-track summaries, base rates for the evidence rule; and the
    whitening of the 400-d combined embeddings."""
    reference = decisions.load_reference("musicnn")
    assert reference["tags"] == list(musicnn_vocabulary(model_tags).tags)
    assert decisions.reference_statistics(reference["tracks"]) == reference["statistics"]
    key = lambda t: (t["collection"], t["file"], t["source_sha256"], t["windows"])
    for member in MUSICNN_MEMBERS:
        assert [key(t) for t in reference["tracks"]] == [key(t) for t in decisions.load_reference(member)["tracks"]]
    policy = decisions.evidence_policy(reference["tags"], reference)
    from jaxtag.data.tags import MUSICNN_MSD_MOODS
    assert policy.rule == decisions.EVIDENCE and set(policy.moods) == MUSICNN_MSD_MOODS   # msd's moods stay moods
    from jaxtag.library.similarity import embedding_reference_path
    with np.load(embedding_reference_path("musicnn")) as npz:
        assert npz["mean"].shape == (400,) and npz["covariance"].shape == (400, 400)


def test_weak_labels_judge_the_combined_model_by_its_members_lists_in_its_words(model_tags):
    """scripts/weak_labels.py's lists for "musicnn" are its members' mapped through the merge map,
    in the vocabulary's own words."""
    import sys
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "scripts"))
    import weak_labels
    vocab = musicnn_vocabulary(model_tags)
    assert set(weak_labels.VOICE["musicnn"]).union(*weak_labels.IMPLAUSIBLE["musicnn"].values()) <= set(vocab.tags)
    assert set(weak_labels.VOICE["musicnn"]) == {vocab.tag_of(m, t) for m in MUSICNN_MEMBERS for t in weak_labels.VOICE[m]}
    for m in MUSICNN_MEMBERS:
        for style, tags in weak_labels.IMPLAUSIBLE[m].items():
            assert {vocab.tag_of(m, t) for t in tags} <= set(weak_labels.IMPLAUSIBLE["musicnn"][style])
    assert "instrumental" not in weak_labels.VOICE["musicnn"]
