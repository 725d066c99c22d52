"""Kernels of a fixed set of architectures, saved or compared bit for bit.

A refactor that must not change any number (issue 17) is checked by saving the kernels
on the previous main and comparing on the new code:

    git worktree add /tmp/old <previous-commit>
    PYTHONPATH=/tmp/old/src .venv/bin/python bench/bitwise_reference.py save /tmp/ref.pt
    .venv/bin/python bench/bitwise_reference.py compare /tmp/ref.pt

``compare`` prints one line per case and exits 1 when any kernel differs in any bit.
Both run with one torch thread, so that reductions are ordered the same way.
"""

from __future__ import annotations

import sys

import torch

import widenets as wn
from widenets import architectures as arch


def _cases():
    g = torch.Generator().manual_seed(0)
    fc_x = torch.randn(9, 7, generator=g, dtype=torch.float64)
    fc_y = torch.randn(5, 7, generator=g, dtype=torch.float64)
    im_x = torch.randn(4, 3, 8, 8, generator=g, dtype=torch.float64)
    im_y = torch.randn(3, 3, 8, 8, generator=g, dtype=torch.float64)
    seq_x = torch.randn(4, 5, 6, generator=g, dtype=torch.float64)

    fc = {
        "fc_relu": arch.fully_connected(3, b_std=0.1),
        "fc_standard": arch.fully_connected(2, b_std=0.1, parameterization="standard"),
        "fc_erf": arch.fully_connected(2, b_std=0.2, activation=wn.Erf()),
        "fc_gelu": arch.fully_connected(2, b_std=0.2, activation=wn.Gelu()),
        "fc_abrelu": arch.fully_connected(2, activation=wn.ABRelu(-0.3, 1.2)),
        "fc_leaky": arch.fully_connected(2, activation=wn.LeakyRelu(0.1)),
        "fc_sign_abs": wn.serial(wn.Dense(8), wn.Abs(), wn.Dense(8), wn.Sign(), wn.Dense(1)),
        "fc_sin_cos_gauss": wn.serial(
            wn.Dense(8), wn.Sin(), wn.Dense(8), wn.Cos(), wn.Dense(8), wn.Gaussian(), wn.Dense(1)
        ),
        "fc_monomial": wn.serial(wn.Dense(8), wn.Monomial(2), wn.Dense(1)),
        "fc_elementwise": wn.serial(wn.Dense(8), wn.Elementwise(torch.tanh), wn.Dense(1)),
        "fc_layernorm_dropout": wn.serial(
            wn.Dense(8), wn.LayerNorm(), wn.Relu(), wn.Dropout(0.8), wn.Dense(1)
        ),
        "fc_residual": wn.serial(
            wn.Dense(8), wn.residual(wn.serial(wn.Relu(), wn.Dense(8))), wn.Dense(1)
        ),
        "fc_concat": wn.serial(
            wn.fan_out(2),
            wn.parallel(wn.serial(wn.Dense(8), wn.Relu()), wn.serial(wn.Dense(8), wn.Erf())),
            wn.fan_in_concat(),
            wn.Dense(1),
        ),
        "fc_scale": wn.serial(wn.Dense(8), wn.Relu(), wn.Scale(0.7), wn.Dense(1)),
        "fc_deq": wn.serial(wn.Dense(8), wn.DEQ(8, wn.Erf(), w_std=0.8), wn.Dense(1)),
        "fc_spiky": wn.serial(wn.Dense(8), wn.SpikySmooth(), wn.Dense(1)),
    }
    im = {
        "cnn_vec": arch.cnn_vec(depth=3, channels=8, b_std=0.1),
        "cnn_gap": arch.cnn_gap(depth=3, channels=8, b_std=0.1),
        "myrtle5": arch.myrtle(5, channels=8),
        "wide_resnet": arch.wide_resnet(block_size=1, k=1, base_channels=4, n_groups=2),
        "conv_standard_avgpool": wn.serial(
            wn.Conv(8, 3, parameterization="standard", b_std=0.1),
            wn.Relu(),
            wn.AvgPool(2),
            wn.Conv(8, 3, padding="same"),
            wn.Erf(),
            wn.Flatten(),
            wn.Dense(1),
        ),
        "conv_attention": wn.serial(
            wn.Conv(8, 3, padding="same"),
            wn.Relu(),
            wn.GlobalSelfAttention(8, 8, 8, 2),
            wn.GlobalAvgPool(),
            wn.Dense(1),
        ),
    }
    seq = {
        "seq_attention_layernorm": wn.serial(
            wn.Conv(8, 1),
            wn.GlobalSelfAttention(8, 8, 8, 2),
            wn.LayerNorm(over="channels"),
            wn.GlobalAvgPool(),
            wn.Dense(1),
        ),
    }
    for name, net in fc.items():
        yield name, net, fc_x, fc_y
    for name, net in im.items():
        yield name, net, im_x, im_y
    for name, net in seq.items():
        yield name, net, seq_x, seq_x[:2]


def kernels() -> dict[str, torch.Tensor]:
    out = {}
    for name, net, x, y in _cases():
        for tag, args in (("same", (x,)), ("cross", (x, y))):
            for dtype in (torch.float64, torch.float32):
                k = net.kernel(*args, dtype=dtype)
                key = f"{name}/{tag}/{str(dtype)[6:]}"
                out[key + "/nngp"] = k.nngp
                out[key + "/ntk"] = k.ntk
            k = net.kernel(*args, batch_size=2)
            out[f"{name}/{tag}/tiles2/nngp"] = k.nngp
            out[f"{name}/{tag}/tiles2/ntk"] = k.ntk
    return out


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("save", "compare"):
        print("usage: bitwise_reference.py save|compare FILE", file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    mode, path = argv
    now = kernels()
    if mode == "save":
        torch.save(now, path)
        print(f"saved {len(now)} kernels to {path}")
        return 0
    ref = torch.load(path)
    bad = 0
    for key in sorted(set(ref) | set(now)):
        a, b = ref.get(key), now.get(key)
        same = a is not None and b is not None and a.dtype == b.dtype and torch.equal(a, b)
        if not same:
            bad += 1
            diff = (a - b).abs().max().item() if a is not None and b is not None else "missing"
            print(f"DIFFERS {key}: max |diff| = {diff}")
    print(f"{len(now) - bad} of {len(now)} kernels equal bit for bit; {bad} differ")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
