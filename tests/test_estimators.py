"""RNNClassifier / RNNRegressor: scikit-learn's own estimator checks, learning tasks that need the order
of the steps, the three input forms, pickling, and the errors on bad input."""
import pickle

import numpy as np
import pytest
from scipy import sparse
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression
from sklearn.utils.estimator_checks import parametrize_with_checks

from rnncore.models.estimators import RNNClassifier, RNNRegressor

# Small enough that the whole check suite runs in ~15 s, big enough to pass the checks' accuracy
# (> 0.83 on blobs) and R² (> 0.5) thresholds.
SMALL = dict(hidden_size=16, max_iter=60, random_state=0)

# Checks that cannot apply to a sequence model, with the reason (sklearn's expected_failed_checks).
# None today: a 2-D X is read as a table of univariate sequences (its columns are the steps), which
# keeps every check meaningful. Add an entry here, with its reason, if a check stops applying.
EXPECTED_FAILED_CHECKS = {}


@parametrize_with_checks([RNNClassifier(**SMALL), RNNRegressor(**SMALL)],
                         expected_failed_checks=lambda est: EXPECTED_FAILED_CHECKS.get(type(est).__name__, {}))
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


# ---------------------------------------------------------------------------------------------
# data


def order_task(n, rng, min_len=6, max_len=14):
    """Variable-length sequences of 3 features: noise, marker A, marker B. Each sequence holds one A and
    one B at random steps; class 1 iff A comes before B. Both classes have the same multiset of steps,
    so a model that ignores the order is at chance."""
    X, y = [], []
    for _ in range(n):
        L = int(rng.integers(min_len, max_len + 1))
        s = np.zeros((L, 3))
        s[:, 0] = rng.standard_normal(L)
        a, b = rng.choice(L, size=2, replace=False)
        s[a, 1] = 1.0
        s[b, 2] = 1.0
        X.append(s)
        y.append("A first" if a < b else "B first")
    return X, np.array(y)


def test_classifier_learns_order_on_variable_length_lists():
    rng = np.random.default_rng(0)
    X, y = order_task(600, rng)
    Xt, yt = order_task(300, rng)
    # the task needs the order: a linear model of the step-averaged features is at chance
    mean_feats = lambda S: np.array([s.mean(axis=0) for s in S])  # noqa: E731
    base = LogisticRegression().fit(mean_feats(X), y).score(mean_feats(Xt), yt)
    assert base < 0.65
    clf = RNNClassifier(cell="lstm", hidden_size=16, max_iter=30, lr=0.02, random_state=0).fit(X, y)
    assert set(clf.classes_) == {"A first", "B first"}
    acc = clf.score(Xt, yt)
    assert acc > 0.9, acc
    proba = clf.predict_proba(Xt)
    assert proba.shape == (300, 2) and proba.dtype == np.float64
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-12)
    np.testing.assert_array_equal(clf.classes_[proba.argmax(axis=1)], clf.predict(Xt))
    # the training loss stops improving by tol = 1e-4 before the 30 epochs (MLPClassifier's rule)
    assert clf.n_iter_ == len(clf.loss_curve_) < 30 and clf.best_loss_ == min(clf.loss_curve_)
    assert clf.loss_curve_[-1] < clf.loss_curve_[0]
    assert clf.n_features_in_ == 3 and clf.n_step_features_ == 3 and clf.input_kind_ == "sequences"


