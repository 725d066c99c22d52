"""The finite-versus-infinite-width study of one architecture on one dataset.

``wn.study.run(config, out)`` (or ``widenets study``) computes, for one network
description: the infinite-width NNGP posterior and NTK gradient-flow predictions (Lee et
al. 2018, 2019), finite networks of several widths and seeds trained by gradient descent
and SGD (and their linearisations), ensembles, regime measures, and the comparisons of
Lee et al. 2019 ("Wide Neural Networks of Any Depth Evolve as Linear Models Under Gradient
Descent") and 2020 ("Finite Versus Infinite Neural Networks: an Empirical Study"),
written as results.json, runs.csv, figures (PNG, SVG, PDF) and index.html.

Modules: ``config`` (keys, TOML, validation), ``architectures`` (the name registry),
``stages`` (the computations, and the one definition of training time), ``findings`` (the
optional findings of Lee et al. 2020), ``theory_checks`` (the theory's predictions fitted
and checked), ``store`` (atomic files, stages verified by checksums), ``figures``,
``report`` and ``run``.
"""

from widenets.study.architectures import available_architectures
from widenets.study.config import StudyConfig, resolve
from widenets.study.run import StudyError, run

__all__ = ["StudyConfig", "StudyError", "available_architectures", "resolve", "run"]
