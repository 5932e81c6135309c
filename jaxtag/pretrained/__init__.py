"""Published weights for jaxtag's models: musicnn's (Pons & Serra 2019, ISC licence), converted for
the Flax port (jaxtag.pretrained.musicnn_weights: fetching, checking, converting, caching).

    from jaxtag.models.musicnn import Musicnn, compress, MUSICNN_FRONTEND
    variables, info = load_pretrained("musicnn-msd")
    logits = Musicnn(num_tags=len(info["tags"])).apply(variables, logmel_patches)

`python -m jaxtag.pretrained fetch` fetches them ahead of use.
"""
from jaxtag.pretrained.musicnn_weights import (
    FETCH_COMMAND, LICENSE_FILE, MANIFEST, NUM_PARAMETERS, PRETRAINED, SOURCE, WHEEL, WHEEL_FILENAME, WHEEL_SHA256,
    PretrainedModel, PretrainedWeightsError, cache_dir, fetch, is_cached, load_pretrained, sha256_file,
    weights_path)

__all__ = ["FETCH_COMMAND", "LICENSE_FILE", "MANIFEST", "NUM_PARAMETERS", "PRETRAINED", "SOURCE", "WHEEL",
           "WHEEL_FILENAME", "WHEEL_SHA256", "PretrainedModel", "PretrainedWeightsError", "cache_dir", "fetch",
           "is_cached", "load_pretrained", "sha256_file", "weights_path"]
