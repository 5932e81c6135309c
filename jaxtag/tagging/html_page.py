"""One self-contained listening page per tagged file: an audio player (the file embedded as a data
URI), under it a bar of the track's sections (one block per section, labelled with its moods and
tags; a click plays it from its start), and the taggram, whose cursor follows playback; a click
seeks; the tags active now are listed.

Nothing is fetched from the network. Every file, tag and model name is HTML-escaped; the data for
the script goes in a JSON block whose '<', '>' and '&' are escaped, so no name can end the script.
"""
from __future__ import annotations

import base64
import html
import json
import os
import urllib.parse

import numpy as np

from jaxtag.tagging.taggram import Taggram

# Audio up to this size may be embedded in the page (one self-contained file to share); a larger
# file (a long recording) is linked instead, as are a library's files (embedding them all would
# make the output folder a third larger than the library).
MAX_EMBED_BYTES = 16 * 1024 * 1024
MIME = {".mp3": "audio/mpeg", ".ogg": "audio/ogg", ".oga": "audio/ogg", ".opus": "audio/ogg",
        ".flac": "audio/flac", ".wav": "audio/wav"}


def _json_for_script(data) -> str:
    return json.dumps(data).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


STYLE = """\
body { font-family: system-ui, sans-serif; margin: 16px; color: #0f172a; }
h1 { font-size: 18px; margin: 0 0 4px; } .meta { color: #475569; font-size: 13px; margin-bottom: 8px; }
audio { width: 100%; } .note { color: #b45309; }
#view { display: flex; margin-top: 8px; }
#labels { width: 220px; flex: none; }
.tag { height: 20px; line-height: 20px; font-size: 12px; white-space: nowrap; overflow: hidden;
        text-overflow: ellipsis; padding-right: 6px; text-align: right; }
#plot { position: relative; flex: 1; }
#taggram { display: block; cursor: pointer; }
#cursor { position: absolute; top: 0; width: 2px; background: #22d3ee; pointer-events: none; }
#axis { font-size: 11px; color: #475569; height: 16px; position: relative; }
#now { margin-top: 10px; font-size: 14px; } #now span { background: #ccfbf1; border-radius: 4px;
        padding: 2px 6px; margin: 2px; display: inline-block; }
#like { display: flex; gap: 32px; margin-top: 12px; font-size: 13px; } #like ol { margin: 4px 0; padding-left: 20px; }
#like h2 { font-size: 14px; margin: 0; } .score { color: #64748b; }
#sections { position: relative; height: 26px; margin: 4px 0 0; }
.section { position: absolute; top: 0; height: 24px; line-height: 24px; font-size: 12px; overflow: hidden;
        white-space: nowrap; text-overflow: ellipsis; padding: 0 4px; box-sizing: border-box; cursor: pointer;
        background: #e2e8f0; border: 1px solid #fff; border-radius: 4px; }
.section:nth-child(even) { background: #cbd5e1; } .section.current { background: #99f6e4; }
"""

