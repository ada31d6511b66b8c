"""The networks: shapes for any size, gradients, parameter counts, determinism, initialisation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from MedGANDenoiseLib.networks import (
    VARIANTS,
    PatchDiscriminator,
    build_generator,
    build_predictor,
    count_parameters,
    widen_dncnn,
)

SMALL = {"unet": {"base_width": 4}, "dncnn": {"width": 8, "num_layers": 5}, "srdensenet": {"growth_rate": 4, "num_blocks": 2}}
DOWNSCALED = {"dncnn": {"width": 8, "num_layers": 5, "downscale": 2},
              "srdensenet": {"growth_rate": 4, "num_blocks": 2, "downscale": 3}}


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("mode", ["both", "content", "noise"])
@pytest.mark.parametrize("size", [(37, 53), (1, 1), (16, 16)])
def test_any_size_gives_three_outputs_of_the_input_shape(variant, mode, size):
    generator = build_generator(variant, SMALL[variant], mode=mode).eval()
    x = torch.randn(1, 1, *size)
    denoised, content, noise = generator(x)
    for output in (denoised, content, noise):
        assert output.shape == x.shape


def test_refinement_stage_starts_as_the_identity_and_then_refines_the_fused_output():
    torch.manual_seed(0)
    refined = build_generator("dncnn", SMALL["dncnn"], refine=True).eval()
    x = torch.randn(2, 1, 21, 18)
    fused = refined.fusion(torch.cat([refined(x)[1], x - refined(x)[2]], dim=1))
    assert refined(x)[0].shape == x.shape
    torch.testing.assert_close(refined(x)[0], fused, msg="its output layer starts at zero: y + r(y) = y")
    with torch.no_grad():
        refined.refinement.output_layer.weight.normal_(0, 0.1)
    assert not torch.allclose(refined(x)[0], fused)


@pytest.mark.parametrize("downscale", [1, 2])
def test_dncnn_predictors_start_at_zero_so_the_generator_starts_as_the_identity(downscale):
    generator = build_generator("dncnn", {**SMALL["dncnn"], "downscale": downscale}, residual_content=True).eval()
    x = torch.randn(1, 1, 20, 22)
    denoised, content, noise = generator(x)
    torch.testing.assert_close(denoised, x)
    assert float(noise.detach().abs().max()) == 0.0
    assert generator.noise_predictor.output_layer is [m for m in generator.noise_predictor if isinstance(m, torch.nn.Conv2d)][-1]


@pytest.mark.parametrize("variant", VARIANTS)
def test_gradients_reach_both_predictors_and_the_fusion(variant):
    generator = build_generator(variant, SMALL[variant])
    x, clean = torch.randn(2, 1, 24, 24), torch.randn(2, 1, 24, 24)
    denoised, content, noise = generator(x)
    (F.l1_loss(denoised, clean) + F.l1_loss(noise, x - clean)).backward()
    for part in (generator.content_predictor, generator.noise_predictor, generator.fusion):
        norm = sum(p.grad.abs().sum() for p in part.parameters())
        assert norm > 0


def test_fusion_joins_content_and_second_estimate():
    generator = build_generator("dncnn", SMALL["dncnn"]).eval()
    x = torch.randn(1, 1, 12, 12)
    denoised, content, noise = generator(x)
    expected = 0.5 * content + 0.5 * (x - noise)  # the fusion starts as the average (init_weights)
    torch.testing.assert_close(denoised, expected)


def conv_params(c_in, c_out, k, bias=True):
    return c_in * c_out * k * k + (c_out if bias else 0)


def double_conv(c_in, c_out):
    return conv_params(c_in, c_out, 3, False) + 2 * c_out + conv_params(c_out, c_out, 3, False) + 2 * c_out


def test_parameter_counts_at_reference_widths():
    # U-Net, width 64, 4 levels, bilinear upsampling (the bottleneck keeps 512 channels):
    # 64-128-256-512-512 down, 1024->256, 512->128, 256->64, 128->64 up, 1x1 head. About 13.4 M.
    w = 64
    unet = (double_conv(1, w) + double_conv(w, 2 * w) + double_conv(2 * w, 4 * w) + double_conv(4 * w, 8 * w)
            + double_conv(8 * w, 8 * w) + double_conv(16 * w, 4 * w) + double_conv(8 * w, 2 * w) + double_conv(4 * w, w)
            + double_conv(2 * w, w) + conv_params(w, 1, 1))
    assert count_parameters(build_predictor("unet", base_width=64)) == unet
    assert 13.0e6 < unet < 13.8e6
    # DnCNN, 17 layers of width 64: about 0.56 M
    dncnn = conv_params(1, 64, 3) + 15 * (conv_params(64, 64, 3, False) + 128) + conv_params(64, 1, 3)
    assert count_parameters(build_predictor("dncnn")) == dncnn
    # reduced SRDenseNet: 6 blocks x 4 convs, growth 16, 1x1 block transitions, 1x1 bottleneck to 128
    g, c = 16, 64
    block = sum(conv_params(c + i * g, g, 3) for i in range(4)) + conv_params(c + 4 * g, c, 1)
    srdense = conv_params(1, c, 3) + 6 * block + conv_params(7 * c, 128, 1) + conv_params(128, 1, 3)
    assert count_parameters(build_predictor("srdensenet")) == srdense


def test_eval_mode_is_deterministic_and_train_mode_updates_batchnorm():
    generator = build_generator("unet", SMALL["unet"])
    x = torch.randn(2, 1, 32, 32)
    generator.eval()
    with torch.no_grad():
        torch.testing.assert_close(generator(x)[0], generator(x)[0], rtol=0, atol=0)
    before = generator.content_predictor.stem[1].running_mean.clone()
    generator.train()
    generator(x)
    assert not torch.equal(before, generator.content_predictor.stem[1].running_mean)


def test_initialisation_follows_the_method():
    generator = build_generator("unet", {"base_width": 32})
    conv = generator.content_predictor.down[2][1][0].weight
    assert abs(conv.std().item() - 0.02) < 0.002
    bn = generator.content_predictor.down[2][1][1]
    assert abs(bn.weight.mean().item() - 1.0) < 0.01 and bn.bias.abs().max().item() == 0
    assert torch.equal(generator.fusion.weight, torch.full_like(generator.fusion.weight, 0.5))


def test_a_batchnorm_free_dncnn_gets_he_initialisation_and_a_zero_output_layer():
    torch.manual_seed(0)
    predictor = build_generator("dncnn", {"width": 64, "num_layers": 6, "batch_norm": False}).noise_predictor
    convs = [m for m in predictor if isinstance(m, torch.nn.Conv2d)]
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in predictor)
    for conv in convs[1:-1]:  # He: std sqrt(2 / fan_in), fan_in = 64 * 3 * 3
        assert abs(conv.weight.std().item() - (2 / (64 * 9)) ** 0.5) < 0.005
        assert conv.bias is not None and conv.bias.abs().max().item() == 0
    assert convs[-1].weight.abs().max().item() == 0, "the output layer starts at zero: the generator starts as the identity"
    with_bn = build_generator("dncnn", {"width": 64, "num_layers": 6}).noise_predictor
    assert abs([m for m in with_bn if isinstance(m, torch.nn.Conv2d)][1].weight.std().item() - 0.02) < 0.002


def test_patch_discriminator_scores_a_grid_of_patches():
    scores = PatchDiscriminator(width=8)(torch.randn(2, 3, 64, 64))
    assert scores.shape[:2] == (2, 1) and scores.shape[2] > 1 and scores.shape[3] > 1


def test_unknown_variant_or_mode_names_the_valid_ones():
    with pytest.raises(ValueError, match="unet, dncnn, srdensenet"):
        build_generator("resnet")
    with pytest.raises(ValueError, match="both, content, noise"):
        build_generator("unet", SMALL["unet"], mode="fused")


@pytest.mark.parametrize("variant", sorted(DOWNSCALED))
@pytest.mark.parametrize("size", [(37, 53), (1, 1), (18, 18)])
def test_downscaled_predictors_take_any_size_and_return_the_input_grid(variant, size):
    generator = build_generator(variant, DOWNSCALED[variant], residual_content=True).eval()
    assert generator.size_multiple == DOWNSCALED[variant]["downscale"]
    x = torch.randn(1, 1, *size)
    for output in generator(x):
        assert output.shape == x.shape


def test_a_downscaled_dncnn_is_the_full_resolution_body_on_the_unshuffled_image():
    """downscale=2 must be exactly: pixel-unshuffle, a DnCNN on 4 channels, pixel-shuffle; so each
    output pixel depends on its own 2 x 2 cell's phase, and a receptive field twice as wide."""
    torch.manual_seed(0)
    predictor = build_predictor("dncnn", width=8, num_layers=4, downscale=2).eval()
    body = build_predictor("dncnn", in_channels=4, out_channels=4, width=8, num_layers=4).eval()
    body.load_state_dict({k: v for k, v in zip(body.state_dict(), predictor.state_dict().values())})
    x = torch.randn(1, 1, 24, 20)
    with torch.no_grad():
        torch.testing.assert_close(predictor(x), F.pixel_shuffle(body(F.pixel_unshuffle(x, 2)), 2))
        probe = torch.zeros(1, 1, 64, 64)
        probe[0, 0, 32, 32] = 1.0
        reach = (predictor(probe) - predictor(torch.zeros_like(probe))).abs()[0, 0] > 0
    rows = reach.any(dim=1).nonzero().flatten()
    # 4 layers of 3x3 convs span 9 cells of the half-resolution grid, 18 pixels (9 at full resolution)
    assert int(rows.max() - rows.min()) + 1 >= 16


