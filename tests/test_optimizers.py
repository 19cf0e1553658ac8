"""Each derived optimizer against a numpy reference update on a toy quadratic.

Gradients come from numpy (g = s ⊙ (w − c) at the current weights) so the tests
check the optimizers, not autodiff; a few steps, float64 weights, tight tolerances.
"""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from kexue.optim import LayerAdaptation, Lazy, Lookahead, PiecewiseLinear, build_optimizer, fused

try:
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
except RuntimeError:  # TF already initialised by another test module
    pass

RNG = np.random.default_rng(0)
W0 = {"kernel": RNG.normal(size=(4, 3)), "bias": RNG.normal(size=(3,))}
SCALE = {k: RNG.uniform(0.5, 2.0, size=v.shape) for k, v in W0.items()}
TARGET = {k: RNG.normal(size=v.shape) for k, v in W0.items()}
B1, B2, EPS = 0.9, 0.999, 1e-7


def grad_of(name, w):
    return SCALE[name] * (w - TARGET[name])


def make_variables():
    return {k: keras.Variable(v, dtype="float64", name=k) for k, v in W0.items()}


def run_keras(optimizer, steps, grad_fn=grad_of, variables=None):
    variables = variables or make_variables()
    names = list(variables)
    for _ in range(steps):
        grads = [grad_fn(k, variables[k].numpy()) for k in names]
        optimizer.apply(grads, [variables[k] for k in names])
    return {k: v.numpy() for k, v in variables.items()}


def np_adam(w, g, state, lr):
    """Keras Adam: bias correction folded into the step size, ε outside the sqrt.

    Keras builds β^t from float32 constants even for float64 weights, so does this.
    """
    state["t"] = state.get("t", 0) + 1
    state["m"] = B1 * state.get("m", 0.0) + (1 - B1) * g
    state["v"] = B2 * state.get("v", 0.0) + (1 - B2) * g * g
    b1_t, b2_t = (float(np.float32(b)) ** state["t"] for b in (B1, B2))
    alpha = lr * np.sqrt(1 - b2_t) / (1 - b1_t)
    return w - alpha * state["m"] / (np.sqrt(state["v"]) + EPS)


def np_momentum(w, g, state, lr, momentum=0.9):
    state["m"] = momentum * state.get("m", 0.0) - lr * g
    return w + state["m"]


def assert_weights_close(actual, expected):
    for k in expected:
        np.testing.assert_allclose(actual[k], expected[k], rtol=1e-6, atol=1e-9, err_msg=k)


# --- weight decay (Keras' decoupled `weight_decay`, for any base optimizer) ---------------


@pytest.mark.parametrize(
    "spec,step",
    [
        ({"name": "sgd", "momentum": 0.9}, np_momentum),
        ({"name": "adam"}, np_adam),
    ],
)
def test_weight_decay_matches_numpy(spec, step):
    lr, wd = 0.1, 0.05
    optimizer = build_optimizer({**spec, "learning_rate": lr, "weight_decay": wd})
    actual = run_keras(optimizer, steps=5)
    expected = {}
    for k, w in W0.items():
        state = {}
        for _ in range(5):
            g = grad_of(k, w)
            w = step(w - lr * wd * w, g, state, lr)
        expected[k] = w
    assert_weights_close(actual, expected)


@pytest.mark.parametrize("wrapped", [False, True])
def test_weight_decay_exclusion_leaves_biases_and_norm_parameters(wrapped):
    """With zero gradients only the decay moves weights: excluded ones must not move at all."""
    lr, wd = 0.1, 0.05
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4, bias_initializer="ones"),
                              keras.layers.BatchNormalization(beta_initializer="ones")])
    spec = {"name": "adam", "learning_rate": lr, "weight_decay": wd, "exclude_from_weight_decay": ["bias", "gamma", "beta"]}
    if wrapped:  # the exclusion reaches the base optimizer through the wrappers
        spec.update(lookahead={"k": 2, "alpha": 0.5}, schedule={0: 1.0})
    optimizer = build_optimizer(spec)
    before = {v.path: v.numpy().copy() for v in model.trainable_variables}
    for _ in range(3):
        optimizer.apply([np.zeros(v.shape, "float32") for v in model.trainable_variables], model.trainable_variables)
    after = {v.path: v.numpy() for v in model.trainable_variables}
    for path, value in after.items():
        if path.endswith("kernel"):
            c = 1 - lr * wd
            # Lookahead (k 2, α ½) pulls the step-2 weights halfway back to the start.
            factor = c * (1 + c**2) / 2 if wrapped else c**3
            np.testing.assert_allclose(value, before[path] * factor, rtol=1e-5)
        else:
            np.testing.assert_array_equal(value, before[path], err_msg=path)
    assert {p.rsplit("/", 1)[-1] for p in after} == {"kernel", "bias", "gamma", "beta"}


