"""scikit-learn estimators backed by infinitely wide networks.

:class:`NNGPRegressor`, :class:`NTKRegressor`, :class:`NNGPClassifier` and
:class:`NTKClassifier` fit the closed-form predictions of an infinitely wide network:

- the mean is that of the infinite ensemble of networks trained by gradient flow on the MSE
  loss for time ``t`` (Lee et al. 2019), computed by :func:`widenets.predict.gradient_descent_mse`
  on the NTK (``NTK*``) or on the NNGP kernel (``NNGP*``, i.e. training only the readout). At
  ``t = inf`` (the default) this is kernel ridge regression
  ``f(x) = K(x, X) (K(X, X) + diag_reg * mean(diag K) * I)^{-1} y``, which for the NNGP
  kernel is the Bayesian posterior mean (Lee et al. 2018);
- classifiers regress centred one-hot targets ``e_y - 1/C`` (as in Arora et al. 2020 and
  Neural Tangents' examples) and predict the class with the largest output.

Parameters are set in ``__init__`` and only read in ``fit`` (scikit-learn's convention), so
the estimators work in ``Pipeline``, ``GridSearchCV`` and ``cross_val_score``::

    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from widenets.sklearn import NTKClassifier

    clf = make_pipeline(StandardScaler(), NTKClassifier(depth=3, diag_reg=1e-3))
    clf.fit(X_train, y_train).score(X_test, y_test)

The architecture is either ``architecture="fc"`` with ``depth`` hidden layers of the
activation ``activation`` and weight/bias scales ``w_std``/``b_std`` (NTK parameterisation),
or any widenets network (a :class:`~widenets.Layer`, e.g. a ``serial``), in which case
``depth``, ``activation``, ``w_std`` and ``b_std`` are ignored. scikit-learn passes flat
feature rows (N, D); ``input_shape`` reshapes each row (C-order, channels first) for
networks that need structured inputs, e.g. ``input_shape=(1, 40)`` for a 1-D convolutional
network on sequences of length 40 (``(C, H, W)`` for images)::

    net = wn.serial(wn.Conv(8, 5, stride=2, w_std=1.5, b_std=0.05), wn.Relu(),
                    wn.GlobalAvgPool(), wn.Dense(1, w_std=1.5, b_std=0.05))
    NTKClassifier(architecture=net, input_shape=(1, 40)).fit(X, y)   # X: (N, 40)

Kernel cache. Every ``fit`` and ``predict`` computes the network's kernels, and a
``GridSearchCV`` refits a clone for every fold and setting, so without help it recomputes
the same entries many times (``diag_reg`` and ``t`` do not change the kernel; the folds
share rows). Passing one :class:`KernelCache` as ``kernel_cache`` makes all clones share
it (cloning keeps the same object): each entry ``K(x_i, x_j)`` of each network is computed
once, keyed by the network's configuration and the bytes of the two input rows. Rows that a
per-fold preprocessing step (such as a ``StandardScaler`` inside the pipeline) changes are
new rows to the cache, kept in a group of their own, so it shares work between the settings
of a fold but not between folds. Results that nothing has reused yet are referenced, not
copied or kept alive; networks on the same rows share their input kernel, and a deeper
network of the same blocks starts from the kernel of a shallower one's hidden layers
(``widenets.serial_prefix``), so a search where no entry can be shared (every setting a new
network, every fold new rows) costs no more than without a cache (``bench/sklearn_cache.py``).
The kernels an estimator holds (``k_train_``) may be shared with its clones: do not change
them in place (the cache raises a RuntimeError if it finds one changed).

Predictive distribution of the regressors (``predict(X, return_std=True)`` or
``return_cov=True``): a Gaussian process model whose amplitude is fitted to the targets, so
the std is in the units of y and calibrated as a GP posterior. With ``Theta`` the training
kernel (the NNGP kernel ``K`` for ``NNGPRegressor``, the NTK for ``NTKRegressor``),
``lambda = diag_reg * mean(diag Theta)`` and ``y`` the centred targets (one column per
output ``o``), the model is ``y_o = f_o(X) + eps``, ``f_o ~ GP(0, s_o^2 Theta)``,
``eps ~ N(0, s_o^2 lambda I)``, and:

- the amplitude is its maximum-likelihood value
  ``s_o^2 = y_o^T (Theta + lambda I)^{-1} y_o / n`` (``amplitude_``;
  ``noise_variance_ = s_o^2 lambda``); the mean does not depend on it;
- the predictive covariance of new targets at test rows ``x`` is
  ``s_o^2 [Theta_xx - 2 Theta_x M Theta_x^T + Theta_x M (Theta + lambda I) M Theta_x^T
  + lambda I]``
  with ``M = (Theta + lambda I)^{-1} (I - exp(-(Theta + lambda I) t / y.size))`` the matrix of
  the mean ``Theta_x M y``. At ``t = inf`` (the default) this is the GP posterior predictive
  ``s_o^2 [Theta_xx - Theta_x (Theta + lambda I)^{-1} Theta_x^T + lambda I]`` (Rasmussen &
  Williams eq. 2.24), for the NNGP the Bayesian posterior of the infinitely wide network (Lee
  et al. 2018) and for the NTK the NTK-GP posterior, which an ensemble of wide networks
  trained from initialisations with an added untrained random function follows (He,
  Lakshminarayanan & Teh 2020). It is not the spread over random initialisations of trained
  networks, which is not a posterior (its prior is the NNGP, its mean the NTK's). At finite
  ``t`` it is the spread of ``f_0(x) + Theta_x M (y - f_0(X) - eps)`` over the model's prior
  draws ``f_0`` and noise ``eps`` ("sample then optimise", early stopped), plus new noise.
  Latent-function variances are ``std**2 - noise_variance_``;
- ``log_marginal_likelihood()`` is ``log p(y)`` at the fitted amplitude: choose ``diag_reg``
  (the noise) or the network by maximising it, as a GP fits its hyperparameters.

Predictive distribution of the classifiers (``predict_proba``). At infinite width the
outputs are Gaussian with covariance ``Sigma (x) I`` over the output channels, so every
output shares the same predictive variance ``sigma^2(x)``:

- NNGP at ``t = inf``: the GP posterior variance ``K(x,x) - K(x,X) (K + reg I)^{-1} K(X,x)``
  (Rasmussen & Williams eq. 2.26, ``diag_reg`` acting as observation noise; latent f);
- otherwise: the variance over random initialisations of the infinite ensemble of trained
  networks (Lee et al. 2019, eq. 16), ``K(x,x) + Theta_x M K M Theta_x^T - 2 Theta_x M K_x^T``
  with ``M = Theta^{-1} (I - exp(-Theta t))`` (``Theta = K`` for the NNGP estimators).

``predict_proba`` of a classifier is the probability, under that Gaussian predictive, that
class ``c`` has the largest output: with independent outputs ``f_j ~ N(mu_j, sigma^2)``,

    P(c) = E_{z ~ N(0, 1)} [ prod_{j != c} Phi((mu_c - mu_j) / sigma + z) ],

evaluated by Gauss-Hermite quadrature and normalised to sum to one. For the NTK classifiers
it is the fraction of an infinite ensemble of trained wide networks that votes for ``c``; for
the NNGP classifier at ``t = inf`` the posterior probability that ``c`` has the largest
latent output. It is well defined whenever ``sigma > 0``; where ``sigma = 0`` (training inputs
with ``diag_reg = 0``) it is the indicator of the argmax. These probabilities depend on the
kernel's overall scale (``w_std``, ``b_std``) relative to the targets: they are not calibrated
likelihoods of a classification model. Because ``sigma`` varies between inputs, the ranking of
``predict_proba[:, 1]`` can differ from that of ``decision_function`` (the mean difference).
"""

