"""Weak labels for measuring the precision of tag decisions on real music (scripts/real_music_report.py
precision).

Each collection is labelled from what its package says it is (the game it belongs to, its
description, its music's credits and file names), written down here before any model output on it
was read: whether it is sung or instrumental, and which styles it is. Each style names the tags
that cannot be right for it (a voice on instrumental music; rock or hip-hop on an orchestral
score). mtt's "no vocals", "no vocal" and "no voice" are right on instrumental music, so they are
not voice tags. A tag outside these lists is never counted as wrong: the labels only catch tags
that cannot be right, so the figures are a lower bound on the wrong tags.

WEAK_LABELS covers the report set (music no decision level was chosen on) and two packages in no
other list of the project; CALIBRATION_LABELS covers the calibration set, where the decision levels
are chosen. The Debian packages naev-data and fillets-ng-data are set aside for an independent
check and are never fetched here.
"""
from __future__ import annotations

import dataclasses

INSTRUMENTAL, SUNG, UNKNOWN = "instrumental", "sung", "unknown"
SET_ASIDE = ("naev-data", "fillets-ng-data")


@dataclasses.dataclass(frozen=True)
class WeakLabel:
    package: str
    vocals: str                     # INSTRUMENTAL, SUNG or UNKNOWN (then no voice tag is judged)
    styles: tuple[str, ...] = ()    # keys of IMPLAUSIBLE; () when the package names no style
    said: str = ""                  # where the label comes from


# Tag families per model, in each model's own words.
VOICE = {
    "musicnn-msd": ("female vocalists", "male vocalists", "female vocalist"),
    "musicnn-mtt": ("vocal", "female", "male", "singing", "vocals", "opera", "woman", "male vocal", "man", "choir",
                    "voice", "male voice", "female vocal", "female voice", "choral"),
}
_MSD_ROCK = ("rock", "alternative", "indie", "alternative rock", "metal", "classic rock", "indie rock", "punk",
             "hard rock", "heavy metal", "Progressive rock", "indie pop")
_MSD_POP = ("pop", "dance", "party", "House", "electro", "electronica", "electronic")
_MSD_ERA = ("00s", "80s", "90s", "70s", "60s", "oldies")
_MSD_URBAN = ("Hip-Hop", "rnb", "soul", "funk", "sexy")
_MSD_ROOTS = ("country", "blues", "jazz")

# Per model and style: the tags that cannot be right for music of that style.
IMPLAUSIBLE = {
    "musicnn-msd": {
        "orchestral": _MSD_ROCK + _MSD_POP + _MSD_ERA + _MSD_URBAN + _MSD_ROOTS,
        "electronic": ("60s", "70s", "oldies", "classic rock", "country", "blues", "folk", "jazz", "acoustic"),
        "rock": ("Hip-Hop", "rnb", "House", "jazz", "easy listening"),
    },
    "musicnn-mtt": {
        "orchestral": ("techno", "rock", "pop", "dance", "metal", "country", "electronic"),
        "electronic": ("classical", "classic", "harpsichord", "sitar", "indian", "opera", "choir", "choral", "harp",
                       "country"),
        "rock": ("classical", "classic", "harpsichord", "sitar", "indian", "opera", "choir", "choral", "harp",
                 "new age"),
    },
}

# Calm and battle themes, by the words of their file names (a calm theme should get a calm mood
# more often than a battle theme; musicnn-msd's calm moods below).
CALM_WORDS = ("calm", "peace", "safe", "town", "forest", "sleep", "dream", "relax", "lull", "ambient", "ambience",
              "nature", "beach", "snow", "underwater", "island", "grass", "village", "home", "temple")
BATTLE_WORDS = ("battle", "boss", "fight", "war", "combat", "attack", "hell", "army", "race", "siege", "danger",
                "chase", "action", "unrest", "epic")
CALM_MOODS = ("Mellow", "chill", "chillout", "easy listening", "beautiful")

