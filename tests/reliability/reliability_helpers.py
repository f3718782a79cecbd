"""Helpers shared by the reliability tests: crafted malicious pickles, tiny configs, record corruption."""

from __future__ import annotations

import builtins
import os
import shlex
from pathlib import Path

from oaml.config import OamlConfig, config_from_dict, load_config_file
from oaml.data.recordio import RecordReader, RecordWriter, pack_record, unpack_record

ROOT = Path(__file__).resolve().parents[2]


class SystemExploit:
    """Unpickling this runs ``touch <marker>`` through ``os.system``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


class ExecExploit:
    """Unpickling this creates ``<marker>`` through ``builtins.exec``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return builtins.exec, (f"open({str(self.marker)!r}, 'w').close()",)


EXPLOITS = {"os.system": SystemExploit, "builtins.exec": ExecExploit}


def tiny_config(data_root: Path, train: str, out: Path, **flat: object) -> OamlConfig:
    """The packaged ``tiny_cpu`` recipe shrunk to this suite's 8 identities: batch 8, one epoch, no validation,
    main-process loading, no augmentation."""
    base = {"data_root": str(data_root), "train_data_path": train, "val_data_path": "absent", "batch_size": 8,
            "epochs": 1, "lr_milestones": "4", "warmup_epochs": 0, "k_nearest": 2, "num_workers": 0,
            "output_dir": str(out), "log_every_n_steps": 1, "mask_prob": 0.0, "flip_prob": 0.0, "prefix": "default"}
    return config_from_dict(load_config_file("tiny_cpu"), base | flat)


def replace_payload(rec_path: Path, key: int, payload: bytes) -> None:
    """Rewrite ``rec_path`` (and its .idx) with record ``key``'s image bytes replaced; its header is kept."""
    reader = RecordReader(rec_path)
    bodies = {k: reader.read(k) for k in reader.keys}
    reader.close()
    header, _ = unpack_record(bodies[key])
    bodies[key] = pack_record(header, payload)
    with RecordWriter(rec_path) as writer:
        for k, body in bodies.items():
            writer.write(k, body)