def test_weight_decay_exclusion_needs_weight_decay_and_patterns():
    with pytest.raises(ValueError, match="weight_decay"):
        build_optimizer({"name": "adam", "exclude_from_weight_decay": ["bias"]})
    with pytest.raises(ValueError, match="exclude_from_weight_decay"):
        build_optimizer({"name": "adam", "weight_decay": 0.1, "exclude_from_weight_decay": True})


# --- layer adaptation ----------------------------------------------------------------------


def np_layer_adapted(w, w_new, lr):
    delta = w_new - w
    u_norm = np.linalg.norm(delta) / lr
    return w + np.linalg.norm(w) / u_norm * delta


def test_layer_adaptation_sgd_is_normalized_step():
    lr = 0.01
    actual = run_keras(build_optimizer({"name": "sgd", "learning_rate": lr, "layer_adaptation": True}), 4)
    for k, w in W0.items():
        for _ in range(4):
            g = grad_of(k, w)
            w = w - lr * np.linalg.norm(w) / np.linalg.norm(g) * g
        np.testing.assert_allclose(actual[k], w, rtol=1e-6)


def test_layer_adaptation_adam_with_weight_decay_is_lamb():
    lr, wd = 0.01, 0.1
    spec = {"name": "adam", "learning_rate": lr, "weight_decay": wd, "layer_adaptation": ["bias"]}
    actual = run_keras(build_optimizer(spec), 5)
    expected = {}
    for k, w in W0.items():
        state = {}
        for _ in range(5):
            g = grad_of(k, w)
            w_new = np_adam(w - lr * wd * w, g, state, lr)
            # "bias" is excluded: plain AdamW step.
            w = w_new if k == "bias" else np_layer_adapted(w, w_new, lr)
        expected[k] = w
    assert_weights_close(actual, expected)


def test_layer_adaptation_keeps_zero_variable_step():
    variable = keras.Variable(np.zeros(3), dtype="float64")
    optimizer = LayerAdaptation(keras.optimizers.SGD(learning_rate=0.5))
    optimizer.apply([np.array([1.0, -2.0, 0.0])], [variable])
    np.testing.assert_allclose(variable.numpy(), [-0.5, 1.0, 0.0])


# --- piecewise-linear learning rate --------------------------------------------------------


def test_piecewise_linear_values():
    schedule = PiecewiseLinear(2.0, {1000: 1.0, "2000": 0.1, 3000: 0.1})
    steps = np.array([0, 1, 500, 999, 1000, 1500, 2000, 2500, 3000, 10_000])
    expected = 2.0 * np.interp(steps, [0, 1000, 2000, 3000], [0.0, 1.0, 0.1, 0.1])
    actual = [float(schedule(s)) for s in steps]
    np.testing.assert_allclose(actual, expected, rtol=1e-6)


def test_schedule_drives_sgd_learning_rate():
    lr, points = 0.2, {0: 1.0, 2: 0.5, 4: 0.0}
    actual = run_keras(build_optimizer({"name": "sgd", "learning_rate": lr, "schedule": points}), 6)
    multipliers = np.interp(np.arange(6), list(points), list(points.values()))
    expected = {}
    for k, w in W0.items():
        for t in range(6):
            w = w - lr * multipliers[t] * grad_of(k, w)
        expected[k] = w
    assert_weights_close(actual, expected)


# --- gradient accumulation -----------------------------------------------------------------


