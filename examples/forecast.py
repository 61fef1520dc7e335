"""Time-delay forecasting (seed 004) of a real series: yearly sunspot numbers 1700-2008 (or monthly
El Nino sea-surface temperatures 1950-2010), as bundled with statsmodels (no download).

A GRU regression model (rnncore.models.SequenceModel, head="regression") learns s_{t+1} from s_{<=t}
on windows cut by rnncore.architectures.delay_windows from the early part of the series, trained by
rnncore.trainer.Trainer. Then, from every forecast origin in the held-out years, it reads the whole
history and forecasts `horizon` steps recursively (rnncore.architectures.forecast: each forecast
fed back as the next input). Scored against simple baselines on the same origins:

    naive            the last observed value, repeated
    seasonal naive   the value one season earlier (11 years for sunspots, 12 months for El Nino)
    mean             the training mean

Run:  python examples/forecast.py [--dataset sunspots|elnino] [--out DIR]
Needs: pip install statsmodels (the data); matplotlib for the plot (optional).
"""
import os

# small per-step products: idle OpenMP threads should sleep, not spin, on a shared machine
os.environ.setdefault("OMP_WAIT_POLICY", "passive")

import argparse
import time

import numpy as np

from rnncore.architectures import delay_windows, forecast, window_batches
from rnncore.models import SequenceModel
from rnncore.optim import Adam
from rnncore.trainer import Trainer

from _common import add_common_arguments, run_with_threads, save_figure  # examples/_common.py

DATASETS = {
    # name: (season length, first test index, forecast horizon, unit of time)
    "sunspots": (11, 249, 11, "year"),      # fit on 1700-1948, forecast from 1949 on
    "elnino": (12, 600, 12, "month"),       # fit on 1950-1999, forecast from 2000 on
}


def load_series(name):
    """(values, time labels) of a statsmodels dataset."""
    try:
        import statsmodels.api as sm
    except ImportError:
        raise SystemExit("this example reads its data from statsmodels: pip install statsmodels") from None
    if name == "sunspots":
        df = sm.datasets.sunspots.load_pandas().data
        return df["SUNACTIVITY"].to_numpy(np.float64), df["YEAR"].to_numpy(np.float64)
    df = sm.datasets.elnino.load_pandas().data
    values = df.drop(columns="YEAR").to_numpy(np.float64).reshape(-1)
    years = (df["YEAR"].to_numpy()[:, None] + np.arange(12)[None, :] / 12).reshape(-1)
    return values, years


def transform(name, s):
    # sunspot counts: the square root evens out the variance of high and low cycles
    return np.sqrt(s) if name == "sunspots" else s


def inverse(name, z):
    return np.square(np.maximum(z, 0)) if name == "sunspots" else z