# The page's behaviour: draw the taggram on the canvas, move the cursor with the player, list the
# tags active now. Reads the JSON block "taggram-data".
SCRIPT = """\
const T = JSON.parse(document.getElementById("taggram-data").textContent);
const canvas = document.getElementById("taggram"), cursor = document.getElementById("cursor");
const player = document.getElementById("player"), ROW = 20;
const width = Math.max(300, document.getElementById("plot").clientWidth);
canvas.width = width; canvas.height = ROW * T.tags.length;
cursor.style.height = canvas.height + "px";
const ctx = canvas.getContext("2d");
const x = t => t / T.duration * width;   // seconds -> pixels; the cursor's left uses the same map
// Each window is drawn over the stretch nearest its centre: Taggram.bounds(), computed in Python.
const bounds = T.bounds;
for (let k = 0; k < T.scores.length; k++) {
  for (let j = 0; j < T.tags.length; j++) {
    const s = T.scores[k][j];
    ctx.fillStyle = `rgb(${Math.round(15 + 240 * s)}, ${Math.round(23 + 120 * s * s)}, ${Math.round(42 + 60 * (1 - s))})`;
    ctx.fillRect(x(bounds[k]), j * ROW, Math.ceil(x(bounds[k + 1]) - x(bounds[k])), ROW - 1);
    if (T.active[k][j]) { ctx.fillStyle = "#2dd4bf"; ctx.fillRect(x(bounds[k]), j * ROW + ROW / 2 - 1, x(bounds[k + 1]) - x(bounds[k]), 2); }
  }
}
const axis = document.getElementById("axis");
const step = Math.max(1, Math.ceil(T.duration / 12 / 5) * 5);
for (let t = 0; t <= T.duration; t += step) {
  const tick = document.createElement("span");
  tick.style.position = "absolute"; tick.style.left = x(t) + "px"; tick.textContent = t + "s";
  axis.appendChild(tick);
}
function nearestWindow(t) {   // the window k with bounds[k] <= t < bounds[k + 1] (binary search)
  let lo = 0, hi = bounds.length - 2;
  while (lo < hi) { const mid = (lo + hi + 1) >> 1; if (bounds[mid] <= t) lo = mid; else hi = mid - 1; }
  return lo;
}
function showTime(t) {
  t = Math.min(Math.max(Number(t) || 0, 0), T.duration);
  cursor.style.left = x(t) + "px";
  cursor.dataset.time = String(t);
  const k = nearestWindow(t), out = document.getElementById("now-tags");
  out.textContent = "";
  T.tags.forEach((tag, j) => { if (T.active[k][j]) { const s = document.createElement("span"); s.textContent = tag; out.appendChild(s); } });
  if (!out.childNodes.length) out.textContent = "none";
  const bpm = (T.bpm || [])[k];
  document.getElementById("now-bpm").textContent = bpm ? "\u00b7 " + bpm.toFixed(0) + " BPM" : "";
  showMoments(k);
  showSection(t);
}
// Similar tracks and "more moments like this" come from NAME.similar.js (window.JAXTAG_SIMILAR),
// written when the library's similarity index is updated; without it the lists say so.
const S = window.JAXTAG_SIMILAR;
function entry(list, item, text) {
  const li = document.createElement("li"), a = document.createElement("a");
  a.href = item.href; a.textContent = text; li.appendChild(a);
  const s = document.createElement("span"); s.className = "score"; s.textContent = " " + item.score.toFixed(2);
  li.appendChild(s); list.appendChild(li);
}
function fill(list, items, text) {
  list.textContent = "";
  if (!S) { list.textContent = "not computed yet (tag a library to get them)"; return; }
  for (const item of items) entry(list, item, text(item));
}
fill(document.getElementById("similar-tracks"), S ? S.tracks : [], t => t.path.split(/[\\/]/).pop());
let shownMoments = -1;
function showMoments(k) {
  if (k === shownMoments) return;
  shownMoments = k;
  fill(document.getElementById("similar-moments"), S ? S.moments[k] || [] : [],
       m => m.name.split("/").pop() + " " + m.start.toFixed(1) + "-" + m.end.toFixed(1) + " s");
}
// The sections' bar: one block per section (its share of the track's width), labelled with its
// number, moods and tags; a click plays it from its start; the section under the cursor is marked.
const bar = document.getElementById("sections"), blocks = [];
(T.sections || []).forEach((sec, i) => {
  const b = document.createElement("div");
  b.className = "section";
  b.style.left = (100 * sec.start / T.duration) + "%";
  b.style.width = (100 * (sec.end - sec.start) / T.duration) + "%";
  b.textContent = (i + 1) + " \u00b7 " + (sec.label || "no tags");
  b.title = `section ${i + 1}: ${sec.start.toFixed(1)}-${sec.end.toFixed(1)} s\ntags: ${sec.tags.join(", ") || "none"}\nmoods: ${sec.moods.join(", ") || "none"}`;
  b.dataset.start = String(sec.start);
  b.addEventListener("click", () => { try { player.currentTime = sec.start; } catch (err) {} });
  bar.appendChild(b); blocks.push(b);
});
function showSection(t) {
  (T.sections || []).forEach((sec, i) => {
    const last = i === T.sections.length - 1;
    blocks[i].classList.toggle("current", t >= sec.start && (t < sec.end || (last && t <= sec.end)));
  });
}
function follow() { showTime(player.currentTime); if (!player.paused) requestAnimationFrame(follow); }
player.addEventListener("timeupdate", () => showTime(player.currentTime));
player.addEventListener("seeked", () => showTime(player.currentTime));
player.addEventListener("play", () => requestAnimationFrame(follow));
// A click and #t=SECONDS only seek the player: the cursor follows the player's own events.
canvas.addEventListener("click", e => {
  try { player.currentTime = (e.offsetX / width) * T.duration; } catch (err) {}
});
const hash = location.hash.match(/t=([0-9.]+)/);   // #t=SECONDS opens the page at that time
if (hash) { try { player.currentTime = Number(hash[1]); } catch (err) {} }
showTime(player.currentTime);
"""