def test_gradient_accumulation_matches_numpy():
    lr, steps, accumulate = 0.05, 7, 3
    optimizer = build_optimizer({"name": "adam", "learning_rate": lr, "accumulation_steps": accumulate})
    actual = run_keras(optimizer, steps)
    expected = {}
    for k, w in W0.items():
        state, buffer = {}, np.zeros_like(w)
        for i in range(steps):
            buffer = buffer + grad_of(k, w)
            if (i + 1) % accumulate == 0:
                w, buffer = np_adam(w, buffer / accumulate, state, lr), np.zeros_like(w)
        expected[k] = w
    assert_weights_close(actual, expected)
    assert int(optimizer.iterations) == steps // accumulate


# --- Lookahead -----------------------------------------------------------------------------


@pytest.mark.parametrize("accumulate", [None, 2])
def test_lookahead_matches_numpy(accumulate):
    lr, k, alpha, steps = 0.1, 3, 0.5, 14
    spec = {"name": "sgd", "learning_rate": lr, "momentum": 0.9, "lookahead": {"k": k, "alpha": alpha}}
    if accumulate:
        spec["accumulation_steps"] = accumulate
    actual = run_keras(build_optimizer(spec), steps)
    expected = {}
    for name, w in W0.items():
        state, slow, buffer, updates = {}, w.copy(), np.zeros_like(w), 0
        for i in range(steps):
            buffer = buffer + grad_of(name, w)
            if (i + 1) % (accumulate or 1):
                continue
            w, buffer = np_momentum(w, buffer / (accumulate or 1), state, lr), np.zeros_like(w)
            updates += 1
            if updates % k == 0:
                slow = slow + alpha * (w - slow)
                w = slow.copy()
        expected[name] = w
    assert_weights_close(actual, expected)


def test_lookahead_validates_arguments():
    with pytest.raises(ValueError, match="alpha"):
        Lookahead(keras.optimizers.SGD(), k=2, alpha=1.5)
    with pytest.raises(ValueError, match="`k`"):
        Lookahead(keras.optimizers.SGD(), k=0)


# --- lazy rows -----------------------------------------------------------------------------

TABLE0 = RNG.normal(size=(6, 2))
# Rows touched per step; rows 4 and 5 are untouched until step 3 and 4.
TOUCHED = [[0, 1], [1, 2], [0, 3], [4, 1], [5, 5]]


def table_grad(step, w):
    """Embedding-style gradient: only rows looked up in this step are non-zero (duplicates add)."""
    g = np.zeros_like(w)
    for row in TOUCHED[step]:
        g[row] += w[row] - 1.0
    return g


def np_lazy(w, g, touched, state, step_fn, freeze_slots=False):
    """Dense step on all rows, then untouched rows keep their weights (and moments if ``freeze_slots``)."""
    before = {"w": w, **{key: np.array(val) for key, val in state.items() if key != "t"}}
    w_new = step_fn(w, g, state)
    rows = np.zeros(len(w), bool)
    rows[list(touched)] = True
    for key in ("m", "v"):
        if key in state and freeze_slots:
            state[key] = np.where(rows[:, None], state[key], before.get(key, 0.0))
    return np.where(rows[:, None], w_new, w)


@pytest.mark.parametrize("freeze_slots", [False, True])
@pytest.mark.parametrize("sparse", [False, True])
def test_lazy_adam_matches_numpy(sparse, freeze_slots):
    lr, wd = 0.1, 0.1
    table = keras.Variable(TABLE0, dtype="float64", name="embedding")
    lazy = {"include": None, "freeze_slots": freeze_slots}
    optimizer = build_optimizer({"name": "adam", "learning_rate": lr, "weight_decay": wd, "lazy": lazy})
    for step in range(len(TOUCHED)):
        g = table_grad(step, table.numpy())
        if sparse:
            rows = TOUCHED[step]
            g = tf.IndexedSlices(
                tf.constant(np.stack([table.numpy()[r] - 1.0 for r in rows])),
                tf.constant(rows, dtype=tf.int64),
                tf.constant(TABLE0.shape, dtype=tf.int64),
            )
        optimizer.apply([g], [table])
    w, state = TABLE0.copy(), {}
    for step in range(len(TOUCHED)):
        g = table_grad(step, w)
        w = np_lazy(w, g, TOUCHED[step], state,
                    lambda w_, g_, s: np_adam(w_ - lr * wd * w_, g_, s, lr), freeze_slots)
    np.testing.assert_allclose(table.numpy(), w, rtol=1e-6)
    # Row 5 is first looked up in the last step; a dense AdamW would have decayed it before.
    w_dense, state = TABLE0.copy(), {}
    for step in range(len(TOUCHED)):
        w_dense = np_adam(w_dense - lr * wd * w_dense, table_grad(step, w_dense), state, lr)
    assert not np.allclose(w[5], w_dense[5], rtol=1e-3)


