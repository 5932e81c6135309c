"""jaxtag: time-varying semantic music tagging in JAX/Flax (Shan, "From music to semantics")."""
from setuptools import find_namespace_packages, find_packages, setup

setup(
    name="jaxtag",
    version="0.1.0",
    description="Learn time-varying semantic tags (emotion first) from music audio with JAX/Flax.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    # beetsplug: jaxtag's beets plugin, in beets' namespace package (no __init__.py, as beets wants).
    packages=find_packages(include=["jaxtag", "jaxtag.*"]) + find_namespace_packages(include=["beetsplug"]),
    include_package_data=True,
    # The pretrained models' reference statistics (calibrated decisions; scripts/real_music_report.py).
    package_data={"jaxtag.tagging": ["calibration/*.json", "calibration/*.npz"]},
    install_requires=[
        "jax>=0.4.30",
        "flax>=0.10",
        "optax>=0.2.3",
        "orbax-checkpoint>=0.11",
        "librosa>=0.10.2",
        "soundfile>=0.12.1",
        "threadpoolctl>=3.1",  # the decoding workers' numpy BLAS on one thread
        "numpy>=1.26",
        "tensorflow-cpu>=2.16",
        "tensorflow-datasets>=4.9.6",
        "importlib_resources",  # imported by tensorflow-datasets but not declared by it
        "absl-py>=2.1",
        "ml-collections>=0.1.1",
        "matplotlib>=3.8",
        "tensorboard>=2.16",  # tf.summary event files; tensorflow-cpu does not pull it in
        "tqdm>=4.66",         # the tag CLI's progress bar
        "scikit-learn>=1.4",  # ROC-AUC, average precision, the F1-optimal threshold
        "soxr>=0.3",          # streaming resampling of long files (librosa's own resampler)
        "mutagen>=1.45",      # --write_tags: tags into MP3, WAV, FLAC, Ogg and M4A files
        "av>=14",             # FFmpeg's decoders for M4A/AAC (iTunes, Apple Music), which libsndfile lacks
        "faiss-cpu>=1.8",     # similar tracks and moments: exact and inverted-file indexes
        "ruptures>=1.1.9",    # sections: kernel change-point detection (KernelCPD, PELT) on the window embeddings
        "openvino>=2025.0",   # bfloat16 tagging on CPUs with AMX (jaxtag.tagging.precision; XLA:CPU upcasts bf16)
    ],
    extras_require={
        # dill: imported by tfds.testing; beets, Beam and Dask: the plugin's, the Beam paths' and the
        # Dask cluster's tests.
        "test": ["pytest>=8", "pytest-xdist>=3.5", "dill", "beets>=2.12", "apache-beam[dask]>=2.78"],
        "beets": ["beets>=2.12"],   # the beets plugin (beetsplug/jaxtag.py)
        "beam": ["apache-beam>=2.60"],  # preparing and tagging on Apache Beam (jaxtag.beam)
        # ... on a Dask cluster (runner=dask: jaxtag.beam_dask, built on Beam 2.78's DaskRunner)
        "dask": ["apache-beam[dask]>=2.78"],
    },
    entry_points={
        "console_scripts": [
            "jaxtag-train=jaxtag.main:run",
            "jaxtag-prepare=jaxtag.prepare:run",
            "jaxtag-tag=jaxtag.tag:run",
            "jaxtag-report=jaxtag.report:run",
            "jaxtag-pretrained=jaxtag.pretrained.__main__:run",
            "jaxtag-similar=jaxtag.similar:run",
            "jaxtag-playlists=jaxtag.playlists:run",
            "jaxtag-library=jaxtag.library.__main__:run",
        ],
    },
)