from __future__ import annotations

import contextlib
import math

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.utils.multiclass import check_classification_targets, type_of_target
from sklearn.utils.validation import check_is_fitted, validate_data

from widenets.architectures import ACTIVATIONS, fully_connected
from widenets.kernel_cache import CachedKernels, KernelCache, direct_kernels
from widenets.layers.base import Layer
from widenets.predict import gradient_descent_mse
from widenets.predict._linalg import Spectrum, regularize

ARCHITECTURES = ("fc",)
_HERMITE_DEGREE = 48


def fc_network(depth: int, activation="relu", w_std: float = 1.5, b_std: float = 0.05) -> Layer:
    """``depth`` x [Dense(512, w_std, b_std), activation] + Dense(1, w_std, b_std): the
    library's one fully-connected builder, :func:`widenets.architectures.fully_connected`.

    The hidden width is irrelevant to the infinite-width kernels in the NTK parameterisation.
    ``activation`` is a name in :data:`ACTIVATIONS` (shared with the CLI and the study) or a
    widenets activation layer.
    """
    return fully_connected(depth, 512, 1, w_std, b_std, activation)


def _check_t(t) -> float:
    if t is None:
        return math.inf
    try:
        t = float(t)
    except (TypeError, ValueError):
        raise ValueError(f"`t` must be a non-negative number or inf, got {t!r}.") from None
    if math.isnan(t) or t < 0:
        raise ValueError(f"`t` must be a non-negative number or inf, got {t!r}.")
    return t


