"""``oaml occlude``: the occluded copy of a ``.bin`` or an aligned folder, its ground truth (occlusion.npz), the
manifest, byte-identical reruns, placement on landmarks.tsv, the pairs file of the copy, and one-line errors."""

from __future__ import annotations

import dataclasses
import json
import pickle
import shlex
from pathlib import Path

import cv2
import numpy as np
import pytest

from oaml.cli.main import main
from oaml.constants import ARCFACE_TEMPLATE
from oaml.data.landmarks import aligned_landmarks
from oaml.data.masks import visibility_grid
from oaml.data.occluders import seeded_occlusion
from oaml.data.pairs import Pair, parse_pair_list, write_pair_list
from oaml.data.verification_sets import load_bin
from oaml.errors import ConfigError, DataError
from oaml.evaluation.evaluate import EvalOptions, evaluate
from oaml.fileio import sha256_file
from oaml.tools.occlude import occlude_set, occlusion_protocol

NAMES = ("Ann_Bee", "Cy_Dee", "Ed_Fox", "Gu_Ho")


def _face(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.integers(30, 220, size=3)
    return np.clip(base + rng.integers(-30, 31, (112, 112, 3)), 0, 255).astype(np.uint8)


@pytest.fixture
def small_bin(tmp_path: Path) -> Path:
    images = [cv2.imencode(".jpg", _face(k))[1].tobytes() for k in range(24)]
    path = tmp_path / "src" / "lfw.bin"
    path.parent.mkdir()
    path.write_bytes(pickle.dumps((images, [k % 2 == 0 for k in range(12)]), protocol=2))
    return path


@pytest.fixture
def lfw_folder(tmp_path: Path) -> Path:
    """An LFW-layout folder (``Name/Name_000n.jpg``), an LFW pairs.txt in which images recur on both sides, and an
    ``oaml align`` landmarks.tsv whose source landmarks are a turned, shifted template."""
    root = tmp_path / "lfw"
    rows = ["aligned\tsource\tdet_prob\tlex\tley\trex\trey\tnx\tny\tlmx\tlmy\trmx\trmy\tmean_dist_px_vs_template"]
    angle = np.deg2rad(8.0)
    turn = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]) * 2.0
    for k, name in enumerate(NAMES):
        (root / name).mkdir(parents=True)
        for n in (1, 2, 3):
            rel = f"{name}/{name}_{n:04d}.jpg"
            cv2.imwrite(str(root / rel), _face(10 * k + n))
            source = (ARCFACE_TEMPLATE + np.array([[1.5, 0.0], [0.0, 2.0], [3.0, 0.0], [0.0, 0.0], [0.0, 0.0]])
                      ) @ turn.T + (40.0, 20.0)
            rows.append("\t".join([rel, rel, "0.99", *(f"{v:.3f}" for v in source.ravel()), "1.0"]))
    (root / "landmarks.tsv").write_text("\n".join(rows) + "\n")
    lines = ["2\t3"]  # 2 folds x (3 same + 3 different)
    for fold in range(2):
        lines += [f"{NAMES[fold]}\t1\t2", f"{NAMES[fold]}\t2\t3", f"{NAMES[fold + 2]}\t1\t3"]
        lines += [f"{NAMES[fold]}\t1\t{NAMES[fold + 1]}\t2", f"{NAMES[fold + 1]}\t3\t{NAMES[fold + 2]}\t1",
                  f"{NAMES[3]}\t2\t{NAMES[fold]}\t3"]
    (root / "pairs.txt").write_text("\n".join(lines) + "\n")
    return root


def _npz(folder: Path) -> dict[str, np.ndarray]:
    with np.load(folder / "occlusion.npz", allow_pickle=False) as npz:
        return {key: npz[key] for key in npz.files}


