import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _torch_threads_and_seed():
    # Explicit threads: 2 threads on a loaded 2-core box made timings and runtimes swing by 10x.
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def copy_project() -> Callable[[Path], None]:
    """Copies the project's sources (tracked and untracked-not-ignored files, no reports) into
    a folder, as a fresh clone of this working tree would have them."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO, capture_output=True, text=True, check=True,
    ).stdout.split("\n")
    files = [f for f in listed if f and (REPO / f).is_file() and not f.startswith("reports/")]

    def copy(root: Path) -> None:
        for rel in files:
            dest = root / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, dest)

    return copy


# A SpeechBrain-style hyperparams.yaml (the layout of the published sepformer-wsj02mix one),
# tiny sizes; HyperPyYAML builds SpeechBrain's own modules from it.
SB_HPARAMS = """\
sample_rate: 16000
num_spks: 2
N_encoder_out: 32
out_channels: 16
kernel_size: 8
kernel_stride: 4

Encoder: !new:speechbrain.lobes.models.dual_path.Encoder
    kernel_size: !ref <kernel_size>
    out_channels: !ref <N_encoder_out>

SBtfintra: !new:speechbrain.lobes.models.dual_path.SBTransformerBlock
    num_layers: 2
    d_model: !ref <out_channels>
    nhead: 4
    d_ffn: 24
    dropout: 0
    use_positional_encoding: True
    norm_before: True

SBtfinter: !new:speechbrain.lobes.models.dual_path.SBTransformerBlock
    num_layers: 1
    d_model: !ref <out_channels>
    nhead: 4
    d_ffn: 24
    dropout: 0
    use_positional_encoding: True
    norm_before: True

MaskNet: !new:speechbrain.lobes.models.dual_path.Dual_Path_Model
    num_spks: !ref <num_spks>
    in_channels: !ref <N_encoder_out>
    out_channels: !ref <out_channels>
    num_layers: 2
    K: 30
    intra_model: !ref <SBtfintra>
    inter_model: !ref <SBtfinter>
    norm: ln
    linear_layer_after_inter_intra: False
    skip_around_intra: True

Decoder: !new:speechbrain.lobes.models.dual_path.Decoder
    in_channels: !ref <N_encoder_out>
    out_channels: 1
    kernel_size: !ref <kernel_size>
    stride: !ref <kernel_stride>
    bias: False

modules:
    encoder: !ref <Encoder>
    masknet: !ref <MaskNet>
    decoder: !ref <Decoder>
"""


def _speechbrain_folder(folder: Path, hparams_text: str = SB_HPARAMS) -> dict:
    """Build SpeechBrain's modules from YAML and checkpoint them as SpeechBrain does."""
    from hyperpyyaml import load_hyperpyyaml  # SpeechBrain loads only for the tests using it
    from speechbrain.utils.checkpoints import torch_save

    folder.mkdir(parents=True, exist_ok=True)
    hparams = load_hyperpyyaml(hparams_text)
    for part in ("encoder", "masknet", "decoder"):
        torch_save(hparams["modules"][part], folder / f"{part}.ckpt")
    (folder / "hyperparams.yaml").write_text(hparams_text)
    return hparams


def _recipe_separation(hparams: dict, mix: torch.Tensor) -> torch.Tensor:
    """The SpeechBrain recipe's compute_forward: (B, T) -> (B, n_src, T)."""
    mods = {k: m.eval() for k, m in hparams["modules"].items()}
    feats = mods["encoder"](mix)
    masks = mods["masknet"](feats)
    est = torch.stack([mods["decoder"](feats * mask) for mask in masks], dim=1)
    return est[..., : mix.shape[-1]]


@pytest.fixture
def speechbrain_folder() -> Callable[..., dict]:
    """(folder, hparams_text=SB_HPARAMS) -> hparams: a SpeechBrain sepformer checkpoint folder
    made from tiny freshly built modules."""
    return _speechbrain_folder


@pytest.fixture
def recipe_separation() -> Callable[[dict, torch.Tensor], torch.Tensor]:
    """(hparams, mix) -> the SpeechBrain recipe's separation of mix with those modules."""
    return _recipe_separation


@pytest.fixture
def speechbrain_hparams() -> str:
    """The tiny SpeechBrain-style hyperparams.yaml text of `speechbrain_folder`."""
    return SB_HPARAMS
