"""The listening page: self-contained, escaped, and its cursor follows the time in a real browser."""
import json
import re
import shutil
import subprocess

import numpy as np
import pytest

from conftest import write_tone
from jaxtag.tagging.decisions import threshold_policy
from jaxtag.tagging.html_page import render_html
from jaxtag.tagging.sections import SectionSettings
from jaxtag.tagging.taggram import Taggram

EVIL = "<script>alert(1)</script>\"'&"


def _taggram(source, tags=("Emotion-Happy", "Emotion-Sad", f"Emotion-{EVIL}")):
    # 6 windows of 4 s with hop 2 s over 14 s: centres 2, 4, ..., 12. Their embeddings change
    # after the third window: two sections, 0-7 s and 7-14 s (sections short enough for 14 s).
    start = np.arange(6) * 2.0
    scores = np.array([[0.9, 0.1, 0.2], [0.8, 0.2, 0.7], [0.2, 0.9, 0.1],
                       [0.1, 0.8, 0.6], [0.6, 0.7, 0.1], [0.3, 0.1, 0.9]], np.float32)
    embeddings = np.repeat(np.eye(2, 8, dtype=np.float32), 3, axis=0)
    return Taggram(source, 14.0, list(tags), start, start + 4.0, scores, threshold_policy(tags, 0.5), model="cnn_lstm",
                   embeddings=embeddings, sectioning=SectionSettings(min_seconds=4.0, penalty_seconds=1.0))


def test_page_is_self_contained_and_escapes_names(tmp_path):
    audio = write_tone(tmp_path / "a.wav", 1.0, sr=8000)
    name = "<b onmouseover=alert(1)>x\"'&.wav"  # a file name cannot contain "/"
    page = render_html(_taggram(f"/music/{name}"), audio)
    assert "http://" not in page and "https://" not in page
    assert 'src="data:audio/wav;base64,' in page
    assert "<script>alert(1)</script>" not in page
    data = json.loads(re.search(r'<script type="application/json" id="taggram-data">(.*?)</script>', page, re.S).group(1))
    assert data["tags"][2] == f"Emotion-{EVIL}"
    assert html_unescape_title(page) == f"{name} - jaxtag"
    assert "<b onmouseover" not in page


def html_unescape_title(page):
    import html
    return html.unescape(re.search(r"<title>(.*?)</title>", page).group(1))


def _chromium():
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _dump_dom(page_path, t, profile):
    cmd = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={profile}", "--window-size=1200,800", "--virtual-time-budget=3000",
           "--dump-dom", f"file://{page_path}#t={t}"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120).stdout


@pytest.mark.slow
@pytest.mark.skipif(_chromium() is None, reason="Debian's chromium is not installed (.ci/run installs it)")
def test_cursor_follows_the_time_in_headless_chromium(tmp_path):
    audio = write_tone(tmp_path / "a.wav", 14.0, sr=8000)  # as long as the taggram
    page = tmp_path / "page.html"
    page.write_text(render_html(_taggram(str(tmp_path / "song.wav")), audio, similar_script="page.similar.js"))
    # Its lists of similar tracks and moments (as the library writes them): window k's moments
    # are "other k", so the list under the cursor says which window it shows.
    similar = {"tracks": [{"name": "x/<b>", "path": "/m/x/<b>.ogg", "score": 0.9, "href": "x/%3Cb%3E.html"}],
               "moments": [[{"name": f"other {k}", "start": 2.0 * k, "end": 2.0 * k + 3, "score": 0.5,
                             "href": f"other%20{k}.html#t={2.0 * k:.2f}"}] for k in range(6)]}
    (tmp_path / "page.similar.js").write_text(f"window.JAXTAG_SIMILAR = {json.dumps(similar)};\n")
    seen = {}
    for t in (0, 8.6):
        dom = _dump_dom(page, t, tmp_path / f"profile{t}")
        moments = re.search(r'<ol id="similar-moments">(.*?)</ol>', dom, re.S).group(1)
        assert re.findall(r'<a href="([^"]+)">([^<]+)</a>', moments) == \
            [(f"other%20{3 if t else 0}.html#t={6.0 if t else 0.0:.2f}", f"other {3 if t else 0} "
              f"{6.0 if t else 0.0:.1f}-{9.0 if t else 3.0:.1f} s")]
        tracks = re.search(r'<ol id="similar-tracks">(.*?)</ol>', dom, re.S).group(1)
        assert '<a href="x/%3Cb%3E.html">&lt;b&gt;.ogg</a>' in tracks
        cursor = re.search(r'<div id="cursor"[^>]*>', dom).group(0)
        left = float(re.search(r"left:\s*([0-9.]+)px", cursor).group(1))
        time = float(re.search(r'data-time="([0-9.]+)"', cursor).group(1))
        width = float(re.search(r'<canvas id="taggram" width="([0-9]+)"', dom).group(1))
        now = re.findall(r"<span>(.*?)</span>", re.search(r'<em id="now-tags">(.*?)</em>', dom, re.S).group(1))
        seen[t] = (left, time, width, now)
    assert seen[0][1] == 0 and seen[8.6][1] == pytest.approx(8.6)
    assert seen[0][0] == pytest.approx(0, abs=1)
    assert seen[8.6][0] == pytest.approx(8.6 / 14 * seen[8.6][2], abs=1.5)   # moved with currentTime
    # Nearest window centre to 8.6 s is 8 s (window 3, bounds 7-9 s): Sad and the evil tag are on, Happy is off.
    assert seen[8.6][3] == ["Emotion-Sad", "Emotion-&lt;script&gt;alert(1)&lt;/script&gt;\"'&amp;"]
    assert seen[0][3] == ["Emotion-Happy"]
    # Without the lists (not computed yet), the page says so.
    (tmp_path / "page.similar.js").unlink()
    dom = _dump_dom(page, 0, tmp_path / "profile_none")
    assert "not computed yet" in re.search(r'<ol id="similar-moments">(.*?)</ol>', dom, re.S).group(1)


