"""A wide network in NTK parameterisation, trained by full-batch gradient descent on MSE,
follows the infinite-width NTK prediction (Lee et al. 2019), closer as width grows."""

import torch

import widenets as wn

LR, STEPS = 0.5, 200  # continuous time t = LR * STEPS


def _task():
    g = torch.Generator().manual_seed(7)
    x = torch.randn(24, 5, generator=g, dtype=torch.float64)
    x = x / x.pow(2).mean(1, keepdim=True).sqrt()
    y = torch.sin(2 * x[:, :1]) + 0.5 * x[:, 1:2] * x[:, 2:3]
    return x[:16], y[:16], x[16:]


def _net(width):
    return wn.serial(
        wn.Dense(width, w_std=1.5, b_std=0.1),
        wn.Relu(),
        wn.Dense(width, w_std=1.5, b_std=0.1),
        wn.Relu(),
        wn.Dense(1, w_std=1.5, b_std=0.1),
    )


def _deviation(width, seed, x_train, y_train, x_test):
    net = _net(width)
    model = net.build((5,), seed=seed, dtype=torch.float64)
    with torch.no_grad():
        f_train0, f_test0 = model(x_train), model(x_test)
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    for _ in range(STEPS):  # loss normalised as in widenets.predict: ||f - y||^2 / (2 y.numel())
        opt.zero_grad()
        loss = ((model(x_train) - y_train) ** 2).sum() / (2 * y_train.numel())
        loss.backward()
        opt.step()
    with torch.no_grad():
        f_test = model(x_test)
    k_train = net.kernel(x_train).ntk
    k_test = net.kernel(x_test, x_train).ntk
    pred = wn.predict.gradient_descent_mse(k_train, y_train, learning_rate=LR)
    f_pred = pred(STEPS, k_test, fx_train_0=f_train0, fx_test_0=f_test0)
    moved = (f_pred - f_test0).norm().item()
    return (f_test - f_pred).norm().item() / moved


def test_trained_wide_network_tracks_ntk_prediction():
    """Mean over 6 initialisations of |f_trained - f_NTK| / |f_NTK - f_0| on test inputs.

    The deviation comes from the finite network's kernel fluctuating around the limit, so
    it falls like 1/sqrt(width); a single seed is noisy, hence the average.
    """
    x_train, y_train, x_test = _task()
    devs = {
        w: sum(_deviation(w, s, x_train, y_train, x_test) for s in range(6)) / 6
        for w in (64, 256, 1024)
    }
    assert devs[1024] < 0.15, devs  # within 15% of how far the prediction moves
    assert devs[1024] < devs[256] < devs[64], devs  # and closer as width grows
    assert devs[1024] < devs[64] / 2.5, devs  # roughly 1/sqrt(width): 4x expected