def _check_diag_reg(diag_reg) -> float:
    try:
        r = float(diag_reg)
    except (TypeError, ValueError):
        raise ValueError(f"`diag_reg` must be a non-negative number, got {diag_reg!r}.") from None
    if not math.isfinite(r) or r < 0:
        raise ValueError(f"`diag_reg` must be a finite non-negative number, got {diag_reg!r}.")
    return r


def _check_input_shape(input_shape, n_features: int):
    """None, or a tuple of positive ints whose product is ``n_features``."""
    if input_shape is None:
        return None
    if isinstance(input_shape, (int, np.integer)) and not isinstance(input_shape, bool):
        input_shape = (input_shape,)
    ok = isinstance(input_shape, (tuple, list)) and len(input_shape) > 0
    ok = ok and all(
        isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s >= 1 for s in input_shape
    )
    if not ok:
        raise ValueError(
            "`input_shape` must be None or a tuple of positive ints (the per-example shape, "
            f"channels first, e.g. (1, 40)), got {input_shape!r}."
        )
    shape = tuple(int(s) for s in input_shape)
    if math.prod(shape) != n_features:
        raise ValueError(
            f"`input_shape` {shape} holds {math.prod(shape)} values per example but X has "
            f"{n_features} features."
        )
    return shape


_USER_TERMS = (
    ("`k_train_train`", "the kernel of the training inputs `X`, K(X, X),"),
    ("`k_test_train`", "the kernel of `X` against the training inputs"),
    ("`y_train`", "`y`"),
)


@contextlib.contextmanager
def _in_user_terms(fitting: bool):
    """Re-raise a ValueError of the kernel or predictor code in the estimator's terms: it
    names the arguments the user passed (X, y), not internal ones (k_train_train, x1)."""
    try:
        yield
    except ValueError as err:
        msg = str(err)
        terms = _USER_TERMS + (
            ("`x1`", "`X`" if fitting else "`X` (to predict)"),
            ("`x2`", "the training inputs `X`"),
        )
        for internal, user in terms:
            msg = msg.replace(internal, user)
        if msg == str(err):
            raise
        raise ValueError(msg) from None


