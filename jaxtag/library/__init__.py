"""A music library tagged into an output folder: its state (an SQLite database in OUT/.jaxtag),
the run that brings it up to date (plan, decoding workers and model, writer), the files' own tags,
and the views of the whole library (summary, pages, playlists, similar tracks and moments).

The tagger itself (model, taggram, decisions) is jaxtag.tagging; a library run calls it.
"""