def momentum_slot(optimizer, variable):
    base = optimizer.inner_optimizer
    return base.momentums[base._get_variable_index(variable)].numpy()


def test_bert4keras_lazy_keeps_momentum_decaying_on_untouched_rows():
    """Row 1 gets a gradient once, then none: its weight stops, its momentum decays by β per step."""
    lr, beta = 0.1, 0.9
    tables, optimizers = {}, {}
    for freeze in (False, True):
        tables[freeze] = keras.Variable(np.ones((3, 2)), dtype="float64", name="embedding")
        optimizers[freeze] = build_optimizer(
            {"name": "sgd", "learning_rate": lr, "momentum": beta, "lazy": {"include": ["embedding"], "freeze_slots": freeze}})
    first = np.array([[1.0, 1.0], [2.0, -1.0], [0.0, 0.0]])
    later = np.array([[1.0, 1.0], [0.0, 0.0], [0.0, 0.0]])
    for step in range(4):
        for freeze in (False, True):
            optimizers[freeze].apply([first if step == 0 else later], [tables[freeze]])
    m1 = -lr * first[1]  # Keras SGD: m ← βm − ηg, w ← w + m
    # bert4keras: the momentum of row 1 went on decaying, its weight moved only at step 0.
    np.testing.assert_allclose(momentum_slot(optimizers[False], tables[False])[1], beta**3 * m1)
    np.testing.assert_allclose(tables[False].numpy()[1], 1.0 + m1)
    # TF Addons LazyAdam: the momentum row was frozen with the weight row.
    np.testing.assert_allclose(momentum_slot(optimizers[True], tables[True])[1], m1)
    np.testing.assert_allclose(tables[True].numpy()[1], 1.0 + m1)
    # Row 2 never had a gradient: nothing moved in either mode; row 0 moved in both.
    for freeze in (False, True):
        np.testing.assert_array_equal(tables[freeze].numpy()[2], 1.0)
        assert not np.allclose(tables[freeze].numpy()[0], 1.0)


def test_lazy_with_accumulation_uses_union_of_rows_and_include_filter():
    lr = 0.1
    table = keras.Variable(TABLE0, dtype="float64", name="embedding")
    dense = keras.Variable(TABLE0, dtype="float64", name="projection")
    spec = {"name": "adam", "learning_rate": lr, "accumulation_steps": 2, "lazy": ["embedding"]}
    optimizer = build_optimizer(spec)
    for step in range(4):
        optimizer.apply([table_grad(step, table.numpy()), table_grad(step, dense.numpy())], [table, dense])
    w_lazy, w_dense, s_lazy, s_dense = TABLE0.copy(), TABLE0.copy(), {}, {}
    for first in (0, 2):
        g_lazy = (table_grad(first, w_lazy) + table_grad(first + 1, w_lazy)) / 2
        g_dense = (table_grad(first, w_dense) + table_grad(first + 1, w_dense)) / 2
        touched = set(TOUCHED[first]) | set(TOUCHED[first + 1])
        w_lazy = np_lazy(w_lazy, g_lazy, touched, s_lazy, lambda w_, g_, s: np_adam(w_, g_, s, lr))
        w_dense = np_adam(w_dense, g_dense, s_dense, lr)
    np.testing.assert_allclose(table.numpy(), w_lazy, rtol=1e-6)
    np.testing.assert_allclose(dense.numpy(), w_dense, rtol=1e-6)
    assert not np.allclose(w_lazy, w_dense)


# --- composition, tf.function, serialization ------------------------------------------------

FULL_SPEC = {
    "name": "adam",
    "learning_rate": 0.05,
    "beta_1": 0.5,
    "weight_decay": 1e-2,
    "layer_adaptation": True,
    "schedule": {0: 1.0, 4: 1.0, 8: 0.1},
    "accumulation_steps": 2,
    "lookahead": {"k": 2, "alpha": 0.5},
    "lazy": True,
}


