"""The network: front end against torchaudio, head pooling semantics, ONNX export, real backbones."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
import torchaudio

from birdclef.losses import focal_bce
from birdclef.model import AttentionHead, BackboneError, BirdClassifier, ClipProbabilities, FrequencyGeM, MelFrontend

SAMPLES = 160_000  # 5 s at 32 kHz
SMALL_BACKBONE = "mobilenetv3_small_100"
# torch 2.11's exporter trips over its own deprecated pytree API; harmless for the graph.
quiet_exporter = pytest.mark.filterwarnings("ignore:.*LeafSpec:FutureWarning")


def _chirp_with_hiss(amplitude: float, seed: int) -> torch.Tensor:
    """(SAMPLES,) sweep plus faint noise: > 80 dB of dynamic range, so top_db clips."""
    generator = torch.Generator().manual_seed(seed)
    t = torch.arange(SAMPLES, dtype=torch.float64) / 32000
    sweep = torch.sin(2 * math.pi * (500 + 2000 * t) * t)
    hiss = 1e-6 * torch.randn(SAMPLES, generator=generator, dtype=torch.float64)
    return (amplitude * (sweep + hiss)).float()


def _reference_spectrogram(wave: torch.Tensor) -> torch.Tensor:
    """(B, samples) -> (B, 1, 128, frames) by torchaudio's mel spectrogram + the seed's steps."""
    mel = torchaudio.transforms.MelSpectrogram(
        sample_rate=32000, n_fft=2048, hop_length=512, f_min=20, n_mels=128, power=2,
        normalized=True, center=True, pad_mode="reflect", mel_scale="htk",
    )(wave)
    db = 10 * torch.log10(mel.clamp(min=1e-10))
    db = torch.maximum(db, db.amax(dim=(1, 2), keepdim=True) - 80)
    standard = (db - db.mean(dim=(1, 2), keepdim=True)) / (db.std(dim=(1, 2), keepdim=True) + 1e-6)
    low, high = standard.amin(dim=(1, 2), keepdim=True), standard.amax(dim=(1, 2), keepdim=True)
    return ((standard - low) / (high - low + 1e-6)).unsqueeze(1)


# --- front end -------------------------------------------------------------------------------


def test_frontend_matches_torchaudio_reference():
    noise = 0.1 * torch.randn(SAMPLES, generator=torch.Generator().manual_seed(1))
    wave = torch.stack([_chirp_with_hiss(0.5, 0), noise])
    spectrogram = MelFrontend()(wave)
    assert spectrogram.shape == (2, 1, 128, 313)
    torch.testing.assert_close(spectrogram, _reference_spectrogram(wave), atol=1e-4, rtol=0)
    assert spectrogram.min() >= 0 and spectrogram.max() <= 1


def test_frontend_top_db_is_per_sample():
    loud, quiet = _chirp_with_hiss(0.8, 2), _chirp_with_hiss(1e-3, 3)
    frontend = MelFrontend()
    batch = frontend(torch.stack([loud, quiet]))
    torch.testing.assert_close(batch[0], frontend(loud[None])[0], atol=1e-6, rtol=0)
    torch.testing.assert_close(batch[1], frontend(quiet[None])[0], atol=1e-6, rtol=0)
    # The floor really bites for each item: many bins sit at exactly the per-item minimum.
    assert ((batch == 0).flatten(1).float().mean(dim=1) > 0.05).all()


def test_frontend_buffers_are_not_in_state_dict():
    assert MelFrontend().state_dict() == {}


# --- head ------------------------------------------------------------------------------------


def test_gem_with_p_one_is_the_mean_over_frequency():
    gem = FrequencyGeM(p=1.0)
    features = torch.rand(2, 3, 4, 5) + 0.1
    torch.testing.assert_close(gem(features), features.mean(dim=2))


def test_head_shapes_and_pooling():
    torch.manual_seed(0)
    head = AttentionHead(in_channels=8, num_classes=6, hidden=16).eval()
    with torch.no_grad():
        head.classifier.weight.mul_(20)  # spread frame logits beyond sigmoid's linear range
    out = head(torch.rand(3, 8, 4, 10))
    assert out.clip_logits.shape == out.clip_probs.shape == (3, 6)
    assert out.frame_logits.shape == out.attention.shape == (3, 6, 10)
    torch.testing.assert_close(out.attention.sum(dim=-1), torch.ones(3, 6))
    expected_probs = (torch.sigmoid(out.frame_logits) * out.attention).sum(-1)
    torch.testing.assert_close(out.clip_probs, expected_probs)
    torch.testing.assert_close(out.clip_logits, (out.frame_logits * out.attention).sum(-1))
    assert (out.clip_probs - torch.sigmoid(out.clip_logits)).abs().max() > 1e-3


def test_head_starts_every_class_at_the_prior_one_over_k():
    """The classifier's bias is -log(K - 1): a fresh head's frame probability is 1/K per class."""
    head = AttentionHead(in_channels=8, num_classes=6, hidden=16)
    torch.testing.assert_close(torch.sigmoid(head.classifier.bias), torch.full((6,), 1 / 6))


def test_head_by_hand_with_one_hidden_unit():
    """Weights set by hand so the expected clip scores follow from the formulas alone."""
    head = AttentionHead(in_channels=1, num_classes=1, hidden=1).eval()
    with torch.no_grad():
        head.pool.p.fill_(1.0)
        head.dense.weight.fill_(1.0), head.dense.bias.zero_()
        head.attention.weight.fill_(1.0), head.attention.bias.zero_()
        head.classifier.weight.fill_(2.0), head.classifier.bias.fill_(-1.0)
    features = torch.tensor([0.5, 1.0, 2.0]).reshape(1, 1, 1, 3)  # (B, C, F, T)
    out = head(features)
    frames = torch.tensor([0.5, 1.0, 2.0])
    weights = torch.softmax(torch.tanh(frames), dim=0)
    logits = 2 * frames - 1
    torch.testing.assert_close(out.clip_logits, (logits * weights).sum().reshape(1, 1))
    torch.testing.assert_close(out.clip_probs, (torch.sigmoid(logits) * weights).sum().reshape(1, 1))
    assert abs(out.clip_probs.item() - torch.sigmoid(out.clip_logits).item()) > 1e-2


# --- whole classifier ------------------------------------------------------------------------


class _ZeroSpectrogram(torch.nn.Module):
    """Stands in for SpecAugment: its effect is unmistakable."""

    def forward(self, spectrogram: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(spectrogram)


def test_spec_augment_runs_only_in_training():
    torch.manual_seed(0)
    wave = 0.1 * torch.randn(2, SAMPLES)
    plain = BirdClassifier(SMALL_BACKBONE, num_classes=4)
    augmented = BirdClassifier(SMALL_BACKBONE, num_classes=4, spec_augment=_ZeroSpectrogram())
    augmented.load_state_dict(plain.state_dict())
    plain.eval(), augmented.eval()
    with torch.no_grad():
        torch.testing.assert_close(augmented(wave).clip_probs, plain(wave).clip_probs)
        plain.train(), augmented.train()
        torch.manual_seed(1)
        zeros_out = augmented(wave).clip_logits
        torch.manual_seed(1)
        expected = plain.forward_spectrogram(torch.zeros(2, 1, 128, 313)).clip_logits
    torch.testing.assert_close(zeros_out, expected)


def test_backbone_round_trip_is_strict(tmp_path):
    source = BirdClassifier(SMALL_BACKBONE, num_classes=4)
    path = tmp_path / "backbone.pt"
    torch.save(source.backbone_state_dict(), path)

    whole = tmp_path / "model.pt"  # a trained fold's weights: the backbone part is taken
    torch.save(source.state_dict(), whole)
    for weights in (path, whole):
        target = BirdClassifier(SMALL_BACKBONE, num_classes=7)
        target.load_backbone(weights)
        for key, value in source.backbone_state_dict().items():
            torch.testing.assert_close(target.backbone_state_dict()[key], value)

    other = BirdClassifier("tf_efficientnetv2_b0", num_classes=4)
    with pytest.raises(BackboneError, match=r"backbone\.pt does not fit this backbone: [1-9]\d* missing key"):
        other.load_backbone(path)


@quiet_exporter
def test_onnx_export_matches_pytorch(tmp_path):
    import onnx
    import onnxruntime as ort

    torch.manual_seed(0)
    model = ClipProbabilities(BirdClassifier(SMALL_BACKBONE, num_classes=5)).eval()
    path = tmp_path / "model.onnx"
    program = torch.onnx.export(
        model, (0.1 * torch.randn(2, SAMPLES),), dynamo=True,
        input_names=["wave"], output_names=["probs"],
        dynamic_shapes={"wave": {0: torch.export.Dim("batch", min=1, max=256)}},
    )
    program.save(str(path))
    batch_dim = onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param and not batch_dim.dim_value  # symbolic, not fixed

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (1, 3):
        wave = 0.1 * torch.randn(batch, SAMPLES)
        with torch.no_grad():
            expected = model(wave).numpy()
        (probs,) = session.run(None, {"wave": wave.numpy()})
        assert probs.shape == (batch, 5)
        np.testing.assert_allclose(probs, expected, atol=1e-4, rtol=0)


@quiet_exporter
def test_onnx_export_of_frontend_matches_pytorch(tmp_path):
    """The front end alone: its [0, 1] output shows export errors that probabilities near 0.5 hide."""
    import onnxruntime as ort

    frontend = MelFrontend().eval()
    path = tmp_path / "frontend.onnx"
    torch.onnx.export(
        frontend, (0.1 * torch.randn(2, SAMPLES),), dynamo=True, input_names=["wave"],
        dynamic_shapes={"wave": {0: torch.export.Dim("batch", min=1, max=256)}},
    ).save(str(path))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for wave in (_chirp_with_hiss(0.5, 4)[None], 0.1 * torch.randn(3, SAMPLES)):
        (spectrogram,) = session.run(None, {"wave": wave.numpy()})
        np.testing.assert_allclose(spectrogram, frontend(wave).numpy(), atol=1e-4, rtol=0)


@pytest.mark.parametrize(
    ("backbone", "channels"), [("eca_nfnet_l0", 2304), ("tf_efficientnetv2_s.in21k", 256)]
)
def test_seed_backbones_train_step(backbone, channels):
    torch.manual_seed(0)
    model = BirdClassifier(backbone, num_classes=206).train()
    assert model.backbone.feature_info.channels()[-1] == channels
    assert model.head.dense.in_features == channels
    out = model(0.1 * torch.randn(2, SAMPLES))
    assert out.clip_logits.shape == out.clip_probs.shape == (2, 206)
    assert out.frame_logits.shape == (2, 206, 10)  # 313 frames / stride 32
    focal_bce(out.clip_logits, torch.rand(2, 206)).backward()
    assert model.head.pool.p.grad is not None
    assert all(p.grad is not None for p in model.backbone.parameters() if p.requires_grad)


def test_the_family_model_hears_at_the_params_sample_rate():
    from conftest import tiny_params

    from birdclef.train import build_model

    params = tiny_params()
    model = build_model(params.family["eca"], 5, params.train, 22_050)
    assert torch.equal(model.frontend.mel_filters, MelFrontend(sample_rate=22_050).mel_filters)
    assert not torch.equal(model.frontend.mel_filters, MelFrontend(sample_rate=32_000).mel_filters)


def test_channels_last_model_computes_what_the_contiguous_one_does():
    from conftest import tiny_params

    from birdclef.train import build_model

    params = tiny_params()
    family = params.family["eca"]
    torch.manual_seed(0)
    nhwc = build_model(family, 5, replace(params.train, channels_last=True), params.audio.sample_rate)
    nchw = build_model(family, 5, replace(params.train, channels_last=False), params.audio.sample_rate)
    nchw.load_state_dict(nhwc.state_dict())
    wave = torch.randn(2, 32000)
    results = []
    for model in (nhwc, nchw):
        features = []
        model.backbone.register_forward_hook(lambda module, inputs, output: features.append(output[-1]))
        output = model.eval()(wave)
        output.clip_logits.sum().backward()
        grads = torch.cat([parameter.grad.flatten() for parameter in model.parameters()])
        results.append((features[0], output.clip_logits.detach(), grads))
    (nhwc_features, *nhwc_values), (nchw_features, *nchw_values) = results
    # The layout is what differs: the backbone's feature maps come out NHWC only from the first.
    assert nhwc_features.is_contiguous(memory_format=torch.channels_last) and not nhwc_features.is_contiguous()
    assert nchw_features.is_contiguous()
    torch.testing.assert_close(nhwc_values[0], nchw_values[0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(nhwc_values[1], nchw_values[1], atol=1e-4, rtol=1e-3)
