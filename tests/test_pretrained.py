"""Loading published baselines from local files: asteroid model files, SpeechBrain sepformer
checkpoint folders. Every file is made here from freshly built models (nothing downloaded)."""

import argparse
from pathlib import Path

import pytest
import torch
from asteroid.models import ConvTasNet, DPRNNTasNet, SuDORMRFNet
from asteroid.models.base_models import BaseModel
from speechbrain.utils.checkpoints import torch_save

from baselines import load_asteroid_model, load_speechbrain_sepformer
from baselines.sepformer import SepformerNet
from experiments.registry import build_model, load_model, save_model

LIBRARY_MODELS = {
    "convtasnet": lambda: ConvTasNet(2, n_blocks=2, n_repeats=1, mask_act="relu"),
    "dprnn": lambda: DPRNNTasNet(2, n_repeats=1, chunk_size=50, hop_size=25),
    "sudormrf": lambda: SuDORMRFNet(2, num_blocks=2),
}

@pytest.mark.parametrize("name", LIBRARY_MODELS)
def test_asteroid_file_loads_into_registry_model(name: str, tmp_path: Path) -> None:
    library = LIBRARY_MODELS[name]().eval()
    torch.save(library.serialize(), tmp_path / "pytorch_model.bin")  # as asteroid publishes
    loaded = load_model(tmp_path / "pytorch_model.bin").eval()
    assert loaded.registry_spec["name"] == name
    mix = torch.randn(2, 16 + 8 * 100)  # a length the library model covers fully
    with torch.no_grad():
        assert torch.equal(loaded(mix), library(mix))
        assert torch.equal(load_asteroid_model(tmp_path / "pytorch_model.bin").eval()(mix),
                           library(mix))
    # and the registry's own package reads back with asteroid's from_pretrained
    save_model(loaded, tmp_path / "model.pt")
    again = BaseModel.from_pretrained(str(tmp_path / "model.pt")).eval()
    assert type(again) is type(library)
    with torch.no_grad():
        assert torch.equal(again(mix), library(mix))


def test_asteroid_file_of_wrong_shape_or_model(tmp_path: Path) -> None:
    package = LIBRARY_MODELS["convtasnet"]().serialize()
    package["model_args"]["bn_chan"] = 64
    torch.save(package, tmp_path / "shape.bin")
    with pytest.raises(ValueError, match="shape.bin.*do not fit ConvTasNetModel"):
        load_model(tmp_path / "shape.bin")
    package["model_name"] = "DCCRNet"
    torch.save(package, tmp_path / "model.bin")
    with pytest.raises(ValueError, match="model.bin.*unsupported model_name 'DCCRNet'"):
        load_asteroid_model(tmp_path / "model.bin")


def test_pickled_objects_are_refused(tmp_path: Path) -> None:
    torch.save({"model_name": "ConvTasNet", "obj": argparse.Namespace(a=1)}, tmp_path / "evil.bin")
    with pytest.raises(ValueError, match="evil.bin.*weights_only"):
        load_model(tmp_path / "evil.bin")


def test_speechbrain_folder_matches_the_recipe(tmp_path: Path, speechbrain_folder,
                                              recipe_separation) -> None:
    hparams = speechbrain_folder(tmp_path / "sepformer")
    model = load_model(tmp_path / "sepformer").eval()
    assert isinstance(model, SepformerNet)
    args = model.get_model_args()
    sizes = (args["n_filters"], args["kernel_size"], args["d_model"], args["d_ffn"])
    assert sizes == (32, 8, 16, 24)
    assert (args["num_layers"], args["intra_layers"], args["inter_layers"]) == (2, 2, 1)
    assert (args["nhead"], args["chunk_size"], args["n_src"]) == (4, 30, 2)
    assert model.sample_rate == 16000
    mix = torch.randn(2, 8 + 4 * 150)
    with torch.no_grad():
        assert torch.allclose(model(mix), recipe_separation(hparams, mix), atol=1e-6)
        assert model(torch.randn(2, 333)).shape == (2, 2, 333)
    save_model(model, tmp_path / "model.pt")  # and into the registry's format
    with torch.no_grad():
        assert torch.equal(load_model(tmp_path / "model.pt").eval()(mix), model(mix))


def test_speechbrain_folder_without_yaml_uses_recipe_defaults(tmp_path: Path) -> None:
    source = SepformerNet(n_filters=32, d_model=16, d_ffn=24, num_layers=1, intra_layers=1,
                          inter_layers=1).eval()
    for part in ("encoder", "masknet", "decoder"):
        torch_save(getattr(source, part), tmp_path / f"{part}.ckpt")
    loaded = load_speechbrain_sepformer(tmp_path).eval()
    assert loaded.get_model_args() == source.get_model_args()
    mix = torch.randn(1, 700)
    with torch.no_grad():
        assert torch.equal(loaded(mix), source(mix))


def test_speechbrain_folder_errors_name_the_file(tmp_path: Path, speechbrain_folder,
                                                 speechbrain_hparams: str) -> None:
    folder = tmp_path / "sb"
    speechbrain_folder(folder)
    (folder / "decoder.ckpt").unlink()
    with pytest.raises(ValueError, match="missing SpeechBrain checkpoint files.*decoder.ckpt"):
        load_model(folder)
    # a decoder of another kernel size
    torch_save(torch.nn.ConvTranspose1d(32, 1, 16, stride=8, bias=False), folder / "decoder.ckpt")
    with pytest.raises(ValueError, match="decoder.ckpt.*do not fit"):
        load_model(folder)
    speechbrain_folder(folder)
    # a Conv-TasNet state dict where the masknet should be
    torch_save(build_model("convtasnet", n_blocks=1, n_repeats=1), folder / "masknet.ckpt")
    with pytest.raises(ValueError, match="masknet.ckpt.*not a SpeechBrain Sepformer"):
        load_model(folder)
    speechbrain_folder(folder)
    (folder / "hyperparams.yaml").write_text(speechbrain_hparams.replace("nhead: 4", "nhead: 2", 1))
    with pytest.raises(ValueError, match="hyperparams.yaml.*conflicting values for nhead"):
        load_model(folder)


def test_speechbrain_yaml_expressions(tmp_path: Path, speechbrain_folder,
                                     speechbrain_hparams: str) -> None:
    folder = tmp_path / "sb"
    speechbrain_folder(folder)
    extra = "\nunused_expression: !ref <kernel_size> * 2\n"
    (folder / "hyperparams.yaml").write_text(speechbrain_hparams + extra)
    assert load_model(folder).get_model_args()["chunk_size"] == 30
    expression = speechbrain_hparams.replace("K: 30", "K: !ref <kernel_size> * 4")
    (folder / "hyperparams.yaml").write_text(expression)
    with pytest.raises(ValueError, match="hyperparams.yaml: cannot read chunk_size"):
        load_model(folder)


@pytest.mark.parametrize("name", ["s4m_tiny", "s4m"])
def test_s4m_asteroid_file_keeps_its_registry_name(name: str, tmp_path: Path) -> None:
    model = build_model(name).eval()
    torch.save(model.serialize(), tmp_path / "s4m.bin")
    loaded = load_model(tmp_path / "s4m.bin").eval()
    assert loaded.registry_spec["name"] == name
    mix = torch.randn(1, 801)
    with torch.no_grad():
        assert torch.equal(loaded(mix), model(mix))
