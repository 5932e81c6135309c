"""One vocabulary from several models' tags: the combined pretrained model "musicnn" (musicnn-msd's
50 Last.fm tags and musicnn-mtt's 50 MagnaTagATune tags in one taggram).

musicnn-msd has genres, eras and moods but no word for classical music or for most instruments;
musicnn-mtt names instruments, voices and textures and a few genres, but no moods. The merge map
(MUSICNN_GROUPS) names the tags that say the same thing, within a model (mtt's "woman", "female",
"female vocal" and "female voice") or across the two (both models' "rock"): each such group is one
tag of the combined vocabulary. Every other tag keeps its own name. Each member tag of either model
belongs to exactly one tag of the vocabulary.

What is merged: synonyms and spelling variants (mtt's "beat"/"beats", "classical"/"classic",
"choir"/"choral"; msd's "female vocalist(s)", "electronic"/"electronica") and the same tag in both
models. Not merged: a subgenre with its parent (msd's "electro", "House", "heavy metal", "hard
rock", "indie rock" keep their own names: merging would lose the subgenre), moods with genres
(msd's "chill" is a mood, "chillout" a genre of electronic music; moods stay moods,
jaxtag.data.tags.is_mood), and tags that are near but claim different things ("quiet" and "soft",
"slow" and "Mellow"). msd's "instrumental" joins mtt's "no vocals", "no vocal" and "no voice": all
four say there is no singing (Last.fm's "instrumental" is given to music without vocals, whatever
its genre), and the merged tag takes the common word, "instrumental".

A merged tag's probability in a window is the largest of its members' (MERGE = "max"): a tag is as
present as its strongest synonym says. The max keeps each member's scale where it is the strongest,
is monotone in every member, and never claims more than some member claimed; a mean would dilute a
confident member with the others (mtt's four female-voice tags are rarely all high together), and
a noisy-or would call four weak synonyms a strong tag. The combined model's decisions come from its
own reference statistics, computed over the merged scores of the calibration set
(jaxtag/tagging/calibration/musicnn.json; scripts/real_music_report.py calibrate --models=musicnn),
so each merged tag's base rate is its own.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Sequence

import numpy as np

MERGE = "max"

# The combined model's merge map: tag -> members [(model, tag)]. Tags not named here keep their
# own names (Vocabulary.build adds them).
MUSICNN_GROUPS: dict[str, tuple[tuple[str, str], ...]] = {
    "rock": (("musicnn-msd", "rock"), ("musicnn-mtt", "rock")),
    "pop": (("musicnn-msd", "pop"), ("musicnn-mtt", "pop")),
    "electronic": (("musicnn-msd", "electronic"), ("musicnn-msd", "electronica"), ("musicnn-mtt", "electronic")),
    "female voice": (("musicnn-msd", "female vocalists"), ("musicnn-msd", "female vocalist"),
                     ("musicnn-mtt", "female"), ("musicnn-mtt", "woman"), ("musicnn-mtt", "female vocal"),
                     ("musicnn-mtt", "female voice")),
    "dance": (("musicnn-msd", "dance"), ("musicnn-mtt", "dance")),
    "metal": (("musicnn-msd", "metal"), ("musicnn-mtt", "metal")),
    "male voice": (("musicnn-msd", "male vocalists"), ("musicnn-mtt", "male"), ("musicnn-mtt", "man"),
                   ("musicnn-mtt", "male vocal"), ("musicnn-mtt", "male voice")),
    "instrumental": (("musicnn-msd", "instrumental"), ("musicnn-mtt", "no vocals"), ("musicnn-mtt", "no vocal"),
                     ("musicnn-mtt", "no voice")),
    "ambient": (("musicnn-msd", "ambient"), ("musicnn-mtt", "ambient")),
    "guitar": (("musicnn-msd", "guitar"), ("musicnn-mtt", "guitar")),
    "country": (("musicnn-msd", "country"), ("musicnn-mtt", "country")),
    "classical": (("musicnn-mtt", "classical"), ("musicnn-mtt", "classic")),
    "beat": (("musicnn-mtt", "beat"), ("musicnn-mtt", "beats")),
    "vocals": (("musicnn-mtt", "vocal"), ("musicnn-mtt", "vocals"), ("musicnn-mtt", "voice"),
               ("musicnn-mtt", "singing")),
    "choir": (("musicnn-mtt", "choir"), ("musicnn-mtt", "choral")),
}
MUSICNN_MEMBERS = ("musicnn-msd", "musicnn-mtt")


@dataclasses.dataclass(frozen=True)
class Vocabulary:
    """Tags made of member models' tags. models: the members, in order; their tags: model_tags;
    tags: the vocabulary's tags; groups[i]: tag i's members [(model, tag)]."""
    models: tuple[str, ...]
    model_tags: tuple[tuple[str, ...], ...]
    tags: tuple[str, ...]
    groups: tuple[tuple[tuple[str, str], ...], ...]

    def __post_init__(self):
        seen = {}
        for tag, members in zip(self.tags, self.groups):
            if not members:
                raise ValueError(f"tag {tag!r} has no member")
            for member in members:
                if member in seen:
                    raise ValueError(f"{member} is in both {seen[member]!r} and {tag!r}")
                seen[member] = tag
        every = {(m, t) for m, tags in zip(self.models, self.model_tags) for t in tags}
        if set(seen) != every:
            raise ValueError(f"the merge map names {sorted(set(seen) - every)} (no such tag) and leaves out "
                             f"{sorted(every - set(seen))}")
        if len(set(self.tags)) != len(self.tags):
            raise ValueError("a tag name is given twice")

    @classmethod
    def build(cls, model_tags: dict[str, Sequence[str]], groups: dict[str, Sequence[tuple[str, str]]]
              ) -> "Vocabulary":
        """The vocabulary of these models' tags ({model: tags}, in member order) with these merged
        groups; each tag in no group is a tag of its own. Order: the members' tags in turn, each
        group where its first member comes."""
        grouped = {tuple(m): tag for tag, members in groups.items() for m in members}
        tags, members_of = [], {}
        for model, names in model_tags.items():
            for name in names:
                tag = grouped.get((model, name), name)
                if tag not in members_of:
                    tags.append(tag)
                    members_of[tag] = tuple(tuple(m) for m in groups[tag]) if (model, name) in grouped else ()
                if (model, name) not in grouped:
                    if members_of[tag]:
                        raise ValueError(f"{model}'s {name!r} has the name of another tag of the vocabulary")
                    members_of[tag] = ((model, name),)
        return cls(tuple(model_tags), tuple(tuple(t) for t in model_tags.values()), tuple(tags),
                   tuple(members_of[t] for t in tags))

    @property
    def columns(self) -> tuple[tuple[int, ...], ...]:
        """Per tag, its members' columns in the members' scores side by side ([W, sum of their tags])."""
        offsets = np.cumsum([0] + [len(t) for t in self.model_tags])
        where = {(m, t): int(offsets[i]) + k for i, (m, tags) in enumerate(zip(self.models, self.model_tags))
                 for k, t in enumerate(tags)}
        return tuple(tuple(where[m] for m in members) for members in self.groups)

    def merge(self, scores: Sequence[np.ndarray]) -> np.ndarray:
        """The vocabulary's scores [W, C] from each member's scores [W, its tags], in member order:
        each tag the max of its members'."""
        side_by_side = np.concatenate([np.asarray(s, np.float32) for s in scores], axis=-1)
        return np.stack([side_by_side[..., list(cols)].max(axis=-1) for cols in self.columns], axis=-1)

    def members_of(self, tag: str) -> tuple[tuple[str, str], ...]:
        return self.groups[self.tags.index(tag)]

    def tag_of(self, model: str, tag: str) -> str:
        """The vocabulary's tag a member's tag belongs to."""
        for name, members in zip(self.tags, self.groups):
            if (model, tag) in members:
                return name
        raise KeyError((model, tag))

    def to_dict(self) -> dict:
        """The merge map as JSON: models, their tags, and each tag's members (part of the combined
        model's identity)."""
        return {"merge": MERGE, "models": list(self.models), "model_tags": [list(t) for t in self.model_tags],
                "tags": [{"tag": t, "members": [list(m) for m in g]} for t, g in zip(self.tags, self.groups)]}

    def key(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]

    def table(self) -> str:
        """The merged tags as a Markdown table (docs)."""
        lines = ["| tag | " + " | ".join(self.models) + " |", "|---|" + "---|" * len(self.models)]
        for tag, members in zip(self.tags, self.groups):
            if len(members) > 1 or members[0][1] != tag:
                cells = [", ".join(t for m, t in members if m == model) or "-" for model in self.models]
                lines.append(f"| {tag} | " + " | ".join(cells) + " |")
        return "\n".join(lines)


def musicnn_vocabulary(model_tags: dict[str, Sequence[str]]) -> Vocabulary:
    """The combined model's vocabulary from musicnn-msd's and musicnn-mtt's tags."""
    return Vocabulary.build({m: model_tags[m] for m in MUSICNN_MEMBERS}, MUSICNN_GROUPS)
