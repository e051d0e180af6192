"""The model registry: names, published sizes, shapes on odd lengths, package round trips."""

from pathlib import Path

import pytest
import torch

from experiments.config import ConfigError
from experiments.published import load_published
from experiments.registry import (
    REGISTRY,
    build_model,
    check_model_names,
    count_params_m,
    load_model,
    published_params_m,
    save_model,
)

MODEL_NAMES = tuple(REGISTRY)

BASELINE_NAMES = ("convtasnet", "dprnn", "sudormrf", "sepformer")
# Small variants so round trips and backward passes stay fast; full size where it is cheap.
SMALL = {
    "s4m_tiny": {},
    "s4m": {},
    "tdanet": dict(num_blocks=2),
    "convtasnet": dict(n_blocks=2, n_repeats=1),
    "dprnn": dict(n_repeats=1, chunk_size=50, hop_size=25),
    "sudormrf": dict(num_blocks=2),
    "sepformer": dict(n_filters=32, d_model=32, nhead=4, d_ffn=64, num_layers=1, intra_layers=1,
                      inter_layers=1, chunk_size=20),
}


def test_every_registry_model_has_published_figures_and_is_in_the_default_grid() -> None:
    import yaml

    published = load_published()["models"]
    assert set(published) == set(REGISTRY)
    params = yaml.safe_load(Path("params.yaml").read_text())
    assert params["models"] == list(REGISTRY), "params.yaml `models` should list every model"


def test_unknown_name_lists_the_names() -> None:
    with pytest.raises(ValueError, match="convtasnet, dprnn"):
        build_model("tasnet")
    with pytest.raises(ValueError, match="registry models"):
        published_params_m("tasnet")


@pytest.mark.parametrize("name", BASELINE_NAMES)
def test_unknown_override_is_named(name: str) -> None:
    with pytest.raises(ValueError, match="not_a_setting"):
        build_model(name, not_a_setting=3)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_params_match_published_figure(name: str) -> None:
    published = published_params_m(name)
    params = count_params_m(build_model(name))
    assert abs(params / published - 1) <= REGISTRY[name].tolerance, (name, params, published)


def test_measured_sizes_of_library_configs() -> None:
    # Exact counts of the configurations the README states (catch silent config drift).
    expected = {"convtasnet": 5.050545, "dprnn": 2.608065, "sudormrf": 2.584196,
                "sepformer": 25.679361}
    for name, params in expected.items():
        assert count_params_m(build_model(name)) == pytest.approx(params, abs=1e-6), name


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_full_size_forward_keeps_any_length(name: str) -> None:
    model = build_model(name).eval()
    with torch.no_grad():
        for length in (7, 1601):  # shorter than a frame; odd, ~0.2 s at 8 kHz
            est = model(torch.randn(2, length))
            assert est.shape == (2, 2, length)
            assert torch.isfinite(est).all()
        assert model(torch.randn(1, 1, 803)).shape == (1, 2, 803)


@pytest.mark.parametrize("name", BASELINE_NAMES)
def test_baseline_sources_mono_input_and_bad_input(name: str) -> None:
    model = build_model(name, n_src=3, **SMALL[name]).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 411)).shape == (2, 3, 411)
        assert model(torch.randn(411)).shape == (3, 411)
    for bad, message in [
        (torch.randn(2, 2, 100), "one channel"),
        (torch.zeros(2, 0), "empty"),
        (torch.ones(2, 100, dtype=torch.int16), "floating-point"),
        (torch.randn(1, 1, 1, 100), "waveform"),
    ]:
        with pytest.raises(ValueError, match=message):
            model(bad)


@pytest.mark.parametrize("name", BASELINE_NAMES)
def test_baselines_train_from_scratch(name: str) -> None:
    torch.manual_seed(0)
    first = build_model(name, **SMALL[name])
    torch.manual_seed(0)
    again = build_model(name, **SMALL[name])
    torch.manual_seed(1)
    other = build_model(name, **SMALL[name])
    weights = [torch.cat([p.detach().flatten() for p in m.parameters()])
               for m in (first, again, other)]
    assert torch.equal(weights[0], weights[1])  # seeded init
    assert not torch.equal(weights[0], weights[2])  # random init, nothing pretrained
    first.train()(torch.randn(2, 803)).square().mean().backward()
    grads = {n: p.grad for n, p in first.named_parameters()}
    assert all(g.isfinite().all() for g in grads.values() if g is not None)
    # asteroid's TDConvNet never uses the last block's residual conv (only its skip output)
    unused = {"convtasnet": {"masker.TCN.1.res_conv.weight", "masker.TCN.1.res_conv.bias"}}
    assert {n for n, g in grads.items() if g is None} == unused.get(name, set())


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_save_load_round_trip(name: str, tmp_path: Path) -> None:
    model = build_model(name, sample_rate=16000, **SMALL[name]).eval()
    path = save_model(model, tmp_path / "run" / "model.pt")
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.pt"]  # no temp file left
    package = torch.load(path, weights_only=True)
    assert package["registry"] == dict(name=name, sample_rate=16000, n_src=2, overrides=SMALL[name])
    assert {"torch", "asteroid", "speechbrain"} <= set(package["versions"])
    loaded = load_model(path).eval()
    assert type(loaded) is type(model)
    assert loaded.sample_rate == 16000
    wav = torch.randn(2, 803)
    with torch.no_grad():
        assert torch.equal(loaded(wav), model(wav))
    save_model(loaded, tmp_path / "again.pt")  # a loaded model saves again
    with torch.no_grad():
        assert torch.equal(load_model(tmp_path / "again.pt").eval()(wav), model(wav))


def test_save_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = build_model("convtasnet", **SMALL["convtasnet"])
    path = save_model(model, tmp_path / "model.pt")
    before = path.read_bytes()

    def broken_save(obj: object, f: Path) -> None:
        Path(f).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_model(model, path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]


def test_save_needs_a_registry_model(tmp_path: Path) -> None:
    from asteroid.models import ConvTasNet

    with pytest.raises(ValueError, match="build_model"):
        save_model(ConvTasNet(2, n_blocks=1, n_repeats=1), tmp_path / "m.pt")


def test_load_rejects_mismatched_or_foreign_files(tmp_path: Path) -> None:
    path = save_model(build_model("convtasnet", **SMALL["convtasnet"]), tmp_path / "model.pt")
    package = torch.load(path, weights_only=True)
    package["registry"]["overrides"] = dict(n_blocks=3, n_repeats=1)  # weights of another shape
    torch.save(package, tmp_path / "mismatch.pt")
    with pytest.raises(ValueError, match="mismatch.pt.*do not fit"):
        load_model(tmp_path / "mismatch.pt")
    package["registry"] = dict(name="tasnet", sample_rate=8000, n_src=2, overrides={})
    torch.save(package, tmp_path / "unknown.pt")
    with pytest.raises(ValueError, match="unknown.pt.*tasnet"):
        load_model(tmp_path / "unknown.pt")
    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="other.pt.*not an asteroid model package"):
        load_model(tmp_path / "other.pt")
    (tmp_path / "text.pt").write_text("not a checkpoint")
    with pytest.raises(ValueError, match="text.pt"):
        load_model(tmp_path / "text.pt")
    with pytest.raises(ValueError, match="absent.pt"):
        load_model(tmp_path / "absent.pt")


def test_unknown_model_names_are_named_with_their_setting():
    check_model_names(list(REGISTRY), "params.yaml: `models`")
    with pytest.raises(ConfigError, match=r"params.yaml: `models` has unknown names \['nope'\]"):
        check_model_names(["s4m", "nope"], "params.yaml: `models`")