WEAK_LABELS = (
    WeakLabel("extremetuxracer-data", INSTRUMENTAL, (), "Extreme Tux Racer's race and menu music"),
    WeakLabel("flare-game", INSTRUMENTAL, ("orchestral",), "Flare, a fantasy action RPG: its themes are an orchestral "
                                                           "fantasy score"),
    WeakLabel("freedroidrpg-data", INSTRUMENTAL, ("electronic",), "FreedroidRPG, a sci-fi RPG of robots: electronic "
                                                                  "and industrial tracks"),
    WeakLabel("hedgewars-data", INSTRUMENTAL, (), "Hedgewars' per-theme music (beach, castle, desert, ...)"),
    WeakLabel("lugaru-data", INSTRUMENTAL, (), "Lugaru's level music"),
    WeakLabel("megaglest-data", INSTRUMENTAL, ("orchestral",), "MegaGlest, a fantasy/medieval strategy game: orchestral "
                                                               "menu and faction music"),
    WeakLabel("openclonk-data", INSTRUMENTAL, (), "OpenClonk's music"),
    WeakLabel("scorched3d-data", INSTRUMENTAL, (), "Scorched3D's music"),
    WeakLabel("supertux-data", INSTRUMENTAL, (), "SuperTux's level music"),
    WeakLabel("xmoto-data", INSTRUMENTAL, (), "X-Moto's music"),
    WeakLabel("widelands-data", INSTRUMENTAL, ("orchestral",), "Widelands, a medieval settlement game: an orchestral "
                                                               "score"),
    WeakLabel("warmux-data", INSTRUMENTAL, (), "Warmux's in-game and menu music"),
)

CALIBRATION_LABELS = (
    WeakLabel("asc-music", INSTRUMENTAL, (), "Advanced Strategic Command's music pack"),
    WeakLabel("colobot-common-sounds", INSTRUMENTAL, (), "Colobot's music"),
    WeakLabel("drascula-music", INSTRUMENTAL, (), "Drascula, an adventure game: its music"),
    WeakLabel("fretsonfire-songs-muldjord", UNKNOWN, ("rock",), "Frets on Fire's rock songs (guitar game)"),
    WeakLabel("fretsonfire-songs-sectoid", UNKNOWN, ("rock",), "Frets on Fire's rock and metal songs (guitar game)"),
    WeakLabel("hyperrogue-music", INSTRUMENTAL, (), "HyperRogue's music"),
    WeakLabel("lincity-ng-data", INSTRUMENTAL, (), "LinCity-NG's music"),
    WeakLabel("nexuiz-music", INSTRUMENTAL, ("electronic",), "Nexuiz, an arena shooter: electronic tracks"),
    WeakLabel("openarena-088-data", INSTRUMENTAL, (), "OpenArena's music"),
    WeakLabel("planetblupi-music-ogg", INSTRUMENTAL, (), "Planet Blupi's music"),
    WeakLabel("pushover-data", INSTRUMENTAL, (), "Pushover's theme music"),
    WeakLabel("singularity-music", INSTRUMENTAL, ("electronic",), "Endgame: Singularity's electronic/ambient music"),
    WeakLabel("ufoai-music", INSTRUMENTAL, ("orchestral",), "UFO: Alien Invasion's orchestral score"),
    WeakLabel("warzone2100-music", INSTRUMENTAL, (), "Warzone 2100's music"),
    WeakLabel("wesnoth-1.16-music", INSTRUMENTAL, ("orchestral",), "Battle for Wesnoth's orchestral score"),
)


def labels_by_package(labels=WEAK_LABELS + CALIBRATION_LABELS) -> dict[str, WeakLabel]:
    return {label.package: label for label in labels}


def implausible(model: str, label: WeakLabel) -> frozenset[str]:
    """The tags of this model that cannot be right for a collection so labelled."""
    out = set(VOICE[model]) if label.vocals == INSTRUMENTAL else set()
    for style in label.styles:
        out |= set(IMPLAUSIBLE[model][style])
    return frozenset(out)


def theme(file: str) -> str | None:
    """"calm", "battle" or None, from the words of a track's file name."""
    name = file.rsplit("/", 1)[-1].lower()
    calm = any(w in name for w in CALM_WORDS)
    battle = any(w in name for w in BATTLE_WORDS)
    return "calm" if calm and not battle else "battle" if battle and not calm else None
