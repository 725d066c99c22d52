"""Layers with an infinite-width (kernel) face and a finite-width (module) face."""

from widenets.layers.activations import (
    ABRelu,
    Abs,
    Activation,
    Cos,
    Erf,
    Gaussian,
    Gelu,
    LeakyRelu,
    Monomial,
    Relu,
    Sign,
    Sin,
)
from widenets.layers.attention import GlobalSelfAttention
from widenets.layers.base import BuildContext, Layer, declare
from widenets.layers.combinators import (
    FanInConcat,
    FanInSum,
    FanOut,
    Identity,
    Parallel,
    Scale,
    Serial,
    fan_in_concat,
    fan_in_sum,
    fan_out,
    parallel,
    residual,
    serial,
)
from widenets.layers.conv import Conv
from widenets.layers.conv_local import ConvLocal
from widenets.layers.conv_transpose import ConvTranspose
from widenets.layers.dense import Dense
from widenets.layers.deq import DEQ, DEQModule, FixedPointError
from widenets.layers.dot_general import DotGeneral
from widenets.layers.graph import Aggregate, graph_pattern
from widenets.layers.image_resize import ImageResize
from widenets.layers.indexing import Index, Slice
from widenets.layers.masked_apply import apply_masked
from widenets.layers.normalization import Dropout, LayerNorm
from widenets.layers.nt_activations import (
    Exp,
    ExpNormalized,
    Gabor,
    Hermite,
    Polynomial,
    Rbf,
    RectifiedMonomial,
    Sigmoid_like,
)
from widenets.layers.pooling import AvgPool, Flatten, GlobalAvgPool, GlobalSumPool, SumPool
from widenets.layers.products import FanInProd, fan_in_prod
from widenets.layers.quadrature import Elementwise
from widenets.layers.repeat import Repeat, repeat
from widenets.layers.scaled import Scaled, scaled
from widenets.layers.smooth import Mish, Sigmoid, Silu, Softplus, Swish, Tanh
from widenets.layers.spiky import SpikySmooth, spike_kernel, spiky_smooth_kernel

__all__ = [
    "ABRelu",
    "Aggregate",
    "graph_pattern",
    "Abs",
    "Activation",
    "BuildContext",
    "declare",
    "Cos",
    "DEQ",
    "DEQModule",
    "Dense",
    "Elementwise",
    "Erf",
    "FanInConcat",
    "FanInSum",
    "FanOut",
    "FixedPointError",
    "Gaussian",
    "Gelu",
    "Identity",
    "Layer",
    "LeakyRelu",
    "Monomial",
    "Parallel",
    "Relu",
    "Scale",
    "Scaled",
    "Serial",
    "Sign",
    "Sigmoid",
    "Silu",
    "Sin",
    "Softplus",
    "Swish",
    "Tanh",
    "Mish",
    "SpikySmooth",
    "fan_in_concat",
    "fan_in_sum",
    "fan_out",
    "parallel",
    "residual",
    "scaled",
    "serial",
    "AvgPool",
    "Conv",
    "Dropout",
    "Flatten",
    "GlobalAvgPool",
    "GlobalSelfAttention",
    "LayerNorm",
    "Exp",
    "ExpNormalized",
    "Gabor",
    "Hermite",
    "Polynomial",
    "Rbf",
    "RectifiedMonomial",
    "Sigmoid_like",
    "spike_kernel",
    "spiky_smooth_kernel",
    "ConvLocal",
    "ConvTranspose",
    "DotGeneral",
    "FanInProd",
    "GlobalSumPool",
    "ImageResize",
    "apply_masked",
    "Index",
    "Repeat",
    "Slice",
    "SumPool",
    "fan_in_prod",
    "repeat",
]
