"""The "Your data to a microcontroller-sized device" walk of ``docs/deploy.md``, on small data
(issue 23; the walk was the README's until issue 24 made the README a first page).

The same commands in the same order, through the same entry points: the user's folder from a
PACS-layout archive (``scripts/pacs_folder.py``), ``entropi run`` with ``--target
imagefolder:DIR`` (a tiny config instead of the quickstart), ``entropi select --flash 1MB --ram
512KB``, ``entropi bundle``, then ``entropi-device train``, ``eval`` and ``predict`` (on a folder
and on one image) in a separate Python process in which torch, onnx and the converters cannot be
imported (the device venv has none of them). To stay short, select's deployment table is
built for the compact-dense form only (float32 and int8 rows both; every row is a TFLite
conversion). The walk's commands are parsed from ``docs/deploy.md`` and each must be one this
test ran (program, subcommand, flags), so the two cannot drift apart.

References: eval's accuracy against the share of predict's per-file results whose name is the
file's class folder; predict on one image against the same file in the folder's results.
"""

from __future__ import annotations

import io
import json
import re
import shlex
import subprocess
import sys
import tarfile
import textwrap
import tomllib
from pathlib import Path

import numpy as np
import pytest
from scripts_loader import load_script
from test_device_imports import SCRIPT as IMPORTS_SCRIPT

ROOT = Path(__file__).resolve().parents[1]
WALK = ROOT / "docs" / "deploy.md"  # the page that holds the walk
SECTION = "## Your data to a microcontroller-sized device"
CLASSES = ("dog", "guitar", "house")
FLASH, RAM = "1MB", "512KB"

CONFIG = """\
name = "tiny"
seed = 0
device = "cpu"

[data]
source = "imagefolder:{source}"
target = "imagefolder:{source}"

[pretrain]
arch = "smallnet"
epochs = 2
batch_size = 16
lr = 0.05

[prune]
keep_per_round = 0.5
alpha_min = 0.5
retrain_epochs = 1

[probe]
epochs = 3
batch_size = 16

[export]
formats = ["onnx"]
verify_images = 4
calibration_images = 8

[device_train]
epochs = 2
budget = "64KB"
batch_size = 8
"""

# entropi-device's CLI in a process where torch, onnx and the converters cannot be imported (the
# blocker of test_device_imports.py, then the commands)
DEVICE = IMPORTS_SCRIPT.split("import entropi.device as dev")[0] + textwrap.dedent(
    """
    import contextlib, io, json

    from entropi.device.cli import main

    results = []
    for argv in json.loads(sys.argv[1]):
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            rc = main(argv)
        results.append({"rc": rc, "out": out.getvalue()})
    leaked = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
    print(json.dumps({"results": results, "leaked": leaked}))
    """
)


def _pacs_archive(path: Path) -> Path:
    """A pacs32.tar.gz in PACS's layout: 3 classes of colour-coded photos, train/val rows in
    index.csv, and a sketch domain the folder must leave out."""
    from PIL import Image

    rng = np.random.default_rng(1)
    rows = ["path,class,domain,split"]
    with tarfile.open(path, "w:gz") as tar:
        for domain in ("photo", "sketch"):
            for c, cls in enumerate(CLASSES):
                for i in range(14):
                    img = rng.integers(0, 80, (32, 32, 3))
                    img[..., c] += 120
                    buf = io.BytesIO()
                    Image.fromarray(img.astype(np.uint8)).save(buf, format="PNG")
                    name = f"{domain}/{cls}/pic_{i:03d}.png"
                    info = tarfile.TarInfo(f"pacs32/{name}")
                    info.size = len(buf.getvalue())
                    tar.addfile(info, io.BytesIO(buf.getvalue()))
                    rows.append(f"{name},{cls},{domain},{'val' if i < 4 else 'train'}")
        index = ("\n".join(rows) + "\n").encode()
        info = tarfile.TarInfo("pacs32/index.csv")
        info.size = len(index)
        tar.addfile(info, io.BytesIO(index))
    return path


