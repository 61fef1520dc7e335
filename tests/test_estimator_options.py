"""RNNClassifier / RNNRegressor options for real series: pooling, stride, scaling, early stopping
(MLPClassifier's rule, the best weights restored), loss_curve_ under truncated BPTT and where the
truncated gradient reaches, and the refusal of a 2-D input that could be read two ways."""
import numpy as np
import pytest
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV
from sklearn.utils.estimator_checks import parametrize_with_checks

from rnncore.estimators import RNNClassifier, RNNRegressor
from rnncore.models.estimators import _stride
from rnncore.models.sequence import SequenceModel
from rnncore.training.data import Batch, tbptt_chunks
from rnncore.training.losses import softmax_cross_entropy

from test_estimators import EXPECTED_FAILED_CHECKS, order_task


# scikit-learn's checks once more, with the new options away from their defaults (per-series scaling
# and early stopping excepted: a blob of 2 "steps" z-normalised on its own keeps only their order,
# and some checks fit on fewer samples than a stratified split needs)
OPTIONS = dict(hidden_size=16, max_iter=60, random_state=0, pooling="attention", stride=2, scaling=None,
               n_iter_no_change=5)


@parametrize_with_checks([RNNClassifier(**OPTIONS)],
                         expected_failed_checks=lambda est: EXPECTED_FAILED_CHECKS.get(type(est).__name__, {}))
def test_sklearn_estimator_checks_with_the_new_options(estimator, check):
    check(estimator)


# ---------------------------------------------------------------------------------------------
# loss_curve_ and truncated BPTT


@pytest.mark.parametrize("stride", [1, 2])
def test_loss_curve_has_one_entry_per_epoch_under_tbptt(stride, rng):
    X, y = order_task(60, rng, min_len=5, max_len=17)               # ragged: epochs of varying steps
    clf = RNNClassifier(hidden_size=6, max_iter=10, n_iter_no_change=10, tbptt=3, stride=stride,
                        batch_size=16, random_state=0).fit(X, y)
    assert clf.n_iter_ == 10 and len(clf.loss_curve_) == 10
    assert all(np.isfinite(clf.loss_curve_)) and clf.loss_curve_[-1] < clf.loss_curve_[0]
    assert clf.best_loss_ == min(clf.loss_curve_) and clf.validation_scores_ is None


def test_many_to_one_tbptt_gradient_reaches_the_last_k_steps(rng):
    """Cut from the end: with T = 7 and k = 3 the chunks are [0, 1), [1, 4), [4, 7); the gradient of
    the loss is that of the last 3 steps started from the (constant) state reached at t = 4."""
    T, B, k = 7, 5, 3
    model = SequenceModel("lstm", hidden_size=4, input_size=2, output_size=3, head="many_to_one",
                          dtype=np.float64, seed=0)
    X, y = rng.standard_normal((T, B, 2)), rng.integers(0, 3, B)
    chunks = list(tbptt_chunks(Batch(X, y, None), k, per_step=False))
    assert [(c.start, c.end) for c in chunks] == [(0, 1), (1, 4), (4, 7)]
    assert [c.ends.any() for c in chunks] == [False, False, True]
    model.zero_grad()
    state = None
    for c in chunks:
        loss, n, backward, state = model.chunk_loss(c, state, reduction="sum")
    assert n == B
    backward()
    got = {name: g.copy() for name, g in model.grads.items()}
    # the same by hand: the state at t = 4 as plain numbers, then BPTT over X[4:7] only
    h4 = model.forward(X[:4], is_train=False)[1].h_n
    model.zero_grad()
    Yhat, bp = model.forward(X[4:], hx=h4)
    want_loss, dY = softmax_cross_entropy(Yhat, y)
    bp(dY)
    assert loss == pytest.approx(want_loss, rel=1e-12)
    for name in got:
        np.testing.assert_allclose(got[name], model.grads[name], rtol=1e-12, atol=1e-14, err_msg=name)
    # ... which is not full BPTT: the input weights' gradient differs
    model.zero_grad()
    Yhat, bp = model.forward(X)
    bp(softmax_cross_entropy(Yhat, y)[1])
    assert not np.allclose(got["rnn.weight_ih_l0"], model.grads["rnn.weight_ih_l0"])