class _WideNetwork(BaseEstimator):
    """Shared fit/predict of the four estimators; ``_kind`` is "nngp" or "ntk"."""

    _kind = "ntk"

    def __init__(
        self,
        architecture="fc",
        depth: int = 2,
        activation="relu",
        w_std: float = 1.5,
        b_std: float = 0.05,
        diag_reg: float = 1e-4,
        t: float = math.inf,
        input_shape=None,
        kernel_cache=None,
    ):
        self.architecture = architecture
        self.depth = depth
        self.activation = activation
        self.w_std = w_std
        self.b_std = b_std
        self.diag_reg = diag_reg
        self.t = t
        self.input_shape = input_shape
        self.kernel_cache = kernel_cache

    # ----- pieces ------------------------------------------------------------------------------
    def _network(self) -> Layer:
        if isinstance(self.architecture, Layer):
            return self.architecture
        if isinstance(self.architecture, str) and self.architecture.lower() in ARCHITECTURES:
            return fc_network(self.depth, self.activation, self.w_std, self.b_std)
        raise ValueError(
            f"`architecture` must be one of {ARCHITECTURES} or a widenets network (Layer), got "
            f"{self.architecture!r}."
        )

    def _kernels(self, x1: np.ndarray, x2: np.ndarray | None = None) -> CachedKernels:
        """nngp, ntk (N1, N2) and the output variances of flat rows x1, x2 (float64)."""
        with _in_user_terms(fitting=x2 is None):
            if self.kernel_cache is not None:
                return self.kernel_cache.kernels(
                    self.network_, x1, x2, self._input_shape, key=self._cache_key_
                )
            return direct_kernels(self.network_, x1, x2, self._input_shape)

    def _fit_targets(self, X, y2d: np.ndarray):
        """Store the train kernels and the gradient-flow predictor for targets (N, O)."""
        self.network_ = self._network()
        self._t = _check_t(self.t)
        self._reg = _check_diag_reg(self.diag_reg)
        self._input_shape = _check_input_shape(self.input_shape, X.shape[1])
        if self.kernel_cache is not None and not isinstance(self.kernel_cache, KernelCache):
            raise ValueError(
                "`kernel_cache` must be None or a widenets.sklearn.KernelCache, got "
                f"{self.kernel_cache!r}."
            )
        self.X_fit_ = np.array(X, dtype=np.float64, copy=True)
        self._cache_key_ = (
            None
            if self.kernel_cache is None
            else self.kernel_cache.key(self.network_, self._input_shape, X.shape[1])
        )
        k = self._kernels(self.X_fit_)
        self.k_train_ = {"nngp": k.nngp, "ntk": k.ntk}
        self.y_fit_ = torch.from_numpy(np.asarray(y2d, dtype=np.float64))
        with _in_user_terms(fitting=True):
            self.predictor_ = gradient_descent_mse(
                self.k_train_[self._kind], self.y_fit_, diag_reg=self._reg
            )

    def _mean_and_var(self, X, want_var: bool):
        """Predictive mean (N_test, O) and, if asked, variance (N_test,) as numpy arrays."""
        check_is_fitted(self, "predictor_")
        X = validate_data(self, X, reset=False, dtype=np.float64)
        k = self._kernels(np.ascontiguousarray(X), self.X_fit_)
        theta_x = k.ntk if self._kind == "ntk" else k.nngp
        with _in_user_terms(fitting=False):
            mean = self.predictor_(self._t, theta_x).numpy()
        if not want_var:
            return mean, None
        var = self._variance(k.cov1, k.nngp, theta_x)
        return mean, var.clamp_min(0.0).numpy()

    def _variance(self, k_xx_diag, k_x, theta_x):
        """sigma^2(x) of one output channel (see the module docstring)."""
        k_train = self.k_train_["nngp"]
        theta = regularize(self.k_train_[self._kind], self._reg, False)
        chol, info = torch.linalg.cholesky_ex(theta)
        if math.isinf(self._t) and int(info) == 0:
            w = torch.cholesky_solve(theta_x.T, chol).T  # Theta_x Theta^{-1}
        else:  # finite t, or a singular kernel at t = inf (pseudo-inverse)
            spec = Spectrum(theta)
            tau = torch.tensor([self._t / self.y_fit_.numel()], dtype=torch.float64)
            h = spec.growth_over_e(tau)[0]  # eigenvalues of M
            w = ((theta_x @ spec.evecs) * h) @ spec.evecs.T  # Theta_x M
        if self._kind == "nngp" and math.isinf(self._t):  # Bayesian posterior
            return k_xx_diag - (w * k_x).sum(1)
        return k_xx_diag + ((w @ k_train) * w).sum(1) - 2 * (w * k_x).sum(1)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = False
        return tags