def baselines(s, origin, horizon, season, train_mean):
    """Forecasts of s[origin : origin + horizon] from s[:origin]."""
    h = np.arange(horizon)
    back = season * (h // season + 1)                    # the same phase one (or more) seasons earlier
    return {"naive": np.full(horizon, s[origin - 1]),
            "seasonal naive": s[origin + h - back],
            "mean": np.full(horizon, train_mean)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", choices=sorted(DATASETS), default="elnino")
    ap.add_argument("--steps", type=int, default=1500, help="optimizer steps")
    ap.add_argument("--hidden", type=int, default=32)
    ap.add_argument("--window", type=int, default=40, help="training window length")
    add_common_arguments(ap)
    run_with_threads(run, ap.parse_args())


def run(args):

    season, split, horizon, unit = DATASETS[args.dataset]
    raw, years = load_series(args.dataset)
    z = transform(args.dataset, raw)
    mu, sd = z[:split].mean(), z[:split].std()
    x = ((z - mu) / sd).astype(np.float32)

    # training windows (input s_t, target s_{t+1}) from the training part, minus its last fifth, which
    # picks the stopping step: the parameters with the best recursive forecasts from origins there
    val_start = split - split // 5
    X, Y = delay_windows(x[:val_start], window=args.window, delay=1, stride=1)
    batches = window_batches(X, Y, batch_size=32, rng=args.seed)
    Xv, Yv = delay_windows(x[val_start - args.window:split], window=args.window, delay=1, stride=args.window)
    val_origins = np.arange(val_start, split - horizon + 1)
    model = SequenceModel("gru", hidden_size=args.hidden, input_size=1, output_size=1, head="regression",
                          seed=args.seed)
    best = {"rmse": np.inf}

    def on_eval(trainer, val_loss):
        err = [forecast(model, x[:o], horizon) - x[o:o + horizon] for o in val_origins]
        rmse = float(np.sqrt(np.mean(np.square(err))))
        if rmse < best["rmse"]:
            best.update(rmse=rmse, step=trainer.step, state=model.state_dict())

    trainer = Trainer(model, Adam(model.params, model.grads, lr=5e-3, clip_norm=1.0), loss="mse",
                      seed=args.seed, eval_every=50, on_eval=on_eval)
    t0 = time.perf_counter()
    trainer.fit(batches, val=window_batches(Xv, Yv, 64), max_steps=args.steps)
    train_time = time.perf_counter() - t0
    model.load_state_dict(best["state"])
    print(f"{args.dataset}: {len(raw)} {unit}s; trained on the first {val_start} ({X.shape[1]} windows of "
          f"{args.window}), {args.steps} steps in {train_time:.1f} s; kept step {best['step']}, the best "
          f"recursive forecasts from the next {split - val_start} (standardised RMSE {best['rmse']:.3f})")

    # recursive forecasts from every held-out origin whose whole horizon is observed
    origins = np.arange(split, len(x) - horizon + 1)
    preds = np.stack([forecast(model, x[:o], horizon) for o in origins])                 # (n, horizon)
    model_fc = inverse(args.dataset, preds * sd + mu)
    truth = np.stack([raw[o:o + horizon] for o in origins])
    train_mean = raw[:split].mean()
    results = {"rnncore GRU (recursive)": model_fc}
    for name in ("naive", "seasonal naive", "mean"):
        results[name] = np.stack([baselines(raw, o, horizon, season, train_mean)[name] for o in origins])

    print(f"\n{len(origins)} forecast origins ({years[origins[0]]:.0f}-{years[origins[-1]]:.0f}), "
          f"horizon 1-{horizon} {unit}s; errors in the data's units")
    print(f"{'method':<26}{'RMSE':>9}{'MAE':>9}{'RMSE h=1':>10}{f'RMSE h={horizon}':>11}")
    for name, fc in results.items():
        err = fc - truth
        print(f"{name:<26}{np.sqrt(np.mean(err ** 2)):9.2f}{np.mean(np.abs(err)):9.2f}"
              f"{np.sqrt(np.mean(err[:, 0] ** 2)):10.2f}{np.sqrt(np.mean(err[:, -1] ** 2)):11.2f}")

    plot(args, raw, years, split, origins, results, truth, horizon, unit)


def plot(args, raw, years, split, origins, results, truth, horizon, unit):
    dataset = args.dataset
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install matplotlib): no plot written")
        return
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(11, 7.5))
    ax1.plot(years, raw, color="0.6", lw=1, label="observed")
    ax1.axvline(years[split], color="k", ls=":", lw=1)
    ax1.text(years[split], ax1.get_ylim()[1] * 0.95, " held out →", va="top")
    # a few non-overlapping recursive forecasts
    for i in range(0, len(origins), horizon):
        o = origins[i]
        t = years[o:o + horizon]
        ax1.plot(t, results["rnncore GRU (recursive)"][i], color="C3", lw=1.8,
                 label="GRU recursive forecast" if i == 0 else None)
        ax1.plot(t, results["seasonal naive"][i], color="C0", lw=1, ls="--",
                 label="seasonal naive" if i == 0 else None)
    ax1.set_xlim(years[max(split - 4 * horizon, 0)], years[-1] + 1)
    ax1.set_title(f"{dataset}: {horizon}-{unit} recursive forecasts from successive origins")
    ax1.legend(loc="upper left")
    h = np.arange(1, horizon + 1)
    for name, fc in results.items():
        ax2.plot(h, np.sqrt(np.mean((fc - truth) ** 2, axis=0)), marker="o", label=name)
    ax2.set_xlabel(f"horizon ({unit}s ahead)")
    ax2.set_ylabel("RMSE over origins")
    ax2.legend()
    save_figure(fig, args, f"forecast_{dataset}.png")


if __name__ == "__main__":
    main()
