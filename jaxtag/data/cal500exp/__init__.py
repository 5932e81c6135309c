"""TFDS builder for CAL500exp-layout corpora (and jaxtag's synthetic corpus)."""
from jaxtag.data.cal500exp.cal500exp_dataset_builder import Cal500exp, Cal500expConfig, PreparedSettings