def _shape(argv: list[str]) -> tuple[str, str, frozenset[str]]:
    """(program, subcommand or script, flags) of a command line."""
    prog = Path(argv[0]).name
    rest = argv[1:]
    if prog.startswith("python"):
        prog, rest = Path(rest[0]).name, rest[1:]
        sub = ""
    else:
        sub = rest[0]
    return prog, sub, frozenset(a for a in rest if a.startswith("--"))


def _readme_commands() -> list[list[str]]:
    """The commands of the walk section's shell blocks (comments and set-up lines dropped)."""
    text = WALK.read_text()
    assert SECTION in text, f"{WALK.relative_to(ROOT)} has no section {SECTION!r}"
    section = text.split(SECTION, 1)[1].split("\n## ", 1)[0]
    cmds = []
    for block in re.findall(r"```bash\n(.*?)```", section, re.S):
        for line in block.splitlines():
            for part in line.split("&&"):
                argv = shlex.split(part, comments=True)
                if argv and Path(argv[0]).name in ("entropi", "entropi-device", "python"):
                    cmds.append(argv)
    return cmds


@pytest.mark.slow
def test_the_readme_walk_on_small_data(image_folder, tmp_path, capsys, monkeypatch):
    pytest.importorskip("litert_torch")  # select builds TFLite files
    pytest.importorskip("ai_edge_litert")
    from entropi.host import cli
    from entropi.host.deployment import fit as deploy

    # select's table keeps one form (float32 and int8 both): each row is a TFLite conversion
    table = deploy.deployment_table
    monkeypatch.setattr(
        deploy, "deployment_table", lambda *a, **k: table(*a, **k, forms=("compact-dense",))
    )
    ran: list[list[str]] = []

    def host(prog: str, argv: list[str]) -> str:
        ran.append([prog, *argv])
        main = load_script("pacs_folder").main if prog == "python" else cli.main
        if prog == "python":
            main(argv[1:])
        else:
            assert main(argv) == 0
        return capsys.readouterr().out

    # 1. the user's folder; 2. run; 3. select with flash and RAM; 4. bundle
    data, run, bundle, head = (str(tmp_path / n) for n in ("mydata", "run", "bundle", "head"))
    archive = _pacs_archive(tmp_path / "pacs32.tar.gz")
    printed = host("python", ["scripts/pacs_folder.py", data, "--archive", str(archive)])
    assert f"{data}/train: 30 images in 3 class folders" in printed
    config = tmp_path / "tiny.toml"
    config.write_text(CONFIG.format(source=image_folder))
    host("entropi", ["run", str(config), "--target", f"imagefolder:{data}", "--out", run])
    results = json.loads(Path(run, "results.json").read_text())
    sizes = results["data_sizes"]["target"]
    assert sizes["train_images"] == sizes["train_available"] == 30  # the whole folder, no cap
    printed = host("entropi", ["select", run, "--flash", FLASH, "--ram", RAM])
    pick = json.loads(Path(run, "results.json").read_text())["deployment"]["pick"]
    assert pick["flash_bytes"] <= 1 << 20 and pick["ram_bytes"] <= 512 << 10
    assert f"fits the device: rung {pick['rung']} as {pick['form']} {pick['dtype']}" in printed
    host("entropi", ["bundle", "--run", run, "--out", bundle])
    manifest = json.loads(Path(bundle, "manifest.json").read_text())
    (encoder,) = manifest["encoders"].values()
    assert encoder["dtype"] == pick["dtype"]
    assert manifest["class_names"] == list(CLASSES)

    # 5-6. the device: train, eval, predict on the whole test split, a flat folder, one image
    image = sorted(Path(data, "test", "guitar").iterdir())[0]
    device = [
        ["train", "--bundle", bundle, "--data", data, "--out", head],
        ["eval", "--bundle", bundle, "--head", head, "--data", data],
        ["predict", "--bundle", bundle, "--head", head, "--data", data],
        ["predict", "--bundle", bundle, "--head", head, "--data", str(image.parent)],
        ["predict", "--bundle", bundle, "--head", head, "--data", str(image), "--top", "3"],
    ]
    ran += [["entropi-device", *argv] for argv in device]
    proc = subprocess.run(
        [sys.executable, "-c", DEVICE, json.dumps(device)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.splitlines()[-1])
    assert out["leaked"] == []
    assert [r["rc"] for r in out["results"]] == [0] * len(device), proc.stderr
    train, ev, split, flat, one = (json.loads(r["out"]) for r in out["results"])
    assert train["peak_bytes"] <= 256 * 1024  # the device's default budget
    assert ev["samples"] == len(split) == 12
    hits = [r["name"] == Path(r["file"]).parent.name for r in split]
    assert ev["accuracy"] == pytest.approx(np.mean(hits))
    assert [r["file"] for r in flat] == sorted(str(p) for p in image.parent.iterdir())
    (single,) = one
    (same,) = [r for r in split if r["file"] == str(image)]
    assert single["name"] == same["name"] == single["top"][0]["name"]
    assert single["probability"] == pytest.approx(same["probability"], rel=1e-4)  # batch of 1
    top = [t["probability"] for t in single["top"]]
    assert len(top) == 3 and top == sorted(top, reverse=True) and sum(top) <= 1 + 1e-6
    assert {t["name"] for t in single["top"]} <= set(CLASSES)

    # the page's commands are this walk's
    shapes = [_shape(argv) for argv in ran]
    readme = _readme_commands()
    assert len(readme) >= 8
    for argv in readme:
        prog, sub, flags = _shape(argv)
        if sub == "select":  # the same device as this test's
            assert argv[argv.index("--flash") + 1] == FLASH and argv[argv.index("--ram") + 1] == RAM
        assert any(s[:2] == (prog, sub) and flags <= s[2] for s in shapes), (
            f"{WALK.relative_to(ROOT)} command not in the walk test: {shlex.join(argv)}"
        )


def test_the_readme_device_install_has_no_torch_and_reads_images():
    """Step 5's pip command installs an extra that pulls an interpreter and Pillow, not torch
    (nor another extra that would)."""
    text = WALK.read_text().split(SECTION, 1)[1].split("\n## ", 1)[0]
    (extra,) = re.findall(r'devenv/bin/pip install -q "\.\[(\w+)\]"', text)
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = extras["optional-dependencies"][extra]
    names = {re.split(r"[<>=\[ ]", r, maxsplit=1)[0].lower() for r in reqs}
    assert "pillow" in names and "ai-edge-litert" in names
    assert not names & {"torch", "entropi", "onnx", "litert-torch"}, names


def test_pacs_folder_writes_one_domain_and_refuses_to_overwrite(tmp_path, capsys):
    script = load_script("pacs_folder")
    archive = _pacs_archive(tmp_path / "pacs32.tar.gz")
    out = tmp_path / "mydata"
    counts = script.main([str(out), "--archive", str(archive)])
    assert counts == {"train": dict.fromkeys(CLASSES, 10), "test": dict.fromkeys(CLASSES, 4)}
    with tarfile.open(archive) as tar:  # byte for byte, the photo domain only
        src = tar.extractfile("pacs32/photo/house/pic_000.png").read()
    assert (out / "test" / "house" / "pic_000.png").read_bytes() == src
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mydata", "pacs32.tar.gz"]
    with pytest.raises(SystemExit) as e:
        script.main([str(out), "--archive", str(archive)])
    assert e.value.code == 2 and "exists" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        script.main([str(tmp_path / "other"), "--archive", str(tmp_path / "none.tar.gz")])
    assert e.value.code == 2 and "no PACS archive" in capsys.readouterr().err


def test_pacs_folder_leaves_nothing_when_the_index_lists_a_missing_image(tmp_path, capsys):
    archive = tmp_path / "pacs32.tar.gz"
    index = b"path,class,domain,split\nphoto/dog/a.png,dog,photo,train\n"
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo("pacs32/index.csv")
        info.size = len(index)
        tar.addfile(info, io.BytesIO(index))
    with pytest.raises(SystemExit) as e:
        load_script("pacs_folder").main([str(tmp_path / "d"), "--archive", str(archive)])
    assert e.value.code == 2 and "missing" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["pacs32.tar.gz"]  # no folder, no temporary