def test_downscale_must_be_positive():
    with pytest.raises(ValueError, match="downscale"):
        build_predictor("dncnn", downscale=0)
    with pytest.raises(ValueError, match="downscale"):
        build_predictor("srdensenet", downscale=0)


def test_widening_a_batchnorm_free_dncnn_keeps_its_outputs_and_lets_the_new_channels_learn():
    def dncnn(width: int, mode: str = "both"):
        return build_generator("dncnn", {"width": width, "num_layers": 5, "downscale": 2, "batch_norm": False},
                               mode=mode, residual_content=True)

    torch.manual_seed(0)
    narrow = dncnn(6)
    with torch.no_grad():  # a trained-looking model: every weight non-zero, the output layers included
        for parameter in narrow.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    wide = widen_dncnn(narrow, dncnn(10))
    x = torch.randn(2, 1, 24, 20)
    with torch.no_grad():
        for a, b in zip(narrow(x), wide(x)):
            torch.testing.assert_close(b, a, atol=1e-6, rtol=1e-5)
    hidden = wide.noise_predictor[3].weight  # 10 x 10 x 3 x 3; the old block is [:6, :6]
    torch.testing.assert_close(hidden[:6, :6], narrow.noise_predictor[3].weight)
    assert hidden[6:].abs().sum() > 0, "the new channels keep a fresh initialisation"

    # the zeros that keep the outputs are the ones training has to move: they get gradients
    wide(x)[0].square().mean().backward()
    assert hidden.grad[:6, 6:].abs().sum() > 0
    assert wide.noise_predictor.output_layer.weight.grad[:, 6:].abs().sum() > 0

    with pytest.raises(ValueError, match="BatchNorm-free DnCNN"):
        widen_dncnn(build_generator("unet", SMALL["unet"]), build_generator("unet", {"base_width": 8}))
    with pytest.raises(ValueError, match="BatchNorm-free DnCNN"):  # BatchNorm statistics must be folded first
        widen_dncnn(build_generator("dncnn", SMALL["dncnn"]), dncnn(10))
    with pytest.raises(ValueError, match="differ in more than width"):
        widen_dncnn(narrow, dncnn(10, mode="noise"))
    with pytest.raises(ValueError, match="does not fit"):
        widen_dncnn(dncnn(10), dncnn(6))
