import pytest
import torch

from colorjob.models import Discriminator, Generator, count_parameters, num_downs_for


def test_seed_networks_match_pix2pix_shapes_and_sizes():
    g, d = Generator(in_channels=13), Discriminator(in_channels=16)
    # pix2pix unet_256 (3 in) = 54.414 M and basic PatchGAN (6 in) = 2.769 M; the seed's 13 / 16
    # input channels add 10 x 64 x 4 x 4 first-layer weights to each.
    assert count_parameters(Generator(in_channels=3)) == 54_413_955
    assert count_parameters(Discriminator(in_channels=6)) == 2_768_705
    assert count_parameters(g) == 54_413_955 + 10 * 64 * 16
    assert count_parameters(d) == 2_768_705 + 10 * 64 * 16
    assert len(g.downs) == 8
    with torch.no_grad():
        y = g.eval()(torch.randn(1, 13, 256, 256))
        logits = d.eval()(torch.randn(1, 16, 256, 256))
    assert y.shape == (1, 3, 256, 256)
    assert y.min() >= -1 and y.max() <= 1
    assert logits.shape == (1, 1, 30, 30)


def test_dropout_in_first_three_decoders_and_no_norm_at_bottleneck():
    g = Generator(in_channels=13)
    has = [any(isinstance(m, torch.nn.Dropout) for m in up.modules()) for up in g.ups]
    assert has == [False, True, True, True, False, False, False, False]
    bottleneck = g.downs[-1]
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in bottleneck.modules())


@pytest.mark.parametrize(("size", "blocks"), [(256, 8), (128, 7), (64, 6), (32, 5)])
def test_depth_follows_image_size(size, blocks):
    assert num_downs_for(size) == blocks
    assert len(Generator(13, image_size=size, ngf=8).downs) == blocks


def test_bad_image_size_is_a_clear_error():
    with pytest.raises(ValueError, match="power of two"):
        Generator(13, image_size=100)


def test_weight_init_is_normal_0_02():
    g = Generator(13, image_size=64, ngf=32)
    w = torch.cat(
        [
            m.weight.flatten()
            for m in g.modules()
            if isinstance(m, torch.nn.Conv2d | torch.nn.ConvTranspose2d)
        ]
    )
    assert abs(w.mean().item()) < 1e-3
    assert w.std().item() == pytest.approx(0.02, rel=0.05)


@pytest.mark.parametrize("batch", [1, 4])
def test_forward_backward_at_32px(batch):
    torch.manual_seed(0)
    g, d = Generator(13, image_size=32, ngf=16), Discriminator(16, ndf=16)
    g.train(), d.train()
    sketch, cond = torch.randn(batch, 3, 32, 32), torch.zeros(batch, 10, 32, 32)
    fake = g(torch.cat([sketch, cond], 1))
    assert fake.shape == (batch, 3, 32, 32)
    logits = d(torch.cat([fake, sketch, cond], 1))
    assert logits.shape == (batch, 1, 2, 2)
    (logits.mean() + fake.abs().mean()).backward()
    grads = [p.grad for p in g.parameters()]
    assert all(gr is not None and torch.isfinite(gr).all() for gr in grads)
    assert g.downs[0].block[0].weight.grad.abs().sum() > 0


@pytest.mark.parametrize(("n", "ncol", "pad"), [(7, 3, 2), (6, 3, 2), (5, 8, 0), (12, 4, 3)])
def test_the_sample_grid_is_laid_out_as_torchvision_lays_it_out(n, ncol, pad):
    from torchvision.utils import make_grid

    from colorjob.plots import tile

    images = torch.randint(0, 256, (n, 3, 9, 11), dtype=torch.uint8)
    expected = make_grid(images, nrow=ncol, padding=pad, pad_value=255)
    assert torch.equal(tile(images, ncol, pad), expected)
    assert not torch.equal(tile(images.flip(0), ncol, pad), expected)  # the order shows