def test_pooling_refuses_tbptt_and_reaches_the_model(rng):
    X, y = order_task(40, rng)
    with pytest.raises(ValueError, match=r"tbptt: pooling='max' reads every step of a sequence in one "
                                         r"pass; expected tbptt=None \(or pooling='last'\), got tbptt=4"):
        RNNClassifier(pooling="max", tbptt=4, max_iter=1).fit(X, y)
    for pooling in ("mean", "max", "attention"):
        clf = RNNClassifier(pooling=pooling, hidden_size=6, max_iter=2, random_state=0).fit(X, y)
        assert clf.model_.pooling == pooling
        assert clf.predict_proba(X).shape == (40, 2)


def test_attention_pooling_learns_where_the_last_state_forgets(rng):
    """Class = sign of the first step's marker, then 60 steps of noise: a GRU reading h_T has to carry
    it through 60 steps; attention can read h_1 directly."""
    def make(n):
        X = rng.standard_normal((n, 61, 1)) * 0.5
        y = rng.integers(0, 2, n)
        X[:, 0, 0] = np.where(y == 1, 3.0, -3.0)
        return X, y
    X, y = make(300)
    Xt, yt = make(200)
    kw = dict(cell="gru", hidden_size=8, max_iter=12, lr=0.02, n_iter_no_change=12, random_state=0)
    last = RNNClassifier(pooling="last", **kw).fit(X, y).score(Xt, yt)
    attention = RNNClassifier(pooling="attention", **kw).fit(X, y).score(Xt, yt)
    assert last < 0.7 and attention > 0.95, (last, attention)


# ---------------------------------------------------------------------------------------------
# stride


def test_stride_reads_k_steps_as_one_vector(rng):
    n, F, k = 4, 3, 3
    lengths = np.array([7, 3, 1, 6])
    Xp = np.zeros((7, n, F))
    for b, L in enumerate(lengths):
        Xp[:L, b] = rng.standard_normal((L, F))
    out, out_lengths = _stride(Xp, lengths, k)
    np.testing.assert_array_equal(out_lengths, [3, 1, 1, 2])               # ceil(L / k)
    assert out.shape == (3, n, k * F)
    for b, L in enumerate(lengths):
        for j in range(out_lengths[b]):
            want = np.zeros(k * F)
            for i in range(k):                       # steps jk .. jk + k - 1, zeros past the length
                if j * k + i < L:
                    want[i * F:(i + 1) * F] = Xp[j * k + i, b]
            np.testing.assert_array_equal(out[j, b], want)
    same, same_lengths = _stride(Xp, lengths, 1)
    assert same is Xp and same_lengths is lengths


def test_stride_is_a_hyperparameter_for_grid_search(rng):
    X = rng.standard_normal((60, 24))
    y = (X[:, :3].sum(axis=1) > 0).astype(int)
    search = GridSearchCV(RNNClassifier(hidden_size=6, max_iter=3, random_state=0),
                          {"stride": [1, 4], "pooling": ["last", "mean"]}, cv=2).fit(X, y)
    assert search.best_params_["stride"] in (1, 4) and len(search.cv_results_["params"]) == 4
    clf = RNNClassifier(hidden_size=6, max_iter=2, stride=4, random_state=0).fit(X, y)
    assert clf.model_.input_size == 4 and clf.n_step_features_ == 1
    Xm, lengths = clf._model_inputs(X)
    assert Xm.shape == (6, 60, 4) and (lengths == 6).all()
    # sequences of other lengths, also not a multiple of the stride
    assert clf.predict([x[:n] for x, n in zip(X[:5], [1, 3, 4, 9, 24])]).shape == (5,)