class _Regressor(RegressorMixin, _WideNetwork):
    def fit(self, X, y):
        """Fit to inputs X (N, D) and targets y (N,) or (N, O).

        The targets are centred by their training mean (a constant prior mean), so the
        predictions revert to it far from the data. Each output's amplitude is then fitted by
        maximum likelihood (``amplitude_``, see the class docstring).
        """
        X, y = validate_data(self, X, y, dtype=np.float64, y_numeric=True, multi_output=True)
        y = np.asarray(y, dtype=np.float64)
        self._y_1d = y.ndim == 1
        y2 = y.reshape(len(y), -1)
        self.y_mean_ = y2.mean(0)
        self._fit_targets(X, y2 - self.y_mean_)
        theta = self.k_train_[self._kind]
        self._noise = self._reg * float(theta.diagonal().mean())  # lambda, kernel units
        n = self.y_fit_.shape[0]
        self.amplitude_ = (self.y_fit_ * self._solve(self.y_fit_)).sum(0).numpy() / n
        self.noise_variance_ = self.amplitude_ * self._noise
        return self

    def _solve(self, rhs: torch.Tensor) -> torch.Tensor:
        """(Theta + lambda I)^+ rhs, by the predictor's Cholesky factor when it is safely
        positive definite (shared with the t = inf mean), else its pseudo-inverse."""
        with _in_user_terms(fitting=True):
            out = self.predictor_._converged_solve(rhs)
            if out is not None:
                return out
            spec = self.predictor_.spectrum
        h = spec.growth_over_e(torch.tensor([math.inf], dtype=torch.float64))[0]
        return spec.evecs @ (h[:, None] * (spec.evecs.T @ rhs))

    def _latent_cov(self, theta_x, theta_xx, full: bool):
        """Covariance of f at the test rows at unit amplitude: (N,) diagonal or (N, N).

        Theta_xx - W Theta_x^T with W = Theta_x (Theta + lambda I)^+ at t = inf; at finite t
        Theta_xx - U diag(h (2 - h e)) U^T with U = Theta_x V, Theta + lambda I = V diag(e) V^T
        and h = (1 - exp(-e tau)) / e the eigenvalues of M (module docstring).
        """
        if math.isinf(self._t):
            w = self._solve(theta_x.T).T
            if full:
                c = theta_xx - w @ theta_x.T
                return (c + c.T) / 2
            return theta_xx - (w * theta_x).sum(1)
        spec = self.predictor_.spectrum
        tau = torch.tensor([self._t / self.y_fit_.numel()], dtype=torch.float64)
        h = spec.growth_over_e(tau)[0]
        g = h * (2 - h * spec.evals)
        u = theta_x @ spec.evecs
        if full:
            c = theta_xx - (u * g) @ u.T
            return (c + c.T) / 2
        return theta_xx - (u * u * g).sum(1)

    def _self_kernel_diag(self, X: np.ndarray, k: CachedKernels) -> torch.Tensor:
        """Theta(x, x) of each test row (the NNGP's is ``k.cov1``; the NTK's by blocks)."""
        if self._kind == "nngp":
            return k.cov1
        blocks = [self._kernels(X[i : i + 64]).ntk.diagonal() for i in range(0, len(X), 64)]
        return torch.cat(blocks) if blocks else torch.zeros(0, dtype=torch.float64)

    def predict(self, X, return_std: bool = False, return_cov: bool = False):
        """Predictive mean (N,) or (N, O); with ``return_std`` also the predictive standard
        deviation of a new target at each row, (N,) or (N, O), or with ``return_cov`` the
        predictive covariance of the new targets, (N, N) or (N, N, O), in the units of y
        (class docstring)."""
        if return_std and return_cov:
            raise ValueError(
                "`return_std` and `return_cov` cannot both be True: ask for one (the std is "
                "the square root of the covariance's diagonal)."
            )
        check_is_fitted(self, "predictor_")
        X = validate_data(self, X, reset=False, dtype=np.float64)
        X = np.ascontiguousarray(X)
        k = self._kernels(X, self.X_fit_)
        theta_x = k.ntk if self._kind == "ntk" else k.nngp
        with _in_user_terms(fitting=False):
            mean = self.predictor_(self._t, theta_x).numpy() + self.y_mean_
        out = mean[:, 0] if self._y_1d else mean
        if not (return_std or return_cov):
            return out
        scale = self.amplitude_ if not self._y_1d else self.amplitude_[0]
        if return_std:
            latent = self._latent_cov(theta_x, self._self_kernel_diag(X, k), full=False)
            var = latent.clamp_min(0.0).numpy() + self._noise
            return out, np.sqrt(np.multiply.outer(var, scale))
        theta_xx = getattr(self._kernels(X), self._kind)
        cov = self._latent_cov(theta_x, theta_xx, full=True).numpy()
        idx = np.diag_indices(len(X))
        cov[idx] = np.maximum(cov[idx], 0.0) + self._noise
        return out, np.multiply.outer(cov, scale)

    def log_marginal_likelihood(self) -> float:
        """log p(y | X) of the training targets under the fitted GP, summed over outputs:
        sum_o [-n/2 (log(2 pi amplitude_o) + 1) - 1/2 log det(Theta + lambda I)], the
        marginal likelihood at the maximum-likelihood amplitude. Larger is better: compare
        it across ``diag_reg`` (or networks) to choose them as a GP would."""
        check_is_fitted(self, "predictor_")
        n = self.y_fit_.shape[0]
        # the Cholesky factor of Theta + lambda I that fit used, or False where it is not
        # safely positive definite (its smallest pivot below the pseudo-inverse cutoff)
        chol = self.predictor_._cholesky
        if chol is None or chol is False or not np.all(self.amplitude_ > 0):
            raise ValueError(
                "log_marginal_likelihood: the training kernel plus `diag_reg` is singular or "
                "the targets are constant, so the likelihood is unbounded; refit with a "
                f"larger `diag_reg` (got {self.diag_reg!r}) or non-constant `y`."
            )
        logdet = 2 * float(torch.log(chol.diagonal()).sum())
        return float(np.sum(-n / 2 * (np.log(2 * np.pi * self.amplitude_) + 1) - logdet / 2))

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        tags.target_tags.single_output = True
        return tags


