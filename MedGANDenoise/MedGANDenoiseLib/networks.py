"""Networks of the content-noise complementary GAN.

Three predictor variants (U-Net, DnCNN, reduced SRDenseNet), the generator that joins a content
predictor and a noise predictor with a learned 1x1 fusion, an optional refinement stage, and the
conditional PatchGAN discriminator. Each predictor maps (N, 1, H, W) to (N, 1, H, W).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

VARIANTS = ("unet", "dncnn", "srdensenet")
MODES = ("both", "content", "noise")


def conv_bn_relu(in_channels: int, out_channels: int) -> list[nn.Module]:
    return [
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    ]


class DoubleConv(nn.Sequential):
    """Two [3x3 conv -> BatchNorm -> ReLU], the U-Net's unit at every level."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(*conv_bn_relu(in_channels, out_channels), *conv_bn_relu(out_channels, out_channels))


class UNetPredictor(nn.Module):
    """U-Net with `depth` pooling levels, widths base_width * 2**level, bilinear upsampling.

    The bottleneck keeps the width of the level above it (512 at base width 64) and each decoder
    level halves its width before the next concatenation: 13.4 M parameters at base width 64 and
    depth 4. The reference CNCL code's 1024-channel bottleneck counts 21.9 M; this is the lighter
    bilinear layout, not that recipe. Input height and width must be divisible by 2**depth;
    ContentNoiseGenerator pads for that.
    """

    def __init__(self, in_channels: int = 1, out_channels: int = 1, base_width: int = 64, depth: int = 4):
        super().__init__()
        widths = [base_width * 2**level for level in range(depth + 1)]
        self.stem = DoubleConv(in_channels, widths[0])
        self.down = nn.ModuleList()
        for level in range(1, depth + 1):
            out_width = widths[level] // 2 if level == depth else widths[level]
            self.down.append(nn.Sequential(nn.MaxPool2d(2), DoubleConv(widths[level - 1], out_width)))
        self.up = nn.ModuleList()
        for level in range(depth - 1, -1, -1):
            out_width = widths[level] // 2 if level > 0 else widths[0]
            self.up.append(DoubleConv(widths[level] * 2, out_width))
        self.head = nn.Conv2d(widths[0], out_channels, 1)
        self.size_multiple = 2**depth

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = [self.stem(x)]
        for block in self.down:
            skips.append(block(skips[-1]))
        y = skips.pop()
        for block in self.up:
            skip = skips.pop()
            y = F.interpolate(y, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            y = block(torch.cat([skip, y], dim=1))
        return self.head(y)

    FLOAT32_LEVELS = 3

    def keep_fine_levels_in_float32(self) -> None:
        """Run the three finest levels (stem, first two pooling blocks, last three decoder blocks,
        head) in float32 under autocast and only the coarser ones in reduced precision (in place;
        call on an inference copy). A bfloat16 image at soft-tissue level lands on 8 HU steps, far
        coarser than the noise, and features that still carry the image's level lose the noise the
        same way (largest error on a body phantom: 2.7 HU with only the full-resolution level in
        float32; 0.5 HU with the two finest for width 16, but 2.1 HU for width 32; 0.15 HU with the
        three finest for both); the coarser levels carry context, where bf16 is harmless."""
        self.stem = Float32(self.stem)
        self.head = Float32(self.head)
        for i in range(min(self.FLOAT32_LEVELS - 1, len(self.down))):
            self.down[i] = Float32(self.down[i])
        for i in range(max(0, len(self.up) - self.FLOAT32_LEVELS), len(self.up)):  # shallow U-Nets: every block
            self.up[i] = Float32(self.up[i])


class Float32(nn.Module):
    """Runs the wrapped module in float32 even inside an autocast region."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):
            return self.module(x.float())


class DnCNNPredictor(nn.Sequential):
    """DnCNN body: conv+LeakyReLU, (num_layers - 2) x conv+BN+LeakyReLU, conv to 1 channel.

    No global residual: in the complementary generator the noise predictor plays that role.
    batch_norm=False gives the hidden convolutions a bias in place of BatchNorm (an nn.Identity
    keeps the layer indices): the network a BatchNorm DnCNN becomes once its eval-mode statistics
    are folded into its convolutions, so training then optimises exactly what inference runs.
    downscale=s > 1 runs the body on the s x s pixel-unshuffled image (FFDNet's reversible
    downsampling: s*s input channels at 1/s resolution, pixel-shuffled back): s times the receptive
    field and s*s times fewer pixels per layer, so a wider body costs what a narrow one does at full
    resolution. CT noise is spatially correlated, which a 25-pixel receptive field barely spans.
    """

    def __init__(
        self, in_channels: int = 1, out_channels: int = 1, width: int = 64, num_layers: int = 17, downscale: int = 1,
        batch_norm: bool = True,
    ):
        if num_layers < 3:
            raise ValueError("DnCNN needs at least 3 layers")
        if downscale < 1:
            raise ValueError("downscale must be 1 (full resolution) or more")
        grid = downscale * downscale
        layers: list[nn.Module] = [nn.PixelUnshuffle(downscale)] if downscale > 1 else []
        layers += [nn.Conv2d(in_channels * grid, width, 3, padding=1), nn.LeakyReLU(0.2, inplace=True)]
        for _ in range(num_layers - 2):
            layers += [
                nn.Conv2d(width, width, 3, padding=1, bias=not batch_norm),
                nn.BatchNorm2d(width) if batch_norm else nn.Identity(),
                nn.LeakyReLU(0.2, inplace=True),
            ]
        layers.append(nn.Conv2d(width, out_channels * grid, 3, padding=1))
        if downscale > 1:
            layers.append(nn.PixelShuffle(downscale))
        super().__init__(*layers)
        self.size_multiple = downscale
        self.normalization_free = not batch_norm  # He initialisation, as for SRDenseNet

    @property
    def output_layer(self) -> nn.Conv2d:
        return next(m for m in reversed(self) if isinstance(m, nn.Conv2d))


class DenseBlock(nn.Module):
    """`num_convs` 3x3 conv+ReLU layers, each seeing the concatenation of all earlier outputs."""

    def __init__(self, in_channels: int, growth_rate: int, num_convs: int):
        super().__init__()
        self.convs = nn.ModuleList(
            nn.Sequential(nn.Conv2d(in_channels + i * growth_rate, growth_rate, 3, padding=1), nn.ReLU(inplace=True))
            for i in range(num_convs)
        )
        self.out_channels = in_channels + num_convs * growth_rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for conv in self.convs:
            features.append(conv(torch.cat(features, dim=1)))
        return torch.cat(features, dim=1)


class SRDenseNetPredictor(nn.Module):
    """Reduced SRDenseNet: dense blocks whose outputs are all concatenated (dense skips) into a
    1x1 bottleneck, then a 3x3 reconstruction conv to 1 channel; no upsampling layers.

    It has no normalisation layers, so init_weights gives it He initialisation: with N(0, 0.02)
    activations shrank about 10x per dense block. downscale=s > 1 runs it on the s x s
    pixel-unshuffled image, as DnCNNPredictor does."""

    normalization_free = True

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        num_blocks: int = 6,
        convs_per_block: int = 4,
        growth_rate: int = 16,
        bottleneck_width: int = 128,
        downscale: int = 1,
    ):
        super().__init__()
        if downscale < 1:
            raise ValueError("downscale must be 1 (full resolution) or more")
        grid = downscale * downscale
        stem_width = growth_rate * convs_per_block
        self.unshuffle = nn.PixelUnshuffle(downscale) if downscale > 1 else nn.Identity()
        self.shuffle = nn.PixelShuffle(downscale) if downscale > 1 else nn.Identity()
        self.stem = nn.Sequential(nn.Conv2d(in_channels * grid, stem_width, 3, padding=1), nn.ReLU(inplace=True))
        self.blocks = nn.ModuleList()
        for _ in range(num_blocks):
            block = DenseBlock(stem_width, growth_rate, convs_per_block)
            self.blocks.append(nn.Sequential(block, nn.Conv2d(block.out_channels, stem_width, 1), nn.ReLU(inplace=True)))
        concat_width = stem_width * (num_blocks + 1)
        self.bottleneck = nn.Sequential(nn.Conv2d(concat_width, bottleneck_width, 1), nn.ReLU(inplace=True))
        self.reconstruction = nn.Conv2d(bottleneck_width, out_channels * grid, 3, padding=1)
        self.size_multiple = downscale

    @property
    def output_layer(self) -> nn.Conv2d:
        return self.reconstruction

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [self.stem(self.unshuffle(x))]
        for block in self.blocks:
            features.append(block(features[-1]))
        return self.shuffle(self.reconstruction(self.bottleneck(torch.cat(features, dim=1))))


def build_predictor(variant: str, **kwargs: Any) -> nn.Module:
    """One predictor of the named variant; kwargs are its widths and depths."""
    classes = {"unet": UNetPredictor, "dncnn": DnCNNPredictor, "srdensenet": SRDenseNetPredictor}
    if variant not in classes:
        raise ValueError(f"unknown predictor variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    return classes[variant](**kwargs)


class RefinementNet(nn.Module):
    """Small residual CNN after the fusion (second paper): y + r(y)."""

    normalization_free = True

    def __init__(self, width: int = 32, num_layers: int = 5):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(1, width, 3, padding=1), nn.ReLU(inplace=True)]
        for _ in range(num_layers - 2):
            layers += [nn.Conv2d(width, width, 3, padding=1), nn.ReLU(inplace=True)]
        layers.append(nn.Conv2d(width, 1, 3, padding=1))
        self.body = nn.Sequential(*layers)

    @property
    def output_layer(self) -> nn.Conv2d:
        return self.body[-1]

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return y + self.body(y)


class ContentNoiseGenerator(nn.Module):
    """Content predictor + noise predictor + learned 1x1 fusion of [c, x - n].

    mode="both" is the complementary generator; "content" and "noise" are the single-predictor
    ablations (the output is then c, or x - n). forward() returns (denoised, content, noise);
    in the ablations the missing prediction is derived from the other (n = x - c, c = x - n).
    Any H x W works: the input is reflect-padded to the predictors' size multiple and cropped back.

    residual_content=True makes the content predictor's job intensity-independent: c = x + Pc(x),
    so both predictors output small corrections. medgan-train uses it; False is the layout of the
    first shipped models, where Pc regresses absolute intensity (its branch was the weak half).
    The fusion and every sum with x run in float32 even under autocast, so reduced precision only
    touches the small predictor outputs (bf16 on the (HU + 1024) / 4096 map would otherwise round
    soft tissue to 8 HU steps).
    """

    def __init__(
        self,
        variant: str = "unet",
        predictor: dict[str, Any] | None = None,
        mode: str = "both",
        refine: bool = False,
        residual_content: bool = False,
    ):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"unknown generator mode {mode!r}; choose one of {', '.join(MODES)}")
        predictor = dict(predictor or {})
        self.variant, self.mode, self.residual_content = variant, mode, residual_content
        self.content_predictor = build_predictor(variant, **predictor) if mode in ("both", "content") else None
        self.noise_predictor = build_predictor(variant, **predictor) if mode in ("both", "noise") else None
        self.fusion = nn.Conv2d(2, 1, 1) if mode == "both" else None
        self.refinement = RefinementNet() if refine else None
        any_predictor = self.content_predictor or self.noise_predictor
        self.size_multiple = any_predictor.size_multiple

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        height, width = x.shape[-2:]
        padded = self._pad(x)
        content = self.content_predictor(padded)[..., :height, :width].float() if self.content_predictor else None
        noise = self.noise_predictor(padded)[..., :height, :width].float() if self.noise_predictor else None
        x = x.float()
        with torch.autocast(x.device.type, enabled=False):
            if content is not None and self.residual_content:
                content = x + content
            if content is None:
                content = x - noise
                denoised = content
            elif noise is None:
                noise = x - content
                denoised = content
            else:
                denoised = self.fusion(torch.cat([content, x - noise], dim=1))
        if self.refinement is not None:
            denoised = self.refinement(denoised)
        return denoised, content, noise

    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        multiple = self.size_multiple
        height, width = x.shape[-2:]
        pad_h, pad_w = (-height) % multiple, (-width) % multiple
        if pad_h == 0 and pad_w == 0:
            return x
        # reflect padding needs pad < size; fall back to replicate for tiny images
        mode = "reflect" if pad_h < height and pad_w < width else "replicate"
        return F.pad(x, (0, pad_w, 0, pad_h), mode=mode)


def build_generator(
    variant: str = "unet",
    predictor: dict[str, Any] | None = None,
    mode: str = "both",
    refine: bool = False,
    residual_content: bool = False,
) -> ContentNoiseGenerator:
    """The generator described by a model card's `architecture` entry, initialised per METHOD.md."""
    generator = ContentNoiseGenerator(
        variant=variant, predictor=predictor, mode=mode, refine=refine, residual_content=residual_content
    )
    init_weights(generator)
    return generator


class PatchDiscriminator(nn.Sequential):
    """Conditional PatchGAN: 3 input channels [content, noise, noisy input], `num_layers` stride-2
    4x4 convs (width doubling, InstanceNorm from the second, LeakyReLU 0.2), a 4x4 conv to 1
    channel. Outputs one real/fake score per overlapping patch."""

    def __init__(self, in_channels: int = 3, width: int = 64, num_layers: int = 4):
        layers: list[nn.Module] = [nn.Conv2d(in_channels, width, 4, stride=2, padding=1), nn.LeakyReLU(0.2, inplace=True)]
        channels = width
        for _ in range(1, num_layers):
            out = min(channels * 2, width * 8)
            layers += [
                nn.Conv2d(channels, out, 4, stride=2, padding=1),
                nn.InstanceNorm2d(out),
                nn.LeakyReLU(0.2, inplace=True),
            ]
            channels = out
        layers.append(nn.Conv2d(channels, 1, 4, padding=1))
        super().__init__(*layers)


def init_weights(module: nn.Module, std: float = 0.02) -> None:
    """Conv weights ~ N(0, std), BatchNorm weight ~ N(1, std) and bias 0 (pix2pix / METHOD.md).

    Submodules marked `normalization_free` (SRDenseNet, the refinement net, a DnCNN built with
    batch_norm=False) get He initialisation
    instead, which keeps their activations at scale without BatchNorm, except their `output_layer`,
    which starts at zero so that their residual outputs start at zero (with He or even N(0, 0.02)
    there, the branches started hundreds of HU off and training wandered). DnCNN's output layer
    starts at zero too: after its BatchNorm layers an N(0, 0.02) output conv gave corrections with
    a standard deviation of 900-1,450 HU on a soft-tissue batch (widths 24-64), and the first epoch
    ended with the loss twice the do-nothing level (the shipped DnCNN models of earlier stops were
    trained without this). The fusion starts as the plain average of its two inputs (weights 0.5, 0.5, bias 0) rather than near zero, so an
    untrained generator already returns a content estimate of the right scale.
    """
    free = [sub for sub in module.modules() if getattr(sub, "normalization_free", False)]
    outputs = {id(sub.output_layer) for sub in free}
    outputs |= {id(sub.output_layer) for sub in module.modules() if isinstance(sub, DnCNNPredictor)}
    he_convs = {id(m) for sub in free for m in sub.modules()} - outputs
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            if id(m) in he_convs:
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            elif id(m) in outputs:
                nn.init.zeros_(m.weight)
            else:
                nn.init.normal_(m.weight, 0.0, std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, std)
            nn.init.zeros_(m.bias)
    fusion = getattr(module, "fusion", None)
    if isinstance(fusion, nn.Conv2d):
        with torch.no_grad():
            fusion.weight.fill_(0.5)
            fusion.bias.zero_()


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())



