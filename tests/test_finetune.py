"""Fine-tuning modes (host/analysis/finetune.py), their step costs (host/analysis/finetune_cost.py)
and the
`entropi finetune` / `entropi analyze cka` commands on a tiny run folder the test writes."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from synthetic import fake_rung_meta, synthetic_encoder
from torch.nn import functional as F

from entropi.export.rung import Rung, save_rung
from entropi.host.analysis.finetune import (
    FinetuneConfig,
    FinetuneError,
    FinetuneModel,
    Mode,
    block_outputs,
    check_masks,
    finetune,
    list_blocks,
    load_finetuned,
    parse_mode,
    save_finetuned,
    skip_connection,
)
from entropi.host.analysis.finetune_cost import step_flops, step_memory
from entropi.host.analysis.flops import count_step_flops
from entropi.host.analysis.memory import measure_step
from entropi.host.ladder.models import ARCHITECTURES, Classifier, build_encoder, prunable_parameters
from entropi.host.run.config import config_from_dict, config_to_toml
from entropi.host.selection.criteria import nc1

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _data(n_train=32, n_test=12, classes=4, seed=0):
    rng = np.random.default_rng(seed)
    y_train, y_test = np.arange(n_train) % classes, np.arange(n_test) % classes
    x_train = rng.integers(0, 90, (n_train, 32, 32, 3)).astype(np.uint8)
    x_test = rng.integers(0, 90, (n_test, 32, 32, 3)).astype(np.uint8)
    for x, y in ((x_train, y_train), (x_test, y_test)):
        x[np.arange(len(y)), :, :, y % 3] += 120  # class-coloured, learnable
    return SimpleNamespace(
        x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test, classes=list("abcd")
    )


def _pruned_smallnet(alpha=0.3):
    enc = synthetic_encoder("smallnet", alpha=alpha, seed=1)
    masks = {n: p.detach() != 0 for n, p in prunable_parameters(enc)}
    return enc, masks


def test_blocks_are_named_as_the_encoder_names_its_children():
    assert list_blocks(build_encoder("smallnet")) == {
        "0-3": (0, 3),
        "4-7": (4, 7),
        "8-11": (8, 11),
        "12-16": (12, 16),
    }
    assert list(list_blocks(build_encoder("resnet18"))) == ["0-2", *map(str, range(3, 11))]
    for arch in ARCHITECTURES:
        enc = build_encoder(arch)
        covered = [i for a, b in list_blocks(enc).values() for i in range(a, b + 1)]
        assert len(covered) == len(set(covered))  # disjoint, in order
        assert covered == sorted(covered)
        with_params = [i for i, m in enumerate(enc) if any(True for _ in m.parameters())]
        assert set(with_params) <= set(covered)  # every trainable child is in a block


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_scl_skip_shapes_for_every_architecture(arch):
    enc = build_encoder(arch).eval()
    d = enc.feature_dim
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        feats, outs = block_outputs(enc, x)
        assert torch.equal(feats, enc(x))
        for name, (_, last) in list_blocks(enc).items():
            out = outs[last]
            c = out.shape[1]
            skip = skip_connection(out, d)
            assert skip.shape == (2, d), (arch, name)
            pooled = out.mean(dim=(2, 3)) if out.ndim == 4 else out
            torch.testing.assert_close(skip[:, :c], pooled, rtol=1e-5, atol=1e-6)
            assert not skip[:, c:].any()  # zero-padded channels
            model = FinetuneModel(enc, 3, parse_mode(f"scl:{name}", enc)).eval()
            torch.testing.assert_close(model.features(x), feats + skip, rtol=1e-5, atol=1e-5)


def _expected_trainable(enc, mode: str) -> set[str]:
    head = {"head.weight", "head.bias"}
    if mode == "head":
        return head
    names = {f"encoder.{n}" for n, _ in enc.named_parameters()}
    if mode == "full":
        return names | head
    a, b = list_blocks(enc)[mode.split(":")[1]]
    keep = {str(i) for i in range(a, b + 1)}
    return {n for n in names if n.split(".")[1] in keep} | head


@pytest.mark.parametrize("mode", ["head", "layer:8-11", "scl:4-7", "full"])
def test_each_mode_trains_only_what_it_says_and_pruned_weights_stay_zero(mode):
    enc, masks = _pruned_smallnet()
    before = {k: v.clone() for k, v in enc.state_dict().items()}
    expected = _expected_trainable(enc, mode)

    # which parameters receive gradients in one backward of the mode's model
    model = FinetuneModel(enc, 4, parse_mode(mode, enc))
    model.train()
    x = torch.randn(4, 3, 32, 32)
    F.cross_entropy(model(x), torch.arange(4)).backward()
    got = {n for n, p in model.named_parameters() if p.grad is not None}
    assert got == expected
    assert {n for n, _ in model.trainable_parameters()} == expected
    # frozen children in eval mode (BN statistics fixed), trained ones in train mode
    trained_ids = {id(m) for m in model.trained_modules()}
    assert [c.training for c in model.encoder] == [id(c) in trained_ids for c in model.encoder]
    trained_children = {str(i) for i, c in enumerate(model.encoder) if id(c) in trained_ids}
    enc.load_state_dict(before)  # the BN statistics the probe forward moved

    run = finetune(
        enc, masks, mode, _data(), FinetuneConfig(epochs=2, batch_size=8), mean=MEAN, std=STD
    )
    after = run.model.encoder.state_dict()
    for k, v in before.items():
        if k.split(".")[0] not in trained_children:  # frozen weights and BN statistics
            assert torch.equal(after[k], v), (mode, k)
    changed = {f"encoder.{k}" for k, v in before.items() if not torch.equal(after[k], v)}
    assert changed & expected or mode == "head"
    for name, p in prunable_parameters(run.model.encoder):
        assert not p[~masks[name]].any(), name  # exactly zero where pruned
    assert torch.equal(enc.state_dict()["0.weight"], before["0.weight"])  # input untouched
    assert run.trainable_params == sum(
        p.numel() for n, p in run.model.named_parameters() if n in expected
    )
    assert 0.0 <= run.test_accuracy <= 1.0


def test_head_mode_leaves_the_features_and_their_nc1_alone():
    enc, masks = _pruned_smallnet()
    data = _data()
    run = finetune(
        enc, masks, "head", data, FinetuneConfig(epochs=1, batch_size=8), mean=MEAN, std=STD
    )
    assert run.nc1_before == run.nc1_after
    from entropi.host.data import normalize

    with torch.no_grad():
        feats = enc.eval()(normalize(torch.as_tensor(data.x_train), MEAN, STD))
    assert run.nc1_before == pytest.approx(nc1(feats.double().numpy(), data.y_train), rel=1e-6)


def test_cached_prefix_gives_the_same_training():
    enc, masks = _pruned_smallnet()
    cfg = FinetuneConfig(epochs=2, batch_size=8)
    runs = [
        finetune(enc, masks, "scl:8-11", _data(), cfg, mean=MEAN, std=STD, cache_prefix=c)
        for c in (True, False)
    ]
    for (k, a), b in zip(
        runs[0].model.state_dict().items(), runs[1].model.state_dict().values(), strict=True
    ):
        # same batches and steps; only the float summation order of the prefix may differ
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=k)
    assert runs[0].test_accuracy == runs[1].test_accuracy


def test_bad_modes_blocks_and_masks_raise_clear_errors():
    enc = build_encoder("smallnet")
    with pytest.raises(
        FinetuneError,
        match=r"unknown fine-tuning mode 'probe'; modes: head, "
        r"layer:BLOCK, scl:BLOCK, full",
    ):
        parse_mode("probe", enc)
    with pytest.raises(
        FinetuneError,
        match=r"unknown block '5' .* blocks of this encoder: "
        r"0-3, 4-7, 8-11, 12-16",
    ):
        parse_mode("layer:5", enc)
    with pytest.raises(FinetuneError, match="needs a block"):
        parse_mode("scl", enc)
    with pytest.raises(FinetuneError, match="takes no block"):
        parse_mode("full:3", enc)
    with pytest.raises(FinetuneError, match="missing"):
        check_masks(enc, {"0.weight": torch.ones(32, 3, 3, 3, dtype=torch.bool)})
    with pytest.raises(FinetuneError, match="more than the 8 features"):
        skip_connection(torch.zeros(2, 16, 2, 2), 8)
    with pytest.raises(FinetuneError, match="epochs"):
        FinetuneConfig(epochs=0)
    with pytest.raises(FinetuneError, match="nn.Sequential"):
        FinetuneModel(torch.nn.Linear(3, 3), 2, Mode("head"))


def test_save_and_load_roundtrip(tmp_path):
    enc, masks = _pruned_smallnet()
    run = finetune(
        enc, masks, "scl:8-11", _data(), FinetuneConfig(epochs=1, batch_size=8), mean=MEAN, std=STD
    )
    save_finetuned(
        tmp_path / "m" / "model.pt",
        run.model,
        {"arch": "smallnet", "normalization": {"mean": MEAN, "std": STD}},
    )
    model, meta = load_finetuned(tmp_path / "m")
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), run.model.eval()(x))
    assert model.mode.name == "scl:8-11" and meta["arch"] == "smallnet"
    with pytest.raises(FinetuneError, match="not a fine-tuned model"):
        load_finetuned(tmp_path)


# --- costs --------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["head", "full"])
def test_costs_of_head_and_full_are_entropi_bench_rows(mode):
    enc = synthetic_encoder("smallnet", alpha=0.2, seed=2)
    model = FinetuneModel(enc, 5, Mode(mode) if mode == "head" else parse_mode(mode, enc))
    clf = Classifier(enc, enc.feature_dim, 5)
    clf.head.load_state_dict(model.head.state_dict())
    assert step_flops(model, 4).as_dict() == count_step_flops(clf, mode, 4).as_dict()
    assert step_memory(model, 4) == measure_step(clf, mode, 4).breakdown


@pytest.mark.parametrize("mode", ["layer:4-7", "scl:4-7", "scl:12-16", "full", "head"])
def test_step_flops_match_torch_flop_counter(mode):
    """conv/linear FLOPs of the real step (prefix under no_grad, the rest forward + backward)
    as torch.utils.flop_counter counts them: exact."""
    from torch.utils.flop_counter import FlopCounterMode

    enc = synthetic_encoder("smallnet", seed=3)
    model = FinetuneModel(enc, 7, parse_mode(mode, enc))
    model.train()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        h = model.prefix(x)
    with FlopCounterMode(display=False) as counter:
        model(h, start=model.first_trained).sum().backward()
    report = step_flops(model, 4)
    assert report.step(matmul=True) == counter.get_total_flops()
    assert report.trained_params == sum(p.numel() for _, p in model.trainable_parameters())


def test_step_memory_categories_by_hand():
    """layer:8-11 of smallnet at batch 8: the step's input is the 64 x 8 x 8 prefix output; it
    uses the weights of children 8..16 and the head, and trains 8..11 and the head."""
    enc = synthetic_encoder("smallnet", seed=4)
    model = FinetuneModel(enc, 10, parse_mode("layer:8-11", enc))
    mem = step_memory(model, 8)
    conv3 = 128 * 64 * 9 + 2 * 128  # conv 8 + BN 9 (weight, bias)
    conv4 = 256 * 128 * 9 + 2 * 256
    head = 256 * 10 + 10
    assert mem.weights == 4 * (conv3 + conv4 + head)
    assert mem.gradients == mem.optimizer_state == 4 * (conv3 + head)
    assert mem.buffers == 4 * 2 * (128 + 256) + 8 * 2  # running mean/var, num_batches_tracked
    assert mem.batch == 8 * 64 * 8 * 8 * 4 + 8 * 8
    assert mem.activations > 0


# --- the commands -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_run(image_folder, tmp_path_factory):
    """A run folder with two rungs (dense, and pruned to 30%) and a selected rung, written
    directly (no pre-training): the commands only read config.toml, rungs and results.json."""
    root = tmp_path_factory.mktemp("ftrun") / "run"
    (root / "rungs").mkdir(parents=True)
    cfg = config_from_dict(
        {
            "name": "tiny",
            "device": "cpu",
            "data": {
                "source": f"imagefolder:{image_folder}",
                "target": f"imagefolder:{image_folder}",
            },
            "pretrain": {"arch": "smallnet"},
        }
    )
    (root / "config.toml").write_text(config_to_toml(cfg))
    for i, alpha in enumerate((1.0, 0.3)):
        enc = synthetic_encoder("smallnet", alpha=alpha, seed=5)
        masks = {n: p.detach() != 0 for n, p in prunable_parameters(enc)}
        head = torch.nn.Linear(enc.feature_dim, 10)
        info = fake_rung_meta(enc, "smallnet", index=None)
        save_rung(
            root / "rungs" / f"rung_{i:03d}.pt",
            Rung(info, enc.state_dict(), head.state_dict(), masks),
        )
    (root / "results.json").write_text(json.dumps({"selected_index": 1}))
    return root


def test_finetune_and_cka_commands(tiny_run, tmp_path, capsys):
    from entropi.host.cli import main

    out = tmp_path / "ft"
    rc = main(
        [
            "finetune",
            str(tiny_run),
            "--mode",
            "head",
            "--mode",
            "scl:8-11",
            "--epochs",
            "1",
            "--batch-size",
            "8",
            "--seeds",
            "0,1",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    result = json.loads((out / "finetune.json").read_text())
    assert result["source"]["rung"] == 1 and result["n_train"] == 48
    for name in ("head", "scl:8-11"):
        e = result["modes"][name]
        assert len(e["runs"]) == 2 and 0 <= e["test_accuracy"] <= 1
        assert e["flops_step_dense"] >= e["flops_step_sparse"] > 0
        assert e["memory_bytes"] == e["memory_breakdown"]["total"] > 0
    assert result["modes"]["head"]["trainable_params"] == 256 * 3 + 3
    assert "memory_bytes_device_runtime" in result["modes"]["head"]
    assert (out / "finetune.md").is_file() and (
        out / "models" / "scl-8-11-s1" / "model.pt"
    ).is_file()
    assert "| scl:8-11 |" in capsys.readouterr().out

    cka_out = tmp_path / "cka"
    rc = main(
        [
            "analyze",
            "cka",
            f"{tiny_run}:0",
            str(out / "models" / "scl-8-11-s0"),
            "--batch",
            "6",
            "--kernel",
            "linear",
            "--out",
            str(cka_out),
        ]
    )
    assert rc == 0
    cka = json.loads((cka_out / "cka.json").read_text())
    assert cka["layers_a"] == ["0-3", "4-7", "8-11", "12-16", "features"] == cka["layers_b"]
    assert cka["n"] == 18 and (cka_out / "cka.png").stat().st_size > 0
    diag = cka["diagonal"]["linear"]
    # rung 0 is dense, the fine-tuned model came from the pruned rung 1: the first block, which
    # SCL FT on 8-11 does not touch, differs only by the pruning
    assert all(-0.5 < v <= 1.0 + 1e-9 for v in diag.values())


def test_commands_refuse_bad_modes_in_one_line(tiny_run, tmp_path, capsys):
    from entropi.host.cli import main

    rc = main(["finetune", str(tiny_run), "--mode", "layer:9", "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err
    assert "unknown block '9'" in err and "0-3, 4-7, 8-11, 12-16" in err
    rc = main(["finetune", str(tiny_run), "--mode", "probe", "--out", str(tmp_path / "x")])
    assert rc == 2 and "modes: head, layer:BLOCK, scl:BLOCK, full" in capsys.readouterr().err
    rc = main(["analyze", "cka", str(tmp_path), f"{tiny_run}:0", "--out", str(tmp_path / "y")])
    assert rc == 2 and "neither a run folder" in capsys.readouterr().err


@pytest.mark.slow
def test_finetune_study_script_on_a_tiny_run(tiny_run, tmp_path):
    from scripts_loader import load_script

    study = load_script("finetune_study").main(
        [
            str(tiny_run),
            "--epochs",
            "1",
            "--batch-size",
            "8",
            "--seeds",
            "0,1",
            "--pacs",
            "",
            "--cka-images",
            "12",
            "--cka-batch",
            "6",
            "--work",
            str(tmp_path / "finetune-w"),
            "--results",
            str(tmp_path / "res"),
        ]
    )
    names = list(study["experiments"])
    assert names == ["cifar100 rung 0 (dense)", "cifar100 rung 1 (selected)"]
    assert set(study["experiments"][names[1]]["modes"]) == {
        "head",
        "layer:8-11",
        "scl:8-11",
        "full",
    }
    assert len(study["cka"]) == 4
    md = (tmp_path / "res" / "finetune_cpu.md").read_text()
    assert "| SCL FT | 93.11 |" in md and (tmp_path / "res" / "finetune_cka.png").is_file()