def test_full_composition_same_in_tf_function_as_eager():
    eager = run_keras(build_optimizer(FULL_SPEC), 10)
    variables = make_variables()
    optimizer = build_optimizer(FULL_SPEC)
    names = list(variables)
    scale = [tf.constant(SCALE[k]) for k in names]
    target = [tf.constant(TARGET[k]) for k in names]

    @tf.function
    def train_step():
        grads = [s * (variables[k].value - c) for k, s, c in zip(names, scale, target)]
        optimizer.apply(grads, [variables[k] for k in names])

    for _ in range(10):
        train_step()
    assert_weights_close({k: v.numpy() for k, v in variables.items()}, eager)
    assert int(optimizer.iterations) == 5
    assert not np.allclose(eager["kernel"], W0["kernel"])


def test_serialize_round_trip_through_json():
    optimizer = build_optimizer(FULL_SPEC)
    config = json.loads(json.dumps(keras.optimizers.serialize(optimizer)))
    restored = keras.optimizers.deserialize(config)
    assert type(restored) is Lookahead
    assert type(restored.inner_optimizer) is Lazy
    assert type(restored.inner_optimizer.inner_optimizer) is LayerAdaptation
    base = restored.inner_optimizer.inner_optimizer.inner_optimizer
    assert isinstance(base, keras.optimizers.Adam)
    assert isinstance(base._learning_rate, PiecewiseLinear)
    assert base._learning_rate.schedule == {0: 1.0, 4: 1.0, 8: 0.1}
    assert (base.beta_1, base.weight_decay, base.gradient_accumulation_steps) == (0.5, 1e-2, 2)
    assert (restored.k, restored.alpha) == (2, 0.5)
    # Same config ⇒ same trajectory.
    assert_weights_close(run_keras(restored, 6), run_keras(build_optimizer(FULL_SPEC), 6))


def tiny_model():
    inputs = keras.Input((3,), dtype="int32")
    x = keras.layers.Embedding(8, 4, name="embedding")(inputs)
    x = keras.layers.Flatten()(x)
    outputs = keras.layers.Dense(1, name="head")(x)
    return keras.Model(inputs, outputs)


