"""Load published baseline weights from local files (nothing is downloaded here).

- asteroid model files: the dict written by `BaseModel.serialize()` + `torch.save` (what
  `from_pretrained` reads: `model_name`, `model_args`, `state_dict`), e.g. a hub
  `pytorch_model.bin` fetched beforehand.
- SpeechBrain's sepformer checkpoints: a folder with `encoder.ckpt`, `masknet.ckpt`,
  `decoder.ckpt` (module state dicts) and optionally `hyperparams.yaml`; the architecture is read
  from the tensor shapes, with heads, chunk size and sample rate from the YAML when present.

Every file is read with `torch.load(weights_only=True)`; a file of another model or shape is a
ValueError naming the file.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import yaml
from asteroid.models.base_models import BaseModel
from torch.torch_version import TorchVersion

from baselines.asteroid_models import ConvTasNetModel, DPRNNTasNetModel, SuDORMRFNetModel

SPEECHBRAIN_FILES = ("encoder.ckpt", "masknet.ckpt", "decoder.ckpt")


def asteroid_model_class(model_name: str,
                         extra: Mapping[str, type[BaseModel]] | None = None) -> type[BaseModel]:
    """Class for an asteroid package's `model_name`: the library baselines, or one of `extra`
    (other packages' models, e.g. the registry's S4M)."""
    classes: dict[str, type[BaseModel]] = {
        "ConvTasNet": ConvTasNetModel,
        "DPRNNTasNet": DPRNNTasNetModel,
        "SuDORMRFNet": SuDORMRFNetModel,
        **(extra or {}),
    }
    if model_name == "SepformerNet":
        from baselines.sepformer import SepformerNet

        return SepformerNet
    if model_name not in classes:
        supported = [*classes, "SepformerNet"]
        raise ValueError(f"unsupported model_name {model_name!r}; supported: {supported}")
    return classes[model_name]


def load_weights_file(path: str | Path) -> Any:
    """torch.load(weights_only=True) with errors that name the file."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    try:  # asteroid's serialize() stores torch.__version__, a str subclass
        with torch.serialization.safe_globals([TorchVersion]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # unpickling errors come in many types
        lines = str(err).splitlines() or [""]
        reason = next((ln.strip() for ln in lines if "WeightsUnpickler" in ln), lines[0])
        raise ValueError(f"{path}: not loadable with weights_only=True ({reason})") from err


def load_state(module: torch.nn.Module, state: Any, source: str | Path) -> None:
    """Strict load_state_dict; a missing, extra or mis-shaped tensor: ValueError naming `source`."""
    if not isinstance(state, Mapping) or not all(torch.is_tensor(v) for v in state.values()):
        raise ValueError(f"{source}: expected a state dict of tensors")
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ValueError(f"{source}: weights do not fit {type(module).__name__}: {err}") from err


def build_from_package(package: Any, source: str | Path,
                       extra: Mapping[str, type[BaseModel]] | None = None) -> BaseModel:
    """Rebuild a model from an asteroid package dict (`model_name`, `model_args`, `state_dict`);
    `extra` adds model classes by name (see `asteroid_model_class`)."""
    if not isinstance(package, Mapping):
        raise ValueError(f"{source}: expected a model package dict, got {type(package).__name__}")
    missing = [k for k in ("model_name", "model_args", "state_dict") if k not in package]
    if missing:
        raise ValueError(f"{source}: not an asteroid model package (missing {missing})")
    try:
        cls = asteroid_model_class(package["model_name"], extra)
    except ValueError as err:
        raise ValueError(f"{source}: {err}") from err
    try:
        model = cls(**package["model_args"])
    except (TypeError, ValueError, AssertionError) as err:
        raise ValueError(f"{source}: model_args do not build {cls.__name__}: {err}") from err
    load_state(model, package["state_dict"], source)
    return model


def load_asteroid_model(path: str | Path) -> BaseModel:
    """An asteroid-format model file -> the matching baseline with its weights (the registry's
    `load_model` also reads S4M files)."""
    return build_from_package(load_weights_file(path), path)


class _Tagged:
    """A SpeechBrain YAML value with a custom tag (`!new:...`, `!ref`, ...); never instantiated."""

    def __init__(self, tag: str, value: Any):
        self.tag, self.value = tag, value


class _HyperPyYamlReader(yaml.SafeLoader):
    """SafeLoader that keeps HyperPyYAML's custom tags as inert `_Tagged` values."""


def _construct_tagged(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> _Tagged:
    if isinstance(node, yaml.MappingNode):
        value: Any = loader.construct_mapping(node, deep=True)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_scalar(node)
    return _Tagged("!" + suffix, value)


_HyperPyYamlReader.add_multi_constructor("!", _construct_tagged)


def read_speechbrain_hparams(path: str | Path) -> dict[str, Any]:
    """Sepformer settings from a SpeechBrain hyperparams.yaml: any of nhead, chunk_size,
    sample_rate, dropout, use_positional_encoding, norm_before, norm, skip_around_intra,
    linear_layer_after_inter_intra, stride (only those the file states)."""
    path = Path(path)
    try:
        doc = yaml.load(path.read_text(), Loader=_HyperPyYamlReader)  # a SafeLoader subclass
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: unreadable YAML: {err}") from err
    if not isinstance(doc, dict):
        raise ValueError(f"{path}: expected a mapping at the top level")

    def resolve(value: Any) -> Any:
        if isinstance(value, _Tagged) and value.tag == "!ref":
            ref = re.fullmatch(r"<(\w+)>", str(value.value).strip())
            if ref is not None and ref.group(1) in doc:
                return resolve(doc[ref.group(1)])
        return value  # expressions stay unresolved; an error only if a needed key holds one

    def objects(class_name: str) -> list[dict[str, Any]]:
        return [
            {k: resolve(v) for k, v in obj.value.items()}
            for obj in doc.values()
            if isinstance(obj, _Tagged) and obj.tag.endswith("." + class_name)
            and isinstance(obj.value, dict)
        ]

    found: dict[str, Any] = {}

    def take(key: str, values: list[Any]) -> None:
        values = [v for v in values if v is not None]
        if len({repr(v) for v in values}) > 1:
            raise ValueError(f"{path}: conflicting values for {key}: {values}")
        if values:
            found[key] = values[0]

    blocks, masknets, decoders = (
        objects(n) for n in ("SBTransformerBlock", "Dual_Path_Model", "Decoder")
    )
    for key in ("nhead", "dropout", "use_positional_encoding", "norm_before"):
        take(key, [b.get(key) for b in blocks])
    take("chunk_size", [m.get("K") for m in masknets])
    for key in ("norm", "skip_around_intra", "linear_layer_after_inter_intra"):
        take(key, [m.get(key) for m in masknets])
    take("stride", [d.get("stride") for d in decoders])
    take("sample_rate", [resolve(doc.get("sample_rate"))])
    for key, value in found.items():
        if isinstance(value, _Tagged) or (isinstance(value, str) and key != "norm"):
            raise ValueError(f"{path}: cannot read {key} (got {getattr(value, 'value', value)!r})")
    return found


def _layer_count(state: Mapping[str, torch.Tensor], prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    return len({m.group(1) for k in state if (m := pattern.match(k))})


def _shape(state: Mapping[str, torch.Tensor], key: str, source: Path) -> torch.Size:
    if key not in state:
        raise ValueError(f"{source}: not a SpeechBrain Sepformer checkpoint (no tensor {key!r})")
    return state[key].shape


def sepformer_args_from_weights(
    encoder: Mapping[str, torch.Tensor], masknet: Mapping[str, torch.Tensor], folder: Path
) -> dict[str, Any]:
    """Encoder/masknet sizes read off SpeechBrain state dicts (keys as in dual_path.py)."""
    enc_file, mask_file = folder / "encoder.ckpt", folder / "masknet.ckpt"
    enc = _shape(encoder, "conv1d.weight", enc_file)  # (N, 1, kernel)
    proj = _shape(masknet, "conv1d.weight", mask_file)  # (d_model, N, 1)
    heads = _shape(masknet, "conv2d.weight", mask_file)  # (d_model * n_src, d_model, 1, 1)
    ffn = _shape(masknet, "dual_mdl.0.intra_mdl.mdl.layers.0.pos_ffn.ffn.0.weight", mask_file)
    if len(enc) != 3 or enc[1] != 1:
        raise ValueError(f"{enc_file}: encoder weight of shape {tuple(enc)} is not (N, 1, kernel)")
    if proj[1] != enc[0]:
        raise ValueError(f"{mask_file}: masknet expects {proj[1]} encoder channels, "
                         f"{enc_file} has {enc[0]}")
    return dict(
        n_src=heads[0] // proj[0], n_filters=enc[0], kernel_size=enc[2], d_model=proj[0],
        d_ffn=ffn[0], num_layers=_layer_count(masknet, "dual_mdl."),
        intra_layers=_layer_count(masknet, "dual_mdl.0.intra_mdl.mdl.layers."),
        inter_layers=_layer_count(masknet, "dual_mdl.0.inter_mdl.mdl.layers."),
    )


def load_speechbrain_sepformer(folder: str | Path) -> BaseModel:
    """A SpeechBrain sepformer checkpoint folder -> `SepformerNet` with those weights."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{folder}: not a directory with {', '.join(SPEECHBRAIN_FILES)}")
    missing = [name for name in SPEECHBRAIN_FILES if not (folder / name).is_file()]
    if missing:
        raise ValueError(f"{folder}: missing SpeechBrain checkpoint files {missing}")
    states = {name.split(".")[0]: load_weights_file(folder / name) for name in SPEECHBRAIN_FILES}
    for part, state in states.items():
        if not isinstance(state, Mapping) or not all(torch.is_tensor(v) for v in state.values()):
            raise ValueError(f"{folder / (part + '.ckpt')}: expected a state dict of tensors")
    args = sepformer_args_from_weights(states["encoder"], states["masknet"], folder)
    hparams_file = folder / "hyperparams.yaml"
    if hparams_file.is_file():
        hparams = read_speechbrain_hparams(hparams_file)
        stride = hparams.pop("stride", args["kernel_size"] // 2)
        if stride != args["kernel_size"] // 2:
            raise ValueError(f"{hparams_file}: decoder stride {stride} differs from the encoder's "
                             f"hop {args['kernel_size'] // 2}, which SpeechBrain's Encoder fixes")
        args.update(hparams)
    from baselines.sepformer import SepformerNet

    model = SepformerNet(**args)
    for part, state in states.items():
        load_state(getattr(model, part), state, folder / f"{part}.ckpt")
    return model