def test_bin_copy_ground_truth_and_manifest(small_bin: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    summary = occlude_set(small_bin, out, "mask+sunglasses", seed=3, progress=False, command="oaml occlude x")
    assert (summary.kind, summary.num_pairs, summary.num_images, summary.num_occluded) == ("bin", 12, 24, 24)
    source_images, issame = load_bin(small_bin)
    images, copied_issame = load_bin(out / "lfw.bin")
    assert np.array_equal(issame, copied_issame) and len(images) == 24
    truth = _npz(out)
    assert truth["keys"].tolist() == [str(k) for k in range(24)] and str(truth["source"]) == "lfw.bin"
    assert truth["occluder"].tolist() == ["mask", "sunglasses"] * 12 and str(truth["protocol"]) == "mask+sunglasses"
    assert truth["visibility"].shape == (24, 112, 112) and truth["visibility"].dtype == np.uint8
    assert set(np.unique(truth["visibility"]).tolist()) == {0, 255}
    np.testing.assert_array_equal(truth["grid"], visibility_grid(truth["visibility"] / 255.0))
    for k in (0, 5):  # pixels and maps are exactly those of the protocol drawn in memory
        source = cv2.imdecode(np.frombuffer(source_images[k], np.uint8), cv2.IMREAD_COLOR)
        expected, visibility = seeded_occlusion(source, "mask" if k % 2 == 0 else "sunglasses", 3, k)
        assert np.array_equal(cv2.imdecode(np.frombuffer(images[k], np.uint8), cv2.IMREAD_COLOR), expected)
        assert np.array_equal(truth["visibility"][k] == 255, visibility == 1)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["command"] == "oaml occlude x" and manifest["counts"] == {"pairs": 12, "images": 24,
                                                                              "occluded": 24}
    assert manifest["files"] == {name: sha256_file(out / name) for name in ("lfw.bin", "occlusion.npz")}
    assert manifest["source"]["sha256"] == sha256_file(small_bin) and manifest["protocol"]["side"] is None


def test_reruns_are_byte_identical_and_the_seed_matters(small_bin: Path, tmp_path: Path) -> None:
    runs = {}
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        occlude_set(small_bin, tmp_path / name, "kn95", seed=seed, progress=False, command="same")
        runs[name] = {p.name: p.read_bytes() for p in (tmp_path / name).iterdir()}
    assert runs["a"] == runs["b"]
    assert runs["a"]["lfw.bin"] != runs["c"]["lfw.bin"] and runs["a"]["occlusion.npz"] != runs["c"]["occlusion.npz"]
    images, _ = load_bin(tmp_path / "a" / "lfw.bin")
    assert images[0] == load_bin(small_bin)[0][0]  # one-sided: the first images keep their bytes
    assert _npz(tmp_path / "a")["occluder"].tolist() == ["", "kn95"] * 12


def test_lfw_folder_side_both_keeps_the_layout_and_pairs_txt(lfw_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    summary = occlude_set(lfw_folder, out, "sunglasses", side="both", seed=0, progress=False)
    assert summary.num_pairs == 12 and summary.num_images == summary.num_occluded
    assert (out / "pairs.txt").read_bytes() == (lfw_folder / "pairs.txt").read_bytes()
    truth = _npz(out)
    assert all(key.endswith(".png") and (out / key).is_file() for key in truth["keys"].tolist())
    table = aligned_landmarks(lfw_folder)
    first = str(truth["source_keys"][0])
    np.testing.assert_allclose(truth["landmarks"][0], table[first])  # placed on the crop's own landmarks
    expected, _ = seeded_occlusion(cv2.imread(str(lfw_folder / first)), "sunglasses", 0, 0, table[first])
    assert np.array_equal(cv2.imread(str(out / str(truth["keys"][0]))), expected)
    template, _ = seeded_occlusion(cv2.imread(str(lfw_folder / first)), "sunglasses", 0, 0)
    assert not np.array_equal(template, expected)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["protocol"]["placement"] == "landmarks.tsv" and manifest["source"]["pairs_format"] == "lfw"


def test_one_sided_folder_writes_variants_and_a_pair_list(lfw_folder: Path, tmp_path: Path,
                                                          tiny_ckpt: Path) -> None:
    out = tmp_path / "out"
    summary = occlude_set(lfw_folder, out, "eyes", seed=5, progress=False)
    pairs = parse_pair_list(out / "pairs.txt")  # an image on both sides needs a clean and an occluded copy
    assert len(pairs) == 12 and all(p.path_b.endswith(".eyes.png") or p.path_b.endswith(".png") for p in pairs)
    assert all(p.path_a.endswith(".jpg") for p in pairs)  # clean first images keep their files
    assert (out / "Ann_Bee/Ann_Bee_0002.jpg").read_bytes() == (lfw_folder / "Ann_Bee/Ann_Bee_0002.jpg").read_bytes()
    assert (out / "Ann_Bee/Ann_Bee_0002.eyes.png").is_file() and summary.num_occluded < summary.num_images
    options = EvalOptions(progress=False, plots=False, batch_size=8, mask_seed=5)
    copy = evaluate(tiny_ckpt, out, tmp_path / "r1", pairs_path=out / "pairs.txt", options=options).results
    drawn = evaluate(tiny_ckpt, lfw_folder, tmp_path / "r2", pairs_path=lfw_folder / "pairs.txt",
                     options=dataclasses.replace(options, occluders=("eyes",))).results
    for method in ("adaface", "qaconv", "combined"):  # the copy is the protocol, pixel for pixel (batches differ)
        ours, theirs = copy["methods"][method], drawn["methods"][f"{method}_eyes"]
        assert ours["auc"] == theirs["auc"]
        for key in ("mean", "min", "max"):
            assert ours["genuine_scores"][key] == pytest.approx(theirs["genuine_scores"][key], abs=1e-5)
    assert copy["occlusion_head"]["occlusion.npz"]["images"] == summary.num_occluded
    assert copy["occlusion_head"]["occlusion.npz"]["auc"] == pytest.approx(drawn["occlusion_head"]["eyes"]["auc"])


def test_pair_list_source_and_a_folder_without_pairs(lfw_folder: Path, tmp_path: Path) -> None:
    files = sorted(p.relative_to(lfw_folder).as_posix() for p in lfw_folder.rglob("*.jpg"))
    write_pair_list(tmp_path / "list.txt", [Pair(files[0], files[1], True), Pair(files[2], files[5], False)])
    occlude_set(lfw_folder, tmp_path / "a", "scarf", pairs=tmp_path / "list.txt", progress=False)
    assert [(p.path_a, p.path_b) for p in parse_pair_list(tmp_path / "a" / "pairs.txt")] == [
        (files[0], files[1].replace(".jpg", ".png")), (files[2], files[5].replace(".jpg", ".png"))]
    bare = tmp_path / "bare"
    for rel in files[:3]:
        (bare / rel).parent.mkdir(parents=True, exist_ok=True)
        (bare / rel).write_bytes((lfw_folder / rel).read_bytes())
    summary = occlude_set(bare, tmp_path / "b", "rect25", side="both", progress=False)
    assert (summary.num_pairs, summary.num_occluded) == (0, 3) and not (tmp_path / "b" / "pairs.txt").exists()
    with pytest.raises(ConfigError, match="has no pairs.txt"):
        occlude_set(bare, tmp_path / "c", "rect25", progress=False)


def test_overwrite_rules(small_bin: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    occlude_set(small_bin, out, "nose", progress=False)
    with pytest.raises(ConfigError, match="--overwrite"):
        occlude_set(small_bin, out, "nose", progress=False)
    (out / "notes.txt").write_text("mine")
    occlude_set(small_bin, out, "mouth", overwrite=True, progress=False)
    assert (out / "notes.txt").read_text() == "mine" and _npz(out)["occluder"][1] == "mouth"
    with pytest.raises(ConfigError, match="into the source"):
        occlude_set(small_bin, small_bin.parent, "nose", overwrite=True, progress=False)


@pytest.mark.parametrize("args, fragment", [
    (["--occluder", "visor"], "--occluder: occlusion protocol 'visor': unknown occluder"),
    (["--occluder", "mask+sunglasses", "--side", "both"], "--side both: --occluder mask+sunglasses already"),
    (["--occluder", "rect95"], "1 <= n <= 90"),
])
def test_bad_arguments_are_one_line_errors(small_bin: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                           args: list[str], fragment: str) -> None:
    assert main(["occlude", str(small_bin), str(tmp_path / "out"), *args]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and fragment in error[0]
    assert not (tmp_path / "out").exists()


def test_bad_sources_are_one_line_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "junk.bin").write_bytes(b"not a pickle")
    for source, fragment in (("absent.bin", "source not found"), ("notes.txt", "not a .bin file"),
                             ("junk.bin", "junk.bin")):
        assert main(["occlude", str(tmp_path / source), str(tmp_path / "out"), "--occluder", "mask"]) == 2
        error = capsys.readouterr().err.strip().splitlines()
        assert len(error) == 1 and fragment in error[0], error
    with pytest.raises(DataError):
        occlude_set(tmp_path / "junk.bin", tmp_path / "out2", "mask", progress=False)


def test_cli_records_the_exact_command(small_bin: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["occlude", str(small_bin), str(tmp_path / "out dir"), "--occluder", "glasses", "--side", "both",
            "--seed", "9", "--no-progress"]
    assert main(argv) == 0
    assert "24 images, 24 occluded (glasses+glasses)" in capsys.readouterr().out
    manifest = json.loads((tmp_path / "out dir" / "manifest.json").read_text())
    assert shlex.split(manifest["command"]) == ["oaml", *argv]
    assert manifest["protocol"] == {"name": "glasses+glasses", "first": "glasses", "second": "glasses",
                                    "side": "both", "seed": 9, "placement": "ArcFace template"}
    assert occlusion_protocol("glasses", "both") == occlusion_protocol("glasses+glasses")


@pytest.mark.shared_data
def test_real_bin_occluded_and_evaluated_with_the_head_calibration(shared_data: Path, tiny_ckpt: Path,
                                                                   tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """The README's recipe on real faces: pairs.txt -> .bin (oaml convert), oaml occlude, oaml eval on the copy."""
    folder = shared_data / "lfw_subset10_arcface112"
    source = tmp_path / "lfw.bin"
    assert main(["convert", "pairs-to-bin", str(folder), str(shared_data / "lfw_subset10" / "pairs.txt"),
                 str(source), "--skip-missing"]) == 0
    assert main(["occlude", str(source), str(tmp_path / "occluded"), "--occluder", "mask+sunglasses",
                 "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["eval", "--model-path", str(tiny_ckpt), "--data-path", str(tmp_path / "occluded" / "lfw.bin"),
                 "--output-dir", str(tmp_path / "eval"), "--no-progress", "--no-plots"]) == 0
    printed = capsys.readouterr().out
    assert "occlusion head" in printed and "occlusion.npz" in printed
    head = json.loads((tmp_path / "eval" / "results.json").read_text())["occlusion_head"]["occlusion.npz"]
    assert head["images"] == 2 * 292 and 0.0 <= head["auc"] <= 1.0 and head["occluded_cells"] > 0
    assert "## Occlusion head against the true occlusion" in (tmp_path / "eval" / "report.md").read_text()