# ---------------------------------------------------------------------------------------------
# scaling


def test_scaling_choices(rng):
    X = [rng.standard_normal((int(rng.integers(4, 9)), 2)) * 5 + 3 for _ in range(30)]
    y = np.arange(30) % 2
    kw = dict(hidden_size=4, max_iter=1, random_state=0, dtype="float64")
    raw = RNNClassifier(scaling=None, **kw).fit(X, y)
    Xm, lengths = raw._model_inputs(X)
    for b, x in enumerate(X):
        np.testing.assert_array_equal(Xm[:len(x), b], x)                   # the data as it is
    glob = RNNClassifier(scaling="global", **kw).fit(X, y)
    allsteps = np.concatenate(X)
    np.testing.assert_allclose(glob.input_mean_, allsteps.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(glob.input_scale_, allsteps.std(axis=0), rtol=1e-12)
    per = RNNClassifier(scaling="per_series", **kw).fit(X, y)
    Xm, lengths = per._model_inputs(X)
    for b, x in enumerate(X):
        np.testing.assert_allclose(Xm[:len(x), b], (x - x.mean(axis=0)) / x.std(axis=0), rtol=1e-10)
        assert not Xm[len(x):, b].any()                                     # padding stays 0
    # per series: an offset and a gain per sequence change nothing
    moved = [x * rng.uniform(0.5, 4) + rng.uniform(-10, 10) for x in X]
    np.testing.assert_allclose(per.predict_proba(moved), per.predict_proba(X), rtol=1e-9, atol=1e-12)
    assert not np.allclose(glob.predict_proba(moved), glob.predict_proba(X))


def test_per_series_scaling_erases_amplitude_global_keeps_it(rng):
    def make(n):
        y = rng.integers(0, 2, n)
        t = np.linspace(0, 2 * np.pi, 12)
        X = np.sin(t[None] + rng.uniform(0, 2 * np.pi, (n, 1))) * np.where(y == 1, 3.0, 1.0)[:, None]
        return X + 0.05 * rng.standard_normal(X.shape), y
    X, y = make(200)
    Xt, yt = make(200)
    kw = dict(cell="gru", hidden_size=8, max_iter=15, lr=0.02, n_iter_no_change=15, random_state=0)
    assert RNNClassifier(scaling="global", **kw).fit(X, y).score(Xt, yt) > 0.95
    assert RNNClassifier(scaling="per_series", **kw).fit(X, y).score(Xt, yt) < 0.7


# ---------------------------------------------------------------------------------------------
# early stopping


def _stops_where_the_rule_says(values, better, tol, patience, n_iter, max_iter):
    """MLPClassifier's rule, replayed on the recorded values: the epoch at which it stops."""
    best, bad = None, 0
    for i, v in enumerate(values):
        improved = best is None or (v > best + tol if better == "higher" else v < best - tol)
        bad = 0 if improved else bad + 1
        if best is None or (v > best if better == "higher" else v < best):
            best = v
        if bad >= patience:
            return i + 1 == n_iter
    return n_iter == max_iter


def test_early_stopping_restores_the_best_weights(rng):
    X, y = order_task(120, rng)
    y = np.where(rng.random(120) < 0.2, np.where(y == "A first", "B first", "A first"), y)   # 20% noise
    kw = dict(hidden_size=12, lr=0.03, early_stopping=True, validation_fraction=0.25, n_iter_no_change=4,
              random_state=3)
    clf = RNNClassifier(max_iter=40, **kw).fit(X, y)
    scores = clf.validation_scores_
    assert len(scores) == len(clf.loss_curve_) == clf.n_iter_ < 40
    assert clf.best_validation_score_ == max(scores) and clf.best_loss_ is None
    assert _stops_where_the_rule_says(scores, "higher", clf.tol, 4, clf.n_iter_, 40)
    best = int(np.argmax(scores))                     # the first epoch with the best score
    assert best < clf.n_iter_ - 1                     # training went on after it ...
    # ... and the weights are those after epoch best + 1: a run stopped there has the same
    short = RNNClassifier(max_iter=best + 1, **kw).fit(X, y)
    assert short.validation_scores_ == scores[:best + 1]
    for k, p in clf.model_.params.items():
        np.testing.assert_array_equal(p, short.model_.params[k], err_msg=k)
    np.testing.assert_array_equal(clf.predict_proba(X), short.predict_proba(X))
    # the held-out part: validation_fraction of the samples, stratified, disjoint from the training part
    half = clone(clf).set_params(validation_fraction=0.5, max_iter=2).fit(X, y)
    assert all(abs(s * 60 - round(s * 60)) < 1e-9 for s in half.validation_scores_)   # scores of 60
    train, val = half._validation_split(y, np.random.RandomState(0))
    assert len(val) == 60 and not set(train) & set(val) and len(train) + len(val) == 120
    counts = {c: int((y[val] == c).sum()) for c in np.unique(y)}
    assert all(abs(n - (y == c).sum() / 2) <= 1 for c, n in counts.items()), counts


def test_training_loss_stopping_rule_and_the_regressor(rng):
    X, y = order_task(100, rng)
    clf = RNNClassifier(hidden_size=8, lr=0.03, max_iter=60, tol=1e-2, n_iter_no_change=3,
                        random_state=0).fit(X, y)
    assert clf.n_iter_ < 60 and clf.validation_scores_ is None and clf.best_validation_score_ is None
    assert _stops_where_the_rule_says(clf.loss_curve_, "lower", 1e-2, 3, clf.n_iter_, 60)
    Y = np.array([x[:, 0].sum() for x in X])
    reg = RNNRegressor(hidden_size=8, max_iter=30, early_stopping=True, n_iter_no_change=3,
                       random_state=0).fit(X, Y)
    assert len(reg.validation_scores_) == reg.n_iter_ and max(reg.validation_scores_) > 0.5
    assert _stops_where_the_rule_says(reg.validation_scores_, "higher", reg.tol, 3, reg.n_iter_, 30)
    with pytest.raises(ValueError, match=r"early_stopping: cannot hold out validation_fraction=0.1 of 5"):
        RNNClassifier(early_stopping=True, max_iter=1).fit(X[:5], y[:5])


# ---------------------------------------------------------------------------------------------
# one sequence is never misread


@pytest.mark.parametrize("F", [1, 3])
def test_a_2d_array_that_could_be_one_sequence_is_refused(F, rng):
    X = [rng.standard_normal((int(rng.integers(5, 30)), F)) for _ in range(30)]
    y = np.arange(30) % 2
    clf = RNNClassifier(hidden_size=4, max_iter=1, random_state=0).fit(X, y)
    one = X[0]                                                   # (T, F): one sequence, or T of F steps?
    with pytest.raises(ValueError, match=r"can be read two ways.*Pass one sequence as X\[None\] "
                                         r"\(shape \(1, \d+, %d\)\) or as a list \[X\]" % F):
        clf.predict(one)
    with pytest.raises(ValueError, match=r"can be read two ways"):
        clf.predict_proba(one)
    # the two ways of saying "one sequence" agree with the batch
    expected = clf.predict_proba(X[:3])[0]
    np.testing.assert_allclose(clf.predict_proba(one[None])[0], expected, rtol=1e-6)
    np.testing.assert_allclose(clf.predict_proba([one])[0], expected, rtol=1e-6)
    if F == 1:
        # a table of univariate sequences with more than one step is not ambiguous here
        assert clf.predict(rng.standard_normal((4, 9))).shape == (4,)
    # a model fitted on a table keeps reading 2-D arrays as tables
    table = RNNClassifier(hidden_size=4, max_iter=1, random_state=0).fit(rng.standard_normal((30, F)), y)
    assert table.predict(rng.standard_normal((7, F))).shape == (7,)