def _click_then_report(what: str, click: str) -> str:
    """A script for a test page: once it has loaded, a user's click (JavaScript), then the time the
    player went to, as the body's data-player-time."""
    return f"""<script>
// Test only: {what}, then report where the player went.
const playerUnderTest = document.getElementById("player");
playerUnderTest.addEventListener("seeked", () => {{ document.body.dataset.playerTime = String(playerUnderTest.currentTime); }});
window.addEventListener("load", () => setTimeout(() => {{
  {click}
}}, 200));
</script></body>"""


CLICK_AT_6_SECONDS = _click_then_report(
    "a user's click on the taggram at 6 s of 14",
    'const c = document.getElementById("taggram"), r = c.getBoundingClientRect();\n'
    '  c.dispatchEvent(new MouseEvent("click", {clientX: r.left + r.width * 6 / 14, clientY: r.top + 5, '
    'bubbles: true}));')


@pytest.mark.slow
@pytest.mark.skipif(_chromium() is None, reason="Debian's chromium is not installed (.ci/run installs it)")
def test_a_click_on_the_taggram_seeks_the_player_and_the_cursor_follows(tmp_path):
    audio = write_tone(tmp_path / "a.wav", 14.0, sr=8000)
    page = tmp_path / "page.html"
    page.write_text(render_html(_taggram(str(tmp_path / "song.wav")), audio).replace("</body>", CLICK_AT_6_SECONDS))
    dom = _dump_dom(page, 0, tmp_path / "profile")
    player_time = float(re.search(r'<body[^>]*data-player-time="([0-9.]+)"', dom).group(1))
    cursor_time = float(re.search(r'<div id="cursor"[^>]*data-time="([0-9.]+)"', dom).group(1))
    assert player_time == pytest.approx(6.0, abs=0.1)
    assert cursor_time == pytest.approx(player_time, abs=1e-3)
    now = re.findall(r"<span>(.*?)</span>", re.search(r'<em id="now-tags">(.*?)</em>', dom, re.S).group(1))
    assert now == ["Emotion-Sad"]  # window centred at 6 s: Happy 0.2, Sad 0.9, evil 0.1


CLICK_THE_SECOND_SECTION = _click_then_report(
    "a user's click on the second block of the sections' bar",
    'document.querySelectorAll("#sections .section")[1].dispatchEvent(new MouseEvent("click", {bubbles: true}));')


@pytest.mark.slow
@pytest.mark.skipif(_chromium() is None, reason="Debian's chromium is not installed (.ci/run installs it)")
def test_the_sections_bar_shows_each_section_and_a_click_plays_it_from_its_start(tmp_path):
    from jaxtag.data.tags import short_tag
    from jaxtag.tagging.html_page import section_label
    audio = write_tone(tmp_path / "a.wav", 14.0, sr=8000)
    taggram = _taggram(str(tmp_path / "song.wav"))
    found = taggram.sections()
    assert [(s.start_s, s.end_s) for s in found] == [(0.0, 7.0), (7.0, 14.0)]   # window 3's stretch begins at 7 s
    page = tmp_path / "page.html"
    page.write_text(render_html(taggram, audio))
    dom = _dump_dom(page, 0, tmp_path / "profile")
    blocks = re.findall(r'<div class="section( current)?"([^>]*)>([^<]*)</div>', dom)
    assert len(blocks) == 2
    import html
    for k, ((current, attributes, text), section) in enumerate(zip(blocks, found)):
        style = re.search(r'style="([^"]*)"', attributes).group(1)
        # Numbered as `similar FILE#N` takes them, labelled with the policy's moods and tags (escaped).
        assert html.unescape(text) == f"{k + 1} \u00b7 " + (", ".join(section_label(section.tags, section.moods,
                                                                                      short_tag)) or "no tags")
        left = float(re.search(r"left:\s*([0-9.]+)%", style).group(1))
        width = float(re.search(r"width:\s*([0-9.]+)%", style).group(1))
        assert (left, width) == (pytest.approx(100 * section.start_s / 14), pytest.approx(100 * (section.end_s - section.start_s) / 14))
        assert bool(current) == (k == 0)          # at 0 s, the first is the current section
    assert "<script>alert" not in dom
    page.write_text(render_html(taggram, audio).replace("</body>", CLICK_THE_SECOND_SECTION))
    dom = _dump_dom(page, 0, tmp_path / "profile2")
    assert float(re.search(r'<body[^>]*data-player-time="([0-9.]+)"', dom).group(1)) == pytest.approx(7.0, abs=0.05)
    assert float(re.search(r'<div id="cursor"[^>]*data-time="([0-9.]+)"', dom).group(1)) == pytest.approx(7.0, abs=0.05)
    assert [bool(c) for c, _, _ in re.findall(r'<div class="section( current)?"([^>]*)>([^<]*)</div>',
                                               dom)] == [False, True]