class _Classifier(ClassifierMixin, _WideNetwork):
    def fit(self, X, y):
        """Fit to inputs X (N, D) and class labels y (N,): regression on centred one-hot
        targets e_y - 1/C."""
        X, y = validate_data(self, X, y, dtype=np.float64)
        check_classification_targets(y)
        kind = type_of_target(y)
        if kind not in ("binary", "multiclass"):
            raise ValueError(f"`y` must hold binary or multiclass labels, got {kind} targets.")
        self.classes_, codes = np.unique(y, return_inverse=True)
        n_classes = len(self.classes_)
        if n_classes < 2:
            raise ValueError(
                f"The number of classes has to be greater than one; got {n_classes} class."
            )
        targets = np.eye(n_classes)[codes] - 1.0 / n_classes
        self._fit_targets(X, targets)
        return self

    def decision_function(self, X):
        """Network outputs per class (N, C); for two classes the difference f_1 - f_0 (N,),
        positive for ``classes_[1]`` (scikit-learn's convention)."""
        mean, _ = self._mean_and_var(X, False)
        if len(self.classes_) == 2:
            return mean[:, 1] - mean[:, 0]
        return mean

    def predict(self, X):
        """The class with the largest output."""
        mean, _ = self._mean_and_var(X, False)
        return self.classes_[np.argmax(mean, axis=1)]

    def predict_proba(self, X):
        """P(class c has the largest output) under the Gaussian predictive (module doc)."""
        mean, var = self._mean_and_var(X, True)
        return _argmax_probabilities(mean, np.sqrt(var))

    def predict_log_proba(self, X):
        with np.errstate(divide="ignore"):
            return np.log(self.predict_proba(X))