def fold_batchnorm(module: nn.Module) -> nn.Module:
    """Fold every eval-mode BatchNorm that directly follows a convolution in an nn.Sequential into
    that convolution's weights and bias (in place; call on a copy). Inference then skips one
    memory pass per layer; the result equals the unfolded network to float rounding."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    for child in module.children():
        if isinstance(child, nn.Sequential):
            for i in range(len(child) - 1):
                if isinstance(child[i], nn.Conv2d) and isinstance(child[i + 1], nn.BatchNorm2d):
                    child[i] = fuse_conv_bn_eval(child[i], child[i + 1])
                    child[i + 1] = nn.Identity()
        fold_batchnorm(child)
    return module


def widen_dncnn(narrow: nn.Module, wide: nn.Module) -> nn.Module:
    """Copy a BatchNorm-free DnCNN generator into a wider one (in place) without changing its outputs.

    Net2Net-style: each convolution's old block keeps its weights and the new channels keep the
    wide model's fresh initialisation, except the weights from new channels into old ones, which
    are set to zero. The old channels then see only old channels, layer after layer, so the wide
    network computes what the narrow one did (to float rounding); the new channels join in as
    training moves those zeros. Valid for a plain convolution chain (DnCNN, BatchNorm folded or
    absent), where channel k of one layer feeds the next layer only through its input channel k.
    """
    for model in (narrow, wide):
        predictors = [p for p in (model.content_predictor, model.noise_predictor) if p is not None]
        if not predictors or not all(isinstance(p, DnCNNPredictor) for p in predictors) or any(
            isinstance(m, nn.BatchNorm2d) for p in predictors for m in p.modules()):  # folded ones pass
            raise ValueError("widen_dncnn takes generators whose predictors are BatchNorm-free DnCNNs")
    narrow_state = narrow.state_dict()
    wide_state = wide.state_dict()
    if narrow_state.keys() != wide_state.keys():
        raise ValueError("the two generators differ in more than width (layers, mode or refinement)")
    with torch.no_grad():
        for key, old in narrow_state.items():
            new = wide_state[key]
            if new.dim() != old.dim() or any(n < o for n, o in zip(new.shape, old.shape)):
                raise ValueError(f"{key}: {tuple(old.shape)} does not fit in {tuple(new.shape)}")
            out_old = old.shape[0]
            if new.dim() == 4:
                in_old = old.shape[1]
                new[:out_old, :in_old] = old
                new[:out_old, in_old:] = 0
            else:
                new[:out_old] = old
    return wide
