"""The tiny study configuration the study tests share: 60 digits, two widths, 8 steps."""

TINY = {
    "data": "digits",
    "n_train": 60,
    "n_test": 40,
    "widths": [8, 32],
    "seeds": 2,
    "steps": 8,
    "n_checkpoints": 4,
    "n_times": 5,
    "regime_points": 10,
    "sgd_batch_size": 20,
    "diag_reg_sweep": [0.0, 0.01],
}
