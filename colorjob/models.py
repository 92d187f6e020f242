"""The seed's networks: a pix2pix U-Net generator and a 70x70 PatchGAN discriminator.

Generator: ``log2(image_size)`` stride-2 encoder blocks (channels ngf, 2ngf, 4ngf, 8ngf, then 8ngf)
and mirrored decoder blocks with skip connections, Tanh out; at 256 px that is 8 blocks with
channels 64, 128, 256, 512 x 5. As in pix2pix (``unet_256``): LeakyReLU(0.2) + conv + BatchNorm
going down, ReLU + transposed conv + BatchNorm coming up, dropout 0.5 in the decoders of the
ngf*8 -> ngf*8 middle blocks (the first three after the bottleneck at 256 px), and **no norm on the
1x1 bottleneck** (BatchNorm over a 1x1 map breaks batch size 1). Input: sketch RGB (3) + one
one-hot plane per condition value (seed: 5 hair + 5 shirt -> 13 channels).

Discriminator: pix2pix ``basic`` PatchGAN (n_layers=3) over (image, sketch, condition planes)
-> (seed: 3 + 3 + 10 = 16 channels), 30x30 logits at 256 px, each seeing a 70x70 patch.

At the seed's settings the parameter counts equal pix2pix's (54.4 M and 2.78 M).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

MIN_IMAGE_SIZE = 32


def num_downs_for(image_size: int) -> int:
    """Encoder blocks for a square image: one per halving down to 1x1 (256 -> 8, 32 -> 5).

    The one rule for image sizes (configs, synthetic data and the networks all ask here): a power
    of two of at least 32.
    """
    n = int(math.log2(image_size)) if isinstance(image_size, int) and image_size > 0 else 0
    if 2**n != image_size or image_size < MIN_IMAGE_SIZE:
        raise ValueError(
            f"the image size must be a power of two >= {MIN_IMAGE_SIZE} (32, 64, 128, 256, 512...), "
            f"got {image_size}"
        )
    return n


def condition_planes(x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
    """``x`` with one constant plane per entry of the ``(B, C)`` condition vector appended."""
    b, _, h, w = x.shape
    planes = cond.to(x.dtype)[:, :, None, None].expand(b, -1, h, w)
    if x.is_contiguous(memory_format=torch.channels_last):
        return torch.cat([x, planes], 1).contiguous(memory_format=torch.channels_last)
    return torch.cat([x, planes], 1)


class Down(nn.Module):
    """LeakyReLU(0.2) -> Conv4x4/2 -> [BatchNorm]. The outermost block has no activation/norm."""

    def __init__(self, cin: int, cout: int, outermost: bool = False, norm: bool = True):
        super().__init__()
        layers: list[nn.Module] = [] if outermost else [nn.LeakyReLU(0.2, True)]
        layers.append(nn.Conv2d(cin, cout, 4, 2, 1, bias=False))
        if norm:
            layers.append(nn.BatchNorm2d(cout))
        self.block = nn.Sequential(*layers)

    def forward(self, x):
        return self.block(x)


class FiLM(nn.Module):
    """Condition-dependent scale and shift of normalised features: ``x * (1 + g(c)) + b(c)``.

    ``g`` and ``b`` are one linear map of the ``(B, C)`` condition vector (one embedding per
    condition value, summed over attributes: CLADE's class-wise modulation), zero at start.
    The map's output is multiplied by :attr:`GAIN` (an equalised learning rate, as StyleGAN's):
    Adam moves each weight by about the learning rate per step, so without it the modulation
    could grow only ~0.1 in a few hundred steps, where the seed's input planes reach a channel
    through a 16-tap kernel.
    """

    GAIN = 16.0

    def __init__(self, n_conditions: int, channels: int):
        super().__init__()
        self.to_scale_shift = nn.Linear(n_conditions, 2 * channels)
        nn.init.zeros_(self.to_scale_shift.weight)
        nn.init.zeros_(self.to_scale_shift.bias)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        out = self.to_scale_shift(cond.to(self.to_scale_shift.weight.dtype)) * self.GAIN
        scale, shift = out.chunk(2, 1)
        return x * (1 + scale[:, :, None, None].to(x.dtype)) + shift[:, :, None, None].to(x.dtype)


class Up(nn.Module):
    """ReLU -> ConvTranspose4x4/2 -> BatchNorm [-> FiLM] [-> Dropout(0.5)]; outermost: -> Tanh.

    With ``n_conditions`` the BatchNorm has no affine parameters of its own: the condition's
    FiLM scale and shift take their place.
    """

    def __init__(
        self,
        cin: int,
        cout: int,
        outermost: bool = False,
        dropout: float = 0.0,
        n_conditions: int = 0,
    ):
        super().__init__()
        layers: list[nn.Module] = [
            nn.ReLU(True),
            nn.ConvTranspose2d(cin, cout, 4, 2, 1, bias=outermost),
        ]
        self.film = None
        if outermost:
            layers.append(nn.Tanh())
        else:
            layers.append(nn.BatchNorm2d(cout, affine=not n_conditions))
            if n_conditions:
                self.film = FiLM(n_conditions, cout)
            if dropout:
                layers.append(nn.Dropout(dropout))
        self.block = nn.Sequential(*layers)

    def forward(self, x, cond=None):
        if self.film is None:
            return self.block(x)
        for layer in self.block:
            x = layer(x)
            if isinstance(layer, nn.BatchNorm2d):
                x = self.film(x, cond)
        return x


class Generator(nn.Module):
    """U-Net: ``(B, in_channels, S, S)`` -> ``(B, out_channels, S, S)`` in [-1, 1].

    ``forward(sketch, cond)`` appends the ``(B, C)`` condition vector as constant planes (the
    seed's conditioning); ``forward(x)`` takes input that already has them. ``encode`` and
    ``decode`` are the two halves (the encoder's features are the decoder's skip connections).
    """

    conditioning = "concat"

    def __init__(
        self,
        in_channels: int = 13,
        out_channels: int = 3,
        image_size: int = 256,
        ngf: int = 64,
        dropout: float = 0.5,
        _film: int = 0,
        planes: tuple[int, ...] = (),
    ):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.image_size, self.ngf = image_size, ngf
        self.planes = tuple(planes)  # condition entries also given to the output block as planes
        n = num_downs_for(image_size)
        ch = [ngf * min(2**i, 8) for i in range(n)]  # 64, 128, 256, 512, 512, 512, 512, 512
        self.downs = nn.ModuleList(
            [Down(in_channels, ch[0], outermost=True, norm=False)]
            + [Down(ch[i - 1], ch[i], norm=i < n - 1) for i in range(1, n)]  # no norm at 1x1
        )
        ups = []
        for i in reversed(range(n)):  # innermost first
            cin = ch[i] if i == n - 1 else ch[i] * 2  # skip connections double the input
            if i == 0:
                ups.append(Up(cin + len(self.planes), out_channels, outermost=True))
            else:
                middle = 4 <= i <= n - 2  # pix2pix's ngf*8 -> ngf*8 blocks carry dropout
                ups.append(
                    Up(cin, ch[i - 1], dropout=dropout if middle else 0.0, n_conditions=_film)
                )
        self.ups = nn.ModuleList(ups)
        init_weights(self)

    def encode(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> list[torch.Tensor]:
        """The encoder's features, outermost first, the bottleneck last."""
        if cond is not None and self.conditioning == "concat":
            x = condition_planes(x, cond)
        features = []
        for down in self.downs:
            x = down(x)
            features.append(x)
        return features

    def decode(
        self, features: list[torch.Tensor], cond: torch.Tensor | None = None
    ) -> torch.Tensor:
        skips = list(features)
        x = skips.pop()  # the bottleneck is the decoder's input, not a skip
        for up in self.ups[:-1]:
            x = torch.cat([up(x, cond), skips.pop()], dim=1)
        if self.planes:  # the requested colours themselves, next to the output layer
            x = condition_planes(x, cond[:, list(self.planes)])
        return self.ups[-1](x)

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        return self.decode(self.encode(x, cond), cond)


class FiLMGenerator(Generator):
    """The condition-aware U-Net: the encoder sees only the sketch; the condition modulates the
    normalisation of every decoder block (FiLM / CLADE: per-condition scale and shift, about 1 %
    more parameters). "Which colour" no longer has to travel through the whole encoder, and a
    sketch's encoder features serve all its variants (``colorjob.inference`` encodes once)."""

    conditioning = "film"

    def __init__(
        self,
        n_conditions: int = 10,
        out_channels: int = 3,
        image_size: int = 256,
        ngf: int = 64,
        dropout: float = 0.5,
        planes: tuple[int, ...] = (),
    ):
        super().__init__(
            3, out_channels, image_size, ngf, dropout, _film=n_conditions, planes=planes
        )
        self.n_conditions = n_conditions


CONDITIONINGS = ("concat", "film")
D_CONDITIONINGS = ("concat", "projection")


def build_generator(
    conditioning: str,
    n_conditions: int,
    image_size: int,
    ngf: int,
    dropout: float = 0.5,
    out_channels: int = 3,
    planes: tuple[int, ...] = (),
) -> Generator:
    """The seed's generator (``concat``: condition planes at the input) or the FiLM one.

    ``out_channels``: 3 (RGB, the seed's) or 4 (a colour layer: RGB and its coverage, see
    :mod:`colorjob.composite`). ``planes``: entries of the condition vector (a colour's R, G, B)
    also given to the output block as constant planes (colour conditions, FiLM)."""
    if out_channels not in (3, 4):
        raise ValueError(f"out_channels must be 3 (RGB) or 4 (RGB + coverage), got {out_channels}")
    if conditioning == "concat":
        return Generator(3 + n_conditions, out_channels, image_size, ngf, dropout)
    if conditioning == "film":
        return FiLMGenerator(n_conditions, out_channels, image_size, ngf, dropout, planes=planes)
    raise ValueError(
        f"conditioning must be one of {', '.join(CONDITIONINGS)}, got {conditioning!r}"
    )


def generator_for(vocab, conditioning: str, image_size: int, ngf: int, dropout: float = 0.5, layers: bool = False) -> Generator:  # fmt: skip
    """The generator for a condition vocabulary: its vector size, and (FiLM with colour
    attributes) the requested colours as planes next to the output block; ``layers``: a colour
    layer head (RGB + coverage). The one rule every builder follows (training, export, load)."""
    planes = tuple(vocab.rgb_slots()) if conditioning == "film" else ()
    return build_generator(conditioning, vocab.num_channels, image_size, ngf, dropout, 4 if layers else 3, planes)  # fmt: skip


class Discriminator(nn.Module):
    """PatchGAN: ``(B, in_channels, S, S)`` -> ``(B, 1, P, P)`` real/fake logits (P = 30 at 256).

    ``forward(image_and_sketch, cond)`` appends the condition planes, as :class:`Generator`.
    """

    def __init__(self, in_channels: int = 16, ndf: int = 64, n_layers: int = 3):
        super().__init__()
        self.in_channels, self.ndf, self.n_layers = in_channels, ndf, n_layers
        layers: list[nn.Module] = [nn.Conv2d(in_channels, ndf, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        mult = 1
        for k in range(1, n_layers + 1):
            prev, mult = mult, min(2**k, 8)
            stride = 2 if k < n_layers else 1
            layers += [
                nn.Conv2d(ndf * prev, ndf * mult, 4, stride, 1, bias=False),
                nn.BatchNorm2d(ndf * mult),
                nn.LeakyReLU(0.2, True),
            ]
        layers.append(nn.Conv2d(ndf * mult, 1, 4, 1, 1))
        self.model = nn.Sequential(*layers)
        init_weights(self)

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        return self.model(x if cond is None else condition_planes(x, cond))


class ProjectionDiscriminator(Discriminator):
    """PatchGAN on (image, sketch) with the condition entering by projection (Miyato & Koyama
    2018): each patch's logit plus the inner product of its last features with the condition's
    embedding. ``forward(image_and_sketch, cond)``."""

    conditioning = "projection"

    def __init__(self, n_conditions: int = 10, ndf: int = 64, n_layers: int = 3):
        super().__init__(6, ndf, n_layers)
        self.embed = nn.Linear(n_conditions, ndf * min(2**n_layers, 8), bias=False)
        nn.init.normal_(self.embed.weight, 0.0, 0.02)

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        h = self.model[:-1](x)
        logits = self.model[-1](h)  # a 4x4 convolution: one pixel smaller than h
        proj = (h * self.embed(cond.to(h.dtype))[:, :, None, None]).sum(1, keepdim=True)
        return logits + F.avg_pool2d(proj, 2, 1)


def build_discriminator(
    conditioning: str, n_conditions: int, ndf: int, n_layers: int
) -> Discriminator:
    """The seed's PatchGAN (``concat``) or the projection one."""
    if conditioning == "concat":
        return Discriminator(6 + n_conditions, ndf, n_layers)
    if conditioning == "projection":
        return ProjectionDiscriminator(n_conditions, ndf, n_layers)
    raise ValueError(
        f"d_conditioning must be one of {', '.join(D_CONDITIONINGS)}, got {conditioning!r}"
    )


def init_weights(net: nn.Module, gain: float = 0.02) -> None:
    """pix2pix 'normal' init: conv weights N(0, gain), BatchNorm weights N(1, gain), biases 0.

    Networks built on the ``meta`` device (shapes only, e.g. to check a weights file) are left
    as they are: they hold no values, and initialising them would only cost time.
    """
    if any(p.is_meta for p in net.parameters()):
        return
    for m in net.modules():
        if isinstance(m, nn.Conv2d | nn.ConvTranspose2d):
            nn.init.normal_(m.weight, 0.0, gain)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d) and m.affine:
            nn.init.normal_(m.weight, 1.0, gain)
            nn.init.zeros_(m.bias)


def count_parameters(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


class GANLoss(nn.Module):
    """The adversarial loss without label tensors at the call site (as pix2pix's GANLoss).

    ``vanilla``: BCE-with-logits (the seed's); ``lsgan``: least squares on the raw outputs.
    ``loss(prediction, target_is_real)``.
    """

    def __init__(self, mode: str = "vanilla", real_label: float = 1.0, fake_label: float = 0.0):
        super().__init__()
        if mode not in ("vanilla", "lsgan"):
            raise ValueError(f"gan_mode must be 'vanilla' or 'lsgan', got {mode!r}")
        self.mode = mode
        self.register_buffer("real_label", torch.tensor(real_label), persistent=False)
        self.register_buffer("fake_label", torch.tensor(fake_label), persistent=False)
        self.loss = nn.BCEWithLogitsLoss() if mode == "vanilla" else nn.MSELoss()

    def forward(self, prediction: torch.Tensor, target_is_real: bool) -> torch.Tensor:
        label = self.real_label if target_is_real else self.fake_label
        prediction = prediction.float()
        return self.loss(prediction, label.to(prediction.device).expand_as(prediction))


def set_requires_grad(nets: nn.Module | list[nn.Module], requires_grad: bool) -> None:
    """Freeze or unfreeze networks (D is frozen while G learns, so no gradient is spent on it)."""
    for net in nets if isinstance(nets, list) else [nets]:
        for p in net.parameters():
            p.requires_grad_(requires_grad)
