"""OUT/index.html: the tagged library on one self-contained page. A table of every file (linking to
its own listening page), filtered by a tag (the files that carry it: their track tags and moods,
as the decision policy gave them and --write_tags writes them; or, ticked, also the files where it
is on at some time) and sorted by the tag's strength; each row also links to the file's strongest
section for that tag.

The state is in the address too (index.html#tag=sad&sort=desc), so a view can be bookmarked.
Every name is escaped: the data goes in a JSON block whose '<', '>' and '&' are escaped, and the
script builds the table with textContent, never innerHTML.
"""
from __future__ import annotations

import html

import numpy as np

from jaxtag.tagging.html_page import _json_for_script

STYLE = """\
body { font-family: system-ui, sans-serif; margin: 16px; color: #0f172a; }
h1 { font-size: 18px; margin: 0 0 4px; } .meta { color: #475569; font-size: 13px; margin-bottom: 10px; }
#controls { margin-bottom: 10px; display: flex; gap: 12px; align-items: center; font-size: 14px; }
table { border-collapse: collapse; width: 100%; font-size: 13px; }
th, td { text-align: left; padding: 4px 8px; border-bottom: 1px solid #e2e8f0; vertical-align: top; }
th { background: #f1f5f9; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr[hidden] { display: none; } .tags { color: #334155; }
"""

SCRIPT = """\
const L = JSON.parse(document.getElementById("library-data").textContent);
const select = document.getElementById("tag"), sortButton = document.getElementById("sort");
const body = document.querySelector("#library tbody");
let order = "";   // "", "desc" or "asc": by the score column
for (const tag of L.tags) { const o = document.createElement("option"); o.value = tag; o.textContent = tag; select.appendChild(o); }
function cell(tr, text, cls) { const td = document.createElement("td"); td.textContent = text; if (cls) td.className = cls; tr.appendChild(td); return td; }
function link(td, href, text) { const a = document.createElement("a"); a.href = href; a.textContent = text; td.appendChild(a); return a; }
// A page's address from its name ("Artist/Album/track"): each folder and file name escaped alone.
const page = name => name.split("/").map(encodeURIComponent).join("/") + ".html";
const column = Object.fromEntries(L.tags.map((t, j) => [t, j]));   // per-file values are arrays in tag order
function score(f, tag) { return tag ? f.strength[column[tag]] : f.top_tags[0][1]; }
// A file has a tag when it carries it (a track tag: the policy's decision); ticked, also when the
// tag is on at some time in it.
const anyTime = document.getElementById("anytime");
function has(f, tag) { return !tag || f.track_tags.includes(tag) || (anyTime.checked && f.share[column[tag]] > 0); }
function render() {
  const tag = select.value;
  const files = L.files.slice();
  if (order) files.sort((a, b) => (order === "desc" ? -1 : 1) * (score(a, tag) - score(b, tag)) || a.path.localeCompare(b.path));
  body.textContent = "";
  for (const f of files) {
    const tr = document.createElement("tr");
    tr.dataset.name = f.name;
    link(cell(tr, ""), page(f.name), f.path.split(/[\\\\/]/).pop()).className = "track";
    cell(tr, f.duration.toFixed(1) + " s", "num");
    cell(tr, f.track_tags.join(", "), "tags");
    cell(tr, f.moods.join(", "), "moods");
    cell(tr, f.top_tags.map(([t, s]) => t + " " + s.toFixed(2)).join(", "), "top");
    cell(tr, score(f, tag).toFixed(3), "num score");
    cell(tr, tag ? Math.round(100 * f.share[column[tag]]) + "%" : "", "num");
    const like = cell(tr, "", "similar");
    for (const [other, s] of f.similar || []) {
      link(like, page(other), other.split("/").pop()).title = "cosine " + s.toFixed(2);
      like.appendChild(document.createElement("br"));
    }
    const best = cell(tr, "");
    if (tag) {
      const j = column[tag], start = f.strongest_start[j];
      link(best, page(f.name) + "#t=" + start, start.toFixed(1) + "-" + f.strongest_end[j].toFixed(1) + " s").className = "strongest";
    }
    if (!has(f, tag)) tr.hidden = true;
    body.appendChild(tr);
  }
  document.getElementById("shown").textContent = String(files.filter(f => has(f, tag)).length);
  sortButton.textContent = order === "desc" ? "score: highest first" : order === "asc" ? "score: lowest first" : "sort by score";
  history.replaceState(null, "", "#tag=" + encodeURIComponent(tag) + "&sort=" + order + (anyTime.checked ? "&any=1" : ""));
}
select.addEventListener("change", render);
anyTime.addEventListener("change", render);
sortButton.addEventListener("click", () => { order = order === "desc" ? "asc" : "desc"; render(); });
const state = new URLSearchParams(location.hash.slice(1));
if (state.get("tag") && L.tags.includes(state.get("tag"))) select.value = state.get("tag");
if (["desc", "asc"].includes(state.get("sort"))) order = state.get("sort");
anyTime.checked = state.get("any") === "1";
render();
"""


def _page_row(row: dict) -> dict:
    """What the page needs of a summary row (per-tag values as arrays in tag order)."""
    keys = ("path", "name", "duration", "top_tags", "track_tags", "moods", "strength", "share", "strongest_start",
            "strongest_end", "similar")
    return {k: (v.round(4).tolist() if isinstance(v, np.ndarray) else v) for k, v in row.items() if k in keys}


def write_index(f, rows: list[dict], tags: list[str], model: str, decisions: str = "",
                others: dict | None = None) -> None:
    """The library page of the summary rows (jaxtag.library.summary.track_summary), to a binary
    file, a row at a time; others {model name: files}: left out, tagged with another model."""
    esc = lambda s: html.escape(str(s), quote=True)
    left_out = "".join(f' &middot; <span class="other-model">{n} file(s) tagged with {esc(m)} not shown</span>'
                       for m, n in sorted((others or {}).items()))
    total = sum(r["duration"] for r in rows)
    f.write(f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>jaxtag library - {len(rows)} files</title>
<style>
{STYLE}</style></head><body>
<h1>jaxtag library</h1>
<div class="meta">{len(rows)} files &middot; {total / 3600:.2f} hours &middot; model {esc(model)} &middot;
{len(tags)} tags{" &middot; decisions: " + esc(decisions) if decisions else ""}{left_out}</div>
<div id="controls"><label>tag <select id="tag"><option value="">(any)</option></select></label>
<label><input type="checkbox" id="anytime"> or on at some time</label>
<button id="sort" type="button">sort by score</button> <span><span id="shown"></span> shown</span></div>
<table id="library"><thead><tr><th>file</th><th>duration</th><th>tags</th><th>moods</th><th>top tags (strength)</th>
<th>score</th><th>time on</th><th>similar tracks</th><th>strongest section</th></tr></thead><tbody></tbody></table>
<script type="application/json" id="library-data">{{"tags": {_json_for_script(tags)}, "files": [""".encode())
    for i, row in enumerate(rows):
        f.write(((",\n" if i else "\n") + _json_for_script(_page_row(row))).encode())
    f.write(f"""]}}</script>
<script>
{SCRIPT}</script></body></html>
""".encode())
