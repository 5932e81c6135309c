"""Tagging audio with a trained (or pretrained) model: the Tagger, its Taggram, and the files the
tag command writes (JSON, CSV, PNG, HTML listening page)."""
