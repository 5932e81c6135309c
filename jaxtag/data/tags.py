"""The CAL500exp tag vocabulary: the 67 segment-label columns, in the release's column order.

The names are spelled exactly as the release's CSV header (including CAL500's own "Agressive").
"""
from __future__ import annotations

from typing import Sequence

CAL500EXP_TAGS: tuple[str, ...] = (
    "Emotion-Angry_/_Agressive",
    "Emotion-Arousing_/_Awakening",
    "Emotion-Bizarre_/_Weird",
    "Emotion-Calming_/_Soothing",
    "Emotion-Carefree_/_Lighthearted",
    "Emotion-Cheerful_/_Festive",
    "Emotion-Emotional_/_Passionate",
    "Emotion-Exciting_/_Thrilling",
    "Emotion-Happy",
    "Emotion-Laid-back_/_Mellow",
    "Emotion-Light_/_Playful",
    "Emotion-Loving_/_Romantic",
    "Emotion-Pleasant_/_Comfortable",
    "Emotion-Positive_/_Optimistic",
    "Emotion-Powerful_/_Strong",
    "Emotion-Sad",
    "Emotion-Tender_/_Soft",
    "Emotion-Touching_/_Loving",
    "Instrument_-_Acoustic_Guitar",
    "Instrument_-_Ambient_Sounds",
    "Instrument_-_Backing_vocals",
    "Instrument_-_Bass",
    "Instrument_-_Drum_Machine",
    "Instrument_-_Drum_Set",
    "Instrument_-_Electric_Guitar_(clean)",
    "Instrument_-_Electric_Guitar_(distorted)",
    "Instrument_-_Female_Lead_Vocals",
    "Instrument_-_Hand_Drums",
    "Instrument_-_Harmonica",
    "Instrument_-_Horn_Section",
    "Instrument_-_Male_Lead_Vocals",
    "Instrument_-_Organ",
    "Instrument_-_Piano",
    "Instrument_-_Samples",
    "Instrument_-_Saxophone",
    "Instrument_-_Sequencer",
    "Instrument_-_String_Ensemble",
    "Instrument_-_Synthesizer",
    "Instrument_-_Tambourine",
    "Instrument_-_Trombone",
    "Instrument_-_Trumpet",
    "Instrument_-_Violin/Fiddle",
    "Vocals-Aggressive",
    "Vocals-Altered_with_Effects",
    "Vocals-Breathy",
    "Vocals-Call_&_Response",
    "Vocals-Duet",
    "Vocals-Emotional",
    "Vocals-Falsetto",
    "Vocals-Gravelly",
    "Vocals-High-pitched",
    "Vocals-Low-pitched",
    "Vocals-Monotone",
    "Vocals-Rapping",
    "Vocals-Screaming",
    "Vocals-Spoken",
    "Vocals-Strong",
    "Vocals-Vocal_Harmonies",
    "Instrument_-_Acoustic_Guitar-Solo",
    "Instrument_-_Electric_Guitar_(clean)-Solo",
    "Instrument_-_Electric_Guitar_(distorted)-Solo",
    "Instrument_-_Female_Lead_Vocals-Solo",
    "Instrument_-_Harmonica-Solo",
    "Instrument_-_Male_Lead_Vocals-Solo",
    "Instrument_-_Piano-Solo",
    "Instrument_-_Saxophone-Solo",
    "Instrument_-_Trumpet-Solo",
)

# Tag categories, recognised by name (see ../shared/cal500exp.md): 18 + 24 + 16 + 9 = 67.
CATEGORIES = ("emotion", "instrument", "vocals", "solo")


def tag_category(tag: str) -> str | None:
    """The category of a CAL500exp tag name; None for a name outside CAL500exp's vocabulary."""
    if tag not in CAL500EXP_TAGS:
        return None
    if tag.endswith("-Solo"):
        return "solo"
    if tag.startswith("Emotion-"):
        return "emotion"
    if tag.startswith("Vocals-"):
        return "vocals"
    return "instrument"  # every other CAL500exp tag starts with "Instrument_-_"


EMOTION_TAGS: tuple[str, ...] = tuple(t for t in CAL500EXP_TAGS if tag_category(t) == "emotion")


def resolve_tags(spec: str | Sequence[str], vocabulary: Sequence[str] = CAL500EXP_TAGS) -> tuple[str, ...]:
    """Turn a tag-subset spec into tag names from a corpus's vocabulary (its CSVs' tag columns;
    CAL500exp's 67 by default).

    `spec` is "all" (every tag of the vocabulary), a CAL500exp category ("emotion": the paper's
    18, "instrument", "vocals", "solo"), a comma-separated string of tag names, or a sequence of
    tag names.
    """
    if isinstance(spec, str):
        key = spec.strip()
        if key == "all":
            return tuple(vocabulary)
        if key in CATEGORIES:
            chosen = tuple(t for t in vocabulary if tag_category(t) == key)
            if not chosen:
                raise ValueError(f"the corpus has no CAL500exp {key!r} tags (its tags: {_some(vocabulary)}); "
                                 "use 'all' or name its tags")
            return chosen
        names = [s.strip() for s in key.split(",") if s.strip()]
    else:
        names = [str(s) for s in spec]
    if not names:
        raise ValueError("the tag subset is empty")
    unknown = [n for n in names if n not in vocabulary]
    if unknown:
        known = "CAL500exp tag names spelled as in the CSV header" if tuple(vocabulary) == CAL500EXP_TAGS \
            else f"the corpus's tags ({_some(vocabulary)})"
        raise ValueError(f"unknown tag(s) {unknown}; use 'all', one of {list(CATEGORIES)}, or {known}")
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate tags in {names}")
    return tuple(names)


def _some(names: Sequence[str], limit: int = 8) -> str:
    return ", ".join(list(names)[:limit]) + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def short_tag(tag: str) -> str:
    """'Emotion-Angry_/_Agressive' -> 'Angry / Agressive' for axis labels."""
    for prefix in ("Emotion-", "Instrument_-_", "Vocals-"):
        if tag.startswith(prefix):
            tag = tag[len(prefix):]
    return tag.replace("_", " ")


# The mood tags among musicnn-msd's Last.fm tags (jaxtag.pretrained).
MUSICNN_MSD_MOODS = frozenset({"sad", "happy", "chill", "Mellow", "beautiful", "party", "sexy", "catchy",
                               "easy listening", "chillout"})


def is_mood(tag: str) -> bool:
    """Whether a tag names a mood: CAL500exp's emotion tags and musicnn-msd's mood tags (what
    --write_tags puts in a file's MOOD field)."""
    return tag_category(tag) == "emotion" or tag in MUSICNN_MSD_MOODS