def test_model_save_load_keeps_optimizer_and_state(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.integers(0, 5, size=(16, 3)).astype("int32")  # rows 5..7 never looked up
    y = rng.normal(size=(16, 1))
    keras.utils.set_random_seed(0)
    model = tiny_model()
    model.compile(optimizer=build_optimizer({**FULL_SPEC, "lazy": ["embedding"]}), loss="mse")
    model.fit(x, y, batch_size=4, epochs=1, verbose=0)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert type(loaded.optimizer) is Lookahead
    for a, b in zip(model.optimizer.variables, loaded.optimizer.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    embedding0 = model.get_layer("embedding").embeddings.numpy().copy()
    for m in (model, loaded):
        m.fit(x, y, batch_size=4, epochs=1, verbose=0, shuffle=False)
    for a, b in zip(model.weights, loaded.weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6)
    # Lazy: embedding rows never looked up did not move.
    np.testing.assert_array_equal(model.get_layer("embedding").embeddings.numpy()[5:], embedding0[5:])


class TwoOptimizerModel(keras.Model):
    """GAN-shaped: two sub-networks, two optimizers, optimizer.apply in train_step."""

    def __init__(self, spec):
        super().__init__()
        self.net_a = keras.layers.Dense(2)
        self.net_b = keras.layers.Dense(1)
        self.opt_a = build_optimizer(spec)
        self.opt_b = build_optimizer(spec)

    def call(self, x):
        return self.net_b(self.net_a(x))

    def train_step(self, data):
        x, y = data
        for net, opt in ((self.net_b, self.opt_b), (self.net_a, self.opt_a)):
            with tf.GradientTape() as tape:
                loss = tf.reduce_mean((self(x) - y) ** 2)
            grads = tape.gradient(loss, net.trainable_variables)
            opt.apply(grads, net.trainable_variables)
        return {"loss": loss}


def test_custom_train_step_with_two_wrapped_optimizers():
    model = TwoOptimizerModel({**FULL_SPEC, "accumulation_steps": 1})
    model.compile()
    x = np.random.default_rng(2).normal(size=(12, 3)).astype("float32")
    y = x.sum(axis=1, keepdims=True)
    model(x[:1])
    before = [w.numpy().copy() for w in model.weights]
    history = model.fit(x, y, batch_size=4, epochs=2, verbose=0)
    assert int(model.opt_a.iterations) == int(model.opt_b.iterations) == 6
    assert all(not np.allclose(b, w.numpy()) for b, w in zip(before, model.weights))
    assert np.isfinite(history.history["loss"]).all()


# --- factory errors ------------------------------------------------------------------------


def test_factory_unknown_key_names_it_with_suggestion():
    with pytest.raises(ValueError, match=r"lerning_rate: unknown key \(did you mean 'learning_rate'\?\)"):
        build_optimizer({"name": "adam", "lerning_rate": 1e-3})
    with pytest.raises(ValueError, match=r"lookahed: unknown key \(did you mean 'lookahead'\?\)"):
        build_optimizer({"name": "sgd", "lookahed": {"k": 5}})
    with pytest.raises(ValueError, match=r"lookahead.alfa: unknown key \(did you mean 'alpha'\?\)"):
        build_optimizer({"name": "sgd", "lookahead": {"k": 5, "alfa": 0.5}})
    with pytest.raises(ValueError, match=r"unknown optimizer 'adan' \(did you mean 'adam'\?\)"):
        build_optimizer({"name": "adan"})
    # beta_1 is an Adam argument, not an SGD one.
    with pytest.raises(ValueError, match="'beta_1'"):
        build_optimizer({"name": "sgd", "beta_1": 0.5})


def test_factory_plain_spec_is_plain_keras_optimizer():
    optimizer = build_optimizer({"name": "adam", "learning_rate": 2e-4, "beta_1": 0.5})
    assert type(optimizer) is fused.Adam and isinstance(optimizer, keras.optimizers.Adam)  # the fused step only
    assert optimizer.beta_1 == 0.5
    assert np.isclose(float(optimizer.learning_rate), 2e-4)


@pytest.mark.parametrize("keras_class,fused_class,kwargs", [
    (keras.optimizers.Adam, fused.Adam, {"beta_1": 0.5}),
    (keras.optimizers.Adam, fused.Adam, {"amsgrad": True}),  # Keras' own step
    (keras.optimizers.AdamW, fused.AdamW, {"weight_decay": 0.05, "use_ema": True, "ema_momentum": 0.9}),
])
@pytest.mark.parametrize("compiled", [False, True])
def test_fused_adam_takes_keras_step(keras_class, fused_class, kwargs, compiled):
    """The fused kernel gives Keras' results, eager and inside a tf.function (as in fit)."""
    def run(cls):
        optimizer = cls(learning_rate=0.1, **kwargs)
        variables = make_variables()
        names = list(variables)
        weights = [variables[k] for k in names]
        optimizer.build(weights)
        apply = lambda grads: optimizer.apply(grads, weights)  # noqa: E731
        apply = tf.function(apply) if compiled else apply
        for _ in range(5):
            grads = [tf.constant(grad_of(k, variables[k].numpy())) for k in names]
            apply(grads)
        if compiled:  # the fused kernel runs where it applies (not AMSGrad, not Keras' own class)
            ops_run = {op.type for op in apply.get_concrete_function(grads).graph.get_operations()}
            assert ("ResourceApplyAdam" in ops_run) == (cls is fused_class and not optimizer.amsgrad)
        if optimizer.use_ema:
            optimizer.finalize_variable_values(weights)
        return {k: v.numpy() for k, v in variables.items()}

    assert_weights_close(run(fused_class), run(keras_class))


def test_fused_adam_serializes_as_itself():
    optimizer = build_optimizer({"name": "adamw", "learning_rate": 3e-4, "weight_decay": 0.01})
    restored = keras.saving.deserialize_keras_object(json.loads(json.dumps(keras.saving.serialize_keras_object(optimizer))))
    assert type(restored) is fused.AdamW
    assert restored.get_config() == optimizer.get_config()


# --- tf.distribute -------------------------------------------------------------------------

MIRRORED_SCRIPT = """
import json, sys
import numpy as np, tensorflow as tf, keras
tf.config.threading.set_intra_op_parallelism_threads(1)
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from kexue.optim import build_optimizer
spec = json.loads(sys.argv[1])

def train(strategy):
    with strategy.scope():
        keras.utils.set_random_seed(0)
        inputs = keras.Input((3,), dtype="int32")
        x = keras.layers.Flatten()(keras.layers.Embedding(8, 4, name="embedding")(inputs))
        model = keras.Model(inputs, keras.layers.Dense(1)(x))
        model.compile(optimizer=build_optimizer(spec), loss="mse")
    rng = np.random.default_rng(1)
    # Each batch of 8 is split 4 + 4 over the replicas: rows 0-2 on one, 3-5 on the other.
    x = np.concatenate([rng.integers(0, 3, size=(4, 3)), rng.integers(3, 6, size=(4, 3))] * 2)
    x = x.astype("int32")
    y = rng.normal(size=(16, 1)).astype("float32")
    model.fit(x, y, batch_size=8, epochs=2, verbose=0, shuffle=False)
    return [w.numpy() for w in model.weights]

single = train(tf.distribute.get_strategy())
mirrored = train(tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]))
print(json.dumps(max(float(np.abs(a - b).max()) for a, b in zip(single, mirrored))))
"""


@pytest.mark.slow
def test_mirrored_strategy_with_two_replicas_matches_single_device():
    """Two logical CPUs need a fresh TF runtime, hence the subprocess."""
    import subprocess
    import sys

    spec = {**FULL_SPEC, "accumulation_steps": 1, "lazy": ["embedding"]}
    result = subprocess.run(
        [sys.executable, "-c", MIRRORED_SCRIPT, json.dumps(spec)],
        capture_output=True, text=True, timeout=300, check=True,
    )
    assert float(result.stdout.strip().splitlines()[-1]) < 1e-5


def test_state_in_variables_is_enough_to_resume():
    """What a checkpoint of ``optimizer.variables`` restores continues the same trajectory."""
    first = build_optimizer(FULL_SPEC)
    variables = make_variables()
    run_keras(first, 3, variables=variables)
    saved_weights = {k: v.numpy() for k, v in variables.items()}
    saved_state = [v.numpy() for v in first.variables]
    resumed_variables = {k: keras.Variable(w, dtype="float64", name=k) for k, w in saved_weights.items()}
    resumed = build_optimizer(FULL_SPEC)
    resumed.build([resumed_variables[k] for k in variables])
    assert len(resumed.variables) == len(saved_state)
    for target, value in zip(resumed.variables, saved_state):
        target.assign(value)
    assert_weights_close(run_keras(resumed, 5, variables=resumed_variables), run_keras(first, 5, variables=variables))


def test_factory_validates_variant_values():
    with pytest.raises(ValueError, match="accumulation_steps"):
        build_optimizer({"name": "adam", "accumulation_steps": 0})
    with pytest.raises(ValueError, match="lazy"):
        build_optimizer({"name": "adam", "lazy": 3})
    optimizer = build_optimizer({"name": "sgd", "learning_rate": "2e-4", "lazy": "embedding", "lookahead": True})
    assert (optimizer.k, optimizer.alpha, optimizer.inner_optimizer.include) == (5, 0.5, ["embedding"])
    assert np.isclose(float(optimizer.learning_rate), 2e-4)


def test_ema_through_wrappers_matches_numpy():
    lr, momentum = 0.1, 0.8
    spec = {"name": "sgd", "learning_rate": lr, "use_ema": True, "ema_momentum": momentum,
            "lookahead": {"k": 2, "alpha": 0.5}, "lazy": True}
    optimizer = build_optimizer(spec)
    variables = make_variables()
    run_keras(optimizer, 4, variables=variables)
    optimizer.finalize_variable_values([variables[k] for k in variables])
    for name, w in W0.items():
        slow, average = w.copy(), None
        for step in range(4):
            w = w - lr * grad_of(name, w)
            # Keras updates the average inside the inner step, before Lookahead syncs.
            average = w.copy() if average is None else momentum * average + (1 - momentum) * w
            if (step + 1) % 2 == 0:
                slow = slow + 0.5 * (w - slow)
                w = slow.copy()
        np.testing.assert_allclose(variables[name].numpy(), average, rtol=1e-6)