def _argmax_probabilities(mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """P(argmax_j f_j = c) for independent f_j ~ N(mean_j, std^2) (shared std per row).

    P(c) = E_z[prod_{j != c} Phi((mean_c - mean_j) / std + z)] by probabilists'
    Gauss-Hermite quadrature; rows with std = 0 give the indicator of the argmax.
    """
    from scipy.special import log_ndtr

    z, w = np.polynomial.hermite_e.hermegauss(_HERMITE_DEGREE)
    w = w / w.sum()
    n, c = mean.shape
    out = np.zeros((n, c))
    scale = np.abs(mean).max(axis=1) if c else np.zeros(n)
    ok = std > 1e-12 * np.maximum(scale, 1e-300)
    if ok.any():
        mu, s = mean[ok], std[ok][:, None, None]
        gap = (mu[:, :, None] - mu[:, None, :]) / s  # (n, c, j): (mu_c - mu_j) / s
        # log prod_{j != c} Phi(gap + z), the j = c term removed (its gap is 0)
        logphi = log_ndtr(gap[..., None] + z)  # (n, c, j, q)
        logprod = logphi.sum(2) - log_ndtr(z)[None, None, :]
        out[ok] = np.exp(logprod) @ w
    if (~ok).any():
        out[~ok] = np.eye(c)[np.argmax(mean[~ok], axis=1)]
    return out / out.sum(axis=1, keepdims=True)


class NNGPRegressor(_Regressor):
    """Regression with an infinitely wide network's NNGP kernel (Bayesian posterior at t=inf).

    ``predict(X, return_std=True)`` gives the GP posterior predictive std of new targets in
    the units of y: ``s^2 (K_xx - K_x (K + lambda I)^{-1} K_x^T + lambda)`` with the
    maximum-likelihood amplitude ``s^2 = y^T (K + lambda I)^{-1} y / n`` of the centred
    targets and ``lambda = diag_reg * mean(diag K)`` (module docstring; finite t there).

    Args:
        architecture: "fc" (a fully-connected net of ``depth`` hidden layers) or any widenets
            network (a ``Layer``; then ``depth``/``activation``/``w_std``/``b_std`` are unused).
        depth: number of hidden layers of "fc".
        activation: activation name of "fc" (see :data:`ACTIVATIONS`) or a widenets activation.
        w_std, b_std: weight and bias standard deviations of every Dense layer of "fc".
        diag_reg: ridge regulariser relative to the mean diagonal of the train kernel.
        t: training time of gradient flow on the readout (inf: the posterior mean).
        input_shape: None (the network takes the flat feature rows), or the per-example shape,
            channels first, each row is reshaped to (C order), e.g. (1, 40) for a 1-D
            convolutional network on sequences of length 40.
        kernel_cache: None, or a :class:`KernelCache` shared by this estimator and its clones
            (GridSearchCV, cross_val_score) so that no kernel entry is computed twice.

    Attributes:
        amplitude_: (O,) maximum-likelihood kernel amplitude s^2 of each output.
        noise_variance_: (O,) the observation noise s^2 lambda of each output, in y units^2.
    """

    _kind = "nngp"


class NTKRegressor(_Regressor):
    """Regression with the mean of an infinite ensemble of wide networks trained by gradient
    flow for time ``t`` (the NTK; arguments as :class:`NNGPRegressor`).

    ``return_std`` / ``return_cov`` are those of the NTK-GP (the NNGP regressor's formulas
    with the NTK Theta in place of K and its own fitted amplitude; module docstring).
    """

    _kind = "ntk"


class NNGPClassifier(_Classifier):
    """Classification by NNGP regression on centred one-hot targets (arguments as
    :class:`NNGPRegressor`)."""

    _kind = "nngp"


class NTKClassifier(_Classifier):
    """Classification by NTK regression on centred one-hot targets, i.e. by an infinite
    ensemble of wide networks trained on the MSE loss (arguments as :class:`NNGPRegressor`)."""

    _kind = "ntk"


__all__ = [
    "ACTIVATIONS",
    "CachedKernels",
    "KernelCache",
    "NNGPClassifier",
    "NNGPRegressor",
    "NTKClassifier",
    "NTKRegressor",
    "fc_network",
]