def test_classifier_2d_input_is_univariate_sequences():
    # class: is the first value larger than the last? The model must carry x_1 to the end.
    rng = np.random.default_rng(1)
    X = rng.standard_normal((800, 8))
    y = (X[:, 0] > X[:, -1]).astype(int)
    clf = RNNClassifier(cell="gru", hidden_size=16, max_iter=40, lr=0.02, random_state=0)
    clf.fit(X[:600], y[:600])
    assert clf.input_kind_ == "table" and clf.n_features_in_ == 8 and clf.n_step_features_ == 1
    assert clf.score(X[600:], y[600:]) > 0.85
    # the same rows as 3-D arrays (n, T, 1) or as lists of 1-D sequences give the same predictions
    p2 = clf.predict_proba(X[600:])
    np.testing.assert_allclose(clf.predict_proba(X[600:, :, None]), p2, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(clf.predict_proba(list(X[600:])), p2, rtol=1e-6, atol=1e-7)
    # a table needs its columns at predict time, as any scikit-learn estimator ...
    with pytest.raises(ValueError, match="8 features"):
        clf.predict(X[600:, :5])
    # ... but sequences of other lengths can be given as 3-D arrays or lists
    assert clf.predict(X[600:, :5, None]).shape == (200,)
    assert clf.predict([x[:3] for x in X[600:610]] + [X[0]]).shape == (11,)


def test_variable_lengths_do_not_see_padding():
    # a sequence predicted alone, in a padded batch of longer ones, or as one row of a list is the same
    rng = np.random.default_rng(2)
    X, y = order_task(200, rng)
    clf = RNNClassifier(hidden_size=8, max_iter=3, random_state=0, dtype="float64").fit(X, y)
    batch = clf.predict_proba(X[:20])
    alone = np.concatenate([clf.predict_proba([x]) for x in X[:20]])
    np.testing.assert_allclose(batch, alone, rtol=1e-12, atol=1e-14)


def test_regressor_learns_with_large_targets_and_multiple_outputs():
    rng = np.random.default_rng(3)

    def make(n):
        X = [rng.standard_normal((int(rng.integers(5, 12)), 2)) for _ in range(n)]
        # outputs: a weighted sum over the steps, and the first step's second feature (needs memory);
        # in large units, which scale_targets must absorb
        Y = np.array([[x[:, 0].sum() * 300 + 5000, x[0, 1] * 0.01] for x in X])
        return X, Y

    X, Y = make(600)
    Xt, Yt = make(200)
    reg = RNNRegressor(cell="lstm", hidden_size=24, max_iter=40, lr=0.01, random_state=0).fit(X, Y)
    P = reg.predict(Xt)
    assert P.shape == (200, 2) and P.dtype == np.float64
    r2 = 1 - ((P - Yt) ** 2).sum(0) / ((Yt - Yt.mean(0)) ** 2).sum(0)
    assert (r2 > 0.85).all(), r2
    # a 1-D y gives 1-D predictions
    reg1 = RNNRegressor(hidden_size=8, max_iter=2, random_state=0).fit(X, Y[:, 0])
    assert reg1.predict(Xt).shape == (200,) and reg1.n_outputs_ == 1
    # without target scaling, the same budget cannot reach targets of size 5000: Adam moves the
    # head's bias by at most ~lr = 0.01 per step, 760 steps here
    raw = RNNRegressor(cell="lstm", hidden_size=24, max_iter=40, lr=0.01, random_state=0,
                       scale_targets=False).fit(X, Y[:, 0])
    assert raw.score(Xt, Yt[:, 0]) < 0.5


@pytest.mark.parametrize("Est", [RNNClassifier, RNNRegressor])
def test_pickle_round_trip_and_determinism(Est):
    rng = np.random.default_rng(4)
    X, y = order_task(120, rng)
    if Est is RNNRegressor:
        y = np.array([x[:, 0].sum() for x in X])
    est = Est(cell="gru", hidden_size=8, num_layers=2, bidirectional=True, max_iter=3,
              random_state=7).fit(X, y)
    again = pickle.loads(pickle.dumps(est))
    np.testing.assert_array_equal(again.predict(X), est.predict(X))
    if Est is RNNClassifier:
        np.testing.assert_array_equal(again.predict_proba(X), est.predict_proba(X))
    # the same random_state gives the same model; clone gives an unfitted copy with the same params
    twin = clone(est)
    assert not hasattr(twin, "model_") and twin.get_params() == est.get_params()
    np.testing.assert_array_equal(twin.fit(X, y).predict(X), est.predict(X))


def test_get_set_params():
    clf = RNNClassifier(cell="gru", hidden_size=5, lr=0.1, clip=None)
    p = clf.get_params()
    assert p["cell"] == "gru" and p["hidden_size"] == 5 and p["lr"] == 0.1 and p["clip"] is None
    clf.set_params(cell="rnn", max_iter=2)
    assert clf.cell == "rnn" and clf.max_iter == 2
    assert "scale_targets" in RNNRegressor().get_params()


def _fitted_classifier():
    rng = np.random.default_rng(5)
    X, y = order_task(40, rng)
    return RNNClassifier(hidden_size=4, max_iter=1, random_state=0).fit(X, y), X, y


@pytest.mark.parametrize("X, exc, match", [
    (np.ones(5), ValueError, r"expected a 2-D array .* got a 1-D input of shape \(5,\)"),
    (np.ones((2, 3, 4, 5)), ValueError, r"got a 4-D input of shape \(2, 3, 4, 5\)"),
    ([np.ones((3, 2)), np.ones((4, 3))], ValueError, r"X\[1\]: expected 2 features per step like X\[0\], got 3"),
    ([np.ones((3, 2)), np.ones((0, 2))], ValueError, r"X\[1\]: expected a sequence with at least one step"),
    ([np.ones((3, 2)), np.ones((4, 2, 2))], ValueError, r"X\[1\]: expected a sequence of shape"),
    ([np.ones(3), np.ones((4, 1))], ValueError, r"X\[1\]: expected a 1-D sequence like X\[0\]"),
    ([], ValueError, r"expected at least one sequence, got an empty list"),
    (np.full((4, 3), np.nan), ValueError, r"NaN"),
    (sparse.csr_matrix(np.ones((4, 3))), TypeError, r"expected a dense array .* got a sparse"),
    (np.array([["a", "b"], ["c", "d"]]), ValueError, r"string|convert"),
])
def test_bad_input_in_fit(X, exc, match):
    with pytest.raises(exc, match=match):
        RNNClassifier(max_iter=1).fit(X, np.arange(X.shape[0] if hasattr(X, "shape") else len(X)) % 2)


def test_bad_input_in_predict_and_bad_targets():
    clf, X, y = _fitted_classifier()
    with pytest.raises(ValueError, match=r"X has 2 features per step, but RNNClassifier is expecting 3"):
        clf.predict([x[:, :2] for x in X])
    with pytest.raises(ValueError, match=r"X has 1 features per step, but RNNClassifier is expecting 3"):
        clf.predict(np.ones((3, 5)))
    with pytest.raises(ValueError, match=r"y: expected 40 targets .* got 39"):
        RNNClassifier(max_iter=1).fit(X, y[:-1])
    with pytest.raises(ValueError, match=r"expected at least 2 classes, got 1 class"):
        RNNClassifier(max_iter=1).fit(X, np.zeros(40, int))
    with pytest.raises(ValueError, match=r"Unknown label type"):
        RNNClassifier(max_iter=1).fit(X, np.linspace(0, 1, 40))
    with pytest.raises(ValueError, match=r"y: expected shape \(n_samples,\) or \(n_samples, n_outputs\)"):
        RNNRegressor(max_iter=1).fit(np.ones((4, 3)), np.ones((4, 2, 2)))


@pytest.mark.parametrize("param, value, match", [
    ("cell", "transformer", r"cell: expected one of \['gru', 'lstm', 'rnn'\], got 'transformer'"),
    ("hidden_size", 0, r"hidden_size: expected a positive integer, got 0"),
    ("max_iter", 2.5, r"max_iter: expected a positive integer, got 2.5"),
    ("optimizer", "lbfgs", r"optimizer: expected one of \['adam', 'rmsprop', 'sgd'\], got 'lbfgs'"),
    ("lr", -1.0, r"lr: expected a positive number, got -1.0"),
    ("clip", 0, r"clip: expected a positive number or None, got 0"),
    ("dropout", 1.0, r"dropout: expected a number in \[0, 1\), got 1.0"),
    ("dtype", "float16", r"dtype: expected one of \('float32', 'float64'\), got 'float16'"),
    ("pooling", "sum", r"pooling: expected one of \('last', 'mean', 'max', 'attention'\), got 'sum'"),
    ("stride", 0, r"stride: expected a positive integer, got 0"),
    ("scaling", "minmax", r"scaling: expected one of \('global', 'per_series', None\), got 'minmax'"),
    ("early_stopping", "yes", r"early_stopping: expected True or False, got 'yes'"),
    ("validation_fraction", 1.0, r"validation_fraction: expected a number in \(0, 1\), got 1.0"),
    ("n_iter_no_change", 0, r"n_iter_no_change: expected a positive integer, got 0"),
    ("tol", -1e-3, r"tol: expected a number >= 0, got -0.001"),
])
def test_bad_hyperparameters_fail_in_fit(param, value, match):
    clf = RNNClassifier(**{param: value})       # stored unchanged, checked in fit (sklearn convention)
    assert getattr(clf, param) == value
    with pytest.raises(ValueError, match=match):
        clf.fit(np.ones((4, 3)), [0, 1, 0, 1])


def test_float64_and_tbptt_paths():
    rng = np.random.default_rng(6)
    X, y = order_task(100, rng)
    clf = RNNClassifier(hidden_size=8, max_iter=2, dtype="float64", tbptt=4, random_state=0).fit(X, y)
    assert clf.model_.dtype == np.float64
    assert clf.predict_proba(X).shape == (100, 2)