def _player(audio_path: str | None, name: str, page_dir: str | None = None, embed: bool = True) -> str:
    """An <audio> element with the file embedded as a data URI when asked and small, else linked by
    its path relative to the page's folder (the page then plays while the file stays in place)."""
    if audio_path and os.path.isfile(audio_path):
        if (embed or page_dir is None) and os.path.getsize(audio_path) <= MAX_EMBED_BYTES:
            mime = MIME.get(os.path.splitext(audio_path)[1].lower(), "application/octet-stream")
            with open(audio_path, "rb") as f:
                data = base64.b64encode(f.read()).decode("ascii")
            return f'<audio controls id="player" preload="auto" src="data:{mime};base64,{data}"></audio>'
        if page_dir is not None:
            relative = os.path.relpath(os.path.abspath(audio_path), os.path.abspath(page_dir))
            # As bytes: a name that is not valid UTF-8 keeps its own bytes (%E9), which the browser
            # asks the disk for.
            url = urllib.parse.quote(os.fsencode(relative.replace(os.sep, "/")))
            return f'<audio controls id="player" preload="metadata" src="{_escape(url)}"></audio>'
    return ('<audio id="player"></audio><p class="note">Audio not embedded '
            f'({_escape(name)} is missing or larger than {MAX_EMBED_BYTES >> 20} MiB).</p>')


SECTION_LABEL_WORDS = 3


def section_label(tags: list[str], moods: list[str], short=str) -> list[str]:
    """What a section's block says: its moods, then its other tags, at most SECTION_LABEL_WORDS
    (short names)."""
    words = [short(m) for m in moods] + [short(t) for t in tags if t not in moods]
    return words[:SECTION_LABEL_WORDS]


def _escape(value) -> str:
    return html.escape(str(value), quote=True)


def render_html(taggram: Taggram, audio_path: str | None, page_dir: str | None = None,
                embed_audio: bool = True, similar_script: str | None = None) -> str:
    """The listening page of one tagged file, as one HTML document (self-contained but for a
    large audio file, linked relative to page_dir, the folder the page is written to, and the
    lists of similar tracks and moments, loaded from `similar_script` beside it if there)."""
    from jaxtag.data.tags import short_tag
    name = os.path.basename(taggram.source)
    decided = taggram.decisions()
    sections = [dict(section.to_dict(), label=", ".join(section_label(section.tags, section.moods, short_tag)))
                for section in taggram.sections() or []]
    payload = {"duration": taggram.duration, "tags": taggram.tags, "start": taggram.start.tolist(),
               "end": taggram.end.tolist(), "bounds": [round(float(b), 4) for b in taggram.bounds()],
               "scores": [[round(float(x), 4) for x in row] for row in taggram.scores],
               "active": decided.active.astype(int).tolist(),
               "bpm": [None if not np.isfinite(b) else round(float(b), 1) for b in
                       (taggram.tempo.windows if taggram.tempo is not None else [])],
               "sections": sections}
    tempo = taggram.tempo
    if tempo is None or not np.isfinite(tempo.bpm):
        tempo_text = "tempo: none found"
    else:
        tempo_text = f"tempo: {tempo.bpm:.0f} BPM ({'steady' if tempo.stable else 'not steady'})"
    rows = "".join(f'<div class="tag">{_escape(t)}</div>' for t in taggram.tags)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>{_escape(name)} - jaxtag</title>
<style>
{STYLE}</style></head><body>
<h1>{_escape(name)}</h1>
<div class="meta">duration {taggram.duration:.1f} s &middot; model {_escape(taggram.model)} &middot;
{len(taggram.tags)} tags &middot; {len(taggram.start)} windows</div>
<div class="meta" id="track">tags: <span id="track-tags">{_escape(", ".join(decided.track_tags) or "none")}</span>
&middot; moods: <span id="track-moods">{_escape(", ".join(decided.moods) or "none")}</span>
&middot; <span id="track-tempo">{tempo_text}</span></div>
{_player(audio_path, name, page_dir, embed_audio)}
<div id="sections"></div>
<div id="view"><div id="labels">{rows}</div>
<div id="plot"><canvas id="taggram"></canvas><div id="cursor" data-time="0"></div><div id="axis"></div></div></div>
<div id="now">Active now: <em id="now-tags"></em> <span id="now-bpm"></span></div>
<div id="like"><div><h2>Similar tracks</h2><ol id="similar-tracks"></ol></div>
<div><h2>More moments like this</h2><ol id="similar-moments"></ol></div></div>
<script type="application/json" id="taggram-data">{_json_for_script(payload)}</script>
{f'<script src="{_escape(urllib.parse.quote(similar_script))}"></script>' if similar_script else ""}
<script>
{SCRIPT}</script></body></html>
"""
