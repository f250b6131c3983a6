"""The public API (medl2b.api): pinned names, same weights as the training engine, shapes, MONAI engine."""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import torch
from torch import nn

import medl2b
from medl2b import L2B, L2BStep, l2b_step, monai_iteration
from medl2b.meta.methods import get_method
from medl2b.meta.losses import weighted_losses
from tiny_nets import TinyCls, TinySeg

# Removing or renaming a public name is a breaking change: it needs a new major API_VERSION.
PUBLIC = ["API_VERSION", "L2B", "L2BStep", "l2b_step", "load_run", "monai_iteration"]


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: one intra-op thread is fastest and does not fight other work for the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def seg_data(seed=0, b=4, bm=3, size=8):
    g = torch.Generator().manual_seed(seed)
    x, xm = torch.randn(b, 1, size, size, generator=g), torch.randn(bm, 1, size, size, generator=g)
    y = (torch.rand(b, size, size, generator=g) > 0.6).long()
    ym = (torch.rand(bm, size, size, generator=g) > 0.6).long()
    return x, y, xm, ym


def cls_data(seed=0, b=6, bm=4):
    g = torch.Generator().manual_seed(seed)
    x, xm = torch.randn(b, 3, 6, 6, generator=g), torch.randn(bm, 3, 6, 6, generator=g)
    return x, torch.randint(0, 4, (b,), generator=g), xm, torch.randint(0, 4, (bm,), generator=g)


def model_and_data(task, seed=0):
    torch.manual_seed(seed)
    return (TinySeg(), *seg_data(seed)) if task == "seg" else (TinyCls(), *cls_data(seed))


def test_exported_names_are_pinned_and_versioned():
    assert medl2b.__all__ == PUBLIC
    assert medl2b.API_VERSION == "1.2"  # 1.1 added load_run; 1.2 the trusted mask and method l2b-pure
    for name in PUBLIC:
        assert getattr(medl2b, name) is not None
        assert name in dir(medl2b)
    with pytest.raises(AttributeError):
        medl2b.not_a_public_name  # noqa: B018


def test_import_medl2b_does_not_import_torch():
    code = "import sys, medl2b; assert medl2b.API_VERSION; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("impl", ["fast", "reference"])
@pytest.mark.parametrize("method", ["ce", "bootstrap", "l2rw", "l2b", "l2b-pure", "l2b-sum1"])
@pytest.mark.parametrize("task", ["seg", "cls"])
def test_weights_equal_the_training_engine(task, method, impl):
    model, x, y, xm, ym = model_and_data(task)
    ours = copy.deepcopy(model)
    out = l2b_step(ours, x, y, xm, ym, lr=0.1, method=method, impl=impl)
    weights, losses, meta = weighted_losses(model, get_method(method), x, y, xm, ym, lr=0.1, meta_impl=impl)
    assert torch.equal(out.alpha, weights[0])
    assert torch.equal(out.beta, weights[1] if len(weights) == 2 else torch.zeros_like(weights[0]))
    assert all(torch.equal(a, b) for a, b in zip(out.losses, losses)) and len(out.losses) == len(losses)
    expected = sum((w * l).sum() for w, l in zip(weights, losses))
    assert torch.allclose(out.loss, expected)
    assert out.meta_loss == (None if meta is None else meta.meta_loss)
    for a, b in zip(ours.state_dict().values(), model.state_dict().values()):  # BN statistics moved alike
        assert torch.equal(a, b)


@pytest.mark.parametrize("method", ["l2rw", "l2b", "l2b-sum1"])
@pytest.mark.parametrize("task", ["seg", "cls"])
def test_fast_and_reference_give_the_same_weights(task, method):
    model, x, y, xm, ym = model_and_data(task, seed=1)
    fast = l2b_step(copy.deepcopy(model), x, y, xm, ym, lr=0.05, method=method, impl="fast")
    low = l2b_step(copy.deepcopy(model), x, y, xm, ym, lr=0.05, method=method, impl="fast-lowmem")
    ref = l2b_step(copy.deepcopy(model), x, y, xm, ym, lr=0.05, method=method, impl="reference")
    for other in (low, ref):
        torch.testing.assert_close(other.alpha, fast.alpha, rtol=1e-4, atol=1e-7)
        torch.testing.assert_close(other.beta, fast.beta, rtol=1e-4, atol=1e-7)
        assert other.meta_loss == pytest.approx(fast.meta_loss, rel=1e-6)


@pytest.mark.parametrize("task,shape", [("seg", (4, 8, 8)), ("cls", (6,))])
def test_shapes_and_sums(task, shape):
    model, x, y, xm, ym = model_and_data(task)
    step = L2B().step(model, x, y, xm, ym, lr=0.1)
    assert isinstance(step, L2BStep)
    assert step.alpha.shape == step.beta.shape == shape
    assert [tuple(l.shape) for l in step.losses] == [shape, shape]
    assert step.loss.ndim == 0 and step.loss.requires_grad
    assert not step.alpha.requires_grad and not step.beta.requires_grad
    assert float(step.alpha.sum() + step.beta.sum()) == pytest.approx(1.0, abs=1e-5)
    assert isinstance(step.meta_loss, float) and step.skipped is False
    n = torch.Size(shape).numel()
    sum1 = L2B(method="l2b-sum1").step(model, x, y, xm, ym, lr=0.1)
    torch.testing.assert_close(sum1.alpha + sum1.beta, torch.full(shape, 1.0 / n))
    for method in ("ce", "l2rw"):
        one = l2b_step(model, x, y, xm, ym, lr=0.1, method=method)
        assert one.beta.shape == shape and not one.beta.any() and len(one.losses) == 1
    warm = l2b_step(model, x, y, lr=0.1, warm=True)  # warm-up: CE, no meta batch needed
    torch.testing.assert_close(warm.alpha, torch.full(shape, 1.0 / n))
    assert not warm.beta.any() and warm.meta_loss is None
    boot = l2b_step(model, x, y, lr=0.1, method="bootstrap")
    assert float(boot.alpha.sum()) == pytest.approx(0.8) and float(boot.beta.sum()) == pytest.approx(0.2)


def test_monai_label_layout_is_accepted():
    model, x, y, xm, ym = model_and_data("seg")
    a = l2b_step(copy.deepcopy(model), x, y, xm, ym, lr=0.1)
    b = l2b_step(copy.deepcopy(model), x, y[:, None].float(), xm, ym[:, None].float(), lr=0.1)
    assert torch.equal(a.alpha, b.alpha) and torch.equal(a.beta, b.beta)


def test_normalise_option_and_scope():
    model, x, y, xm, ym = model_and_data("cls")
    sum1 = l2b_step(copy.deepcopy(model), x, y, xm, ym, lr=0.1, method="l2b-sum1")
    elem = l2b_step(copy.deepcopy(model), x, y, xm, ym, lr=0.1, method="l2b", normalise="element")
    assert torch.equal(sum1.alpha, elem.alpha) and torch.equal(sum1.beta, elem.beta)
    batch = l2b_step(copy.deepcopy(model), x, y, xm, ym, lr=0.1, method="l2b-sum1", normalise="batch")
    plain = l2b_step(copy.deepcopy(model), x, y, xm, ym, lr=0.1, method="l2b")
    assert torch.equal(batch.alpha, plain.alpha)
    # scope "last" = the .fc head, the same as naming its parameters, and the same as the engine's
    last = l2b_step(copy.deepcopy(model), x, y, xm, ym, lr=0.1, scope="last")
    named = l2b_step(copy.deepcopy(model), x, y, xm, ym, lr=0.1, scope=["fc.weight", "fc.bias"])
    weights, _, _ = weighted_losses(copy.deepcopy(model), get_method("l2b"), x, y, xm, ym, lr=0.1,
                                    param_names=["fc.weight", "fc.bias"])
    assert torch.equal(last.alpha, named.alpha) and torch.equal(last.alpha, weights[0])
    assert not torch.allclose(last.alpha, plain.alpha)
    seg, *seg_batch = model_and_data("seg")
    with pytest.raises(ValueError, match="scope='last'.*parameter names"):
        l2b_step(seg, *seg_batch, lr=0.1, scope="last")
    with pytest.raises(ValueError, match="param_names"):
        l2b_step(seg, *seg_batch, lr=0.1, scope=["nope.weight"])


@pytest.mark.parametrize("kwargs,match", [
    ({"method": "ce+clean"}, "another training set"), ({"method": "mixup"}, "method must be"),
    ({"meta_loss": "focal"}, "meta_loss"), ({"impl": "slow"}, "impl"), ({"scope": "head"}, "scope"),
    ({"scope": []}, "empty"), ({"normalise": "sample"}, "normalise"),
    ({"method": "ce", "normalise": "batch"}, "meta methods"), ({"method": "l2rw", "normalise": "element"}, "two"),
])
def test_bad_options_are_refused_at_construction(kwargs, match):
    with pytest.raises(ValueError, match=match):
        L2B(**kwargs)


def test_api_methods_are_the_losses_on_a_batch():
    """l2b and l2b-pure are API methods (a loss on a batch); ce+clean and meta-only change the training data and
    are not. Without a trusted mask l2b and l2b-pure are one step."""
    from medl2b.api import API_METHODS, TRUSTED_METHODS
    from medl2b.config import METHODS

    assert {"l2b", "l2b-pure", "l2b-sum1", "l2rw", "ce", "bootstrap"} == set(API_METHODS)
    assert set(METHODS) - set(API_METHODS) == {"ce+clean", "meta-only"} and TRUSTED_METHODS == ("l2b",)
    for name in ("ce+clean", "meta-only", "l2b+clean"):
        with pytest.raises(ValueError, match="method must be one of"):
            L2B(method=name)
    for task in ("seg", "cls"):
        model, x, y, xm, ym = model_and_data(task)
        a = l2b_step(copy.deepcopy(model), x, y, xm, ym, lr=0.1, method="l2b")
        b = l2b_step(copy.deepcopy(model), x, y, xm, ym, lr=0.1, method="l2b-pure")
        assert torch.equal(a.alpha, b.alpha) and torch.equal(a.beta, b.beta) and torch.equal(a.loss, b.loss)


@pytest.mark.parametrize("task", ["seg", "cls"])
@pytest.mark.parametrize("normalise", ["batch", "element"])
def test_trusted_samples_keep_plain_ce_weights(task, normalise):
    """l2b's trusted mask: the marked samples of the batch get α = 1/N, β = 0 on every element, the others the
    meta step's weights rescaled to the rest (the engine's weights: the same code path)."""
    model, x, y, xm, ym = model_and_data(task)
    plain = l2b_step(copy.deepcopy(model), x, y, xm, ym, lr=0.1, normalise=normalise)
    n = y.numel()
    away = ((plain.alpha - 1.0 / n).abs() + plain.beta).reshape(y.shape[0], -1).sum(1)
    k = int(away.argmax())  # trust the sample whose meta weights are furthest from CE's
    assert float(away[k]) > 1e-6
    trusted = torch.zeros(y.shape[0], dtype=torch.bool)
    trusted[k] = True
    step = l2b_step(copy.deepcopy(model), x, y, xm, ym, lr=0.1, normalise=normalise, trusted=trusted)
    torch.testing.assert_close(step.alpha[k], torch.full_like(step.alpha[k], 1.0 / n))
    assert not step.beta[k].any() and not step.skipped
    assert float(step.alpha.sum() + step.beta.sum()) == pytest.approx(1.0, abs=1e-5)
    method = get_method("l2b", normalise=normalise)
    weights, _, _ = weighted_losses(copy.deepcopy(model), method, x, y, xm, ym, lr=0.1, trusted=trusted)
    assert torch.equal(step.alpha, weights[0]) and torch.equal(step.beta, weights[1])
    none = l2b_step(copy.deepcopy(model), x, y, xm, ym, lr=0.1, normalise=normalise,
                    trusted=torch.zeros_like(trusted))
    assert torch.equal(none.alpha, plain.alpha)
    warm = l2b_step(copy.deepcopy(model), x, y, lr=0.1, warm=True, trusted=trusted)  # warm-up: CE for all
    torch.testing.assert_close(warm.alpha, torch.full_like(warm.alpha, 1.0 / n))
    for method in ("l2b-pure", "l2b-sum1", "l2rw", "ce"):
        with pytest.raises(ValueError, match="never trains on trusted samples"):
            l2b_step(model, x, y, xm, ym, lr=0.1, method=method, trusted=trusted)
    with pytest.raises(ValueError, match="one flag per sample"):
        l2b_step(model, x, y, xm, ym, lr=0.1, trusted=trusted[:-1])


def test_meta_method_needs_a_meta_batch_and_dice_needs_segmentation():
    model, x, y, xm, ym = model_and_data("cls")
    with pytest.raises(ValueError, match="needs a meta batch"):
        l2b_step(model, x, y, lr=0.1)
    with pytest.raises(ValueError, match="segmentation"):
        l2b_step(model, x, y, xm, ym, lr=0.1, meta_loss="dice")


def test_a_batch_that_cannot_help_is_skipped():
    # one sample, meta batch = the same input with the other label: every meta gradient opposes the step
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    x = torch.randn(1, 1, 2, 2)
    step = l2b_step(model, x, torch.tensor([0]), x, torch.tensor([1]), lr=0.1, method="l2rw")
    assert step.skipped and not step.alpha.any() and float(step.loss.detach()) == 0.0


# --- MONAI SupervisedTrainer -------------------------------------------------------------------

def _trainer(net, batches, iteration_update, *, epochs, lr=0.05):
    from monai.engines import SupervisedTrainer
    from torch.utils.data import DataLoader

    loader = DataLoader(batches, batch_size=4, shuffle=False)
    return SupervisedTrainer(device=torch.device("cpu"), max_epochs=epochs, train_data_loader=loader, network=net,
                             optimizer=torch.optim.SGD(net.parameters(), lr=lr), loss_function=nn.CrossEntropyLoss(),
                             iteration_update=iteration_update)


def _items(seed, n, size=8):
    """MONAI-style dict items: image (1, H, W) float, label (1, H, W) float."""
    x, y, _, _ = seg_data(seed, b=n, bm=1, size=size)
    return [{"image": x[i], "label": y[i][None].float()} for i in range(n)]


def test_supervised_trainer_runs_l2b_and_records_weights():
    pytest.importorskip("ignite")
    from ignite.engine import Events
    from torch.utils.data import DataLoader

    torch.manual_seed(0)
    net = TinySeg()
    before = copy.deepcopy(net.state_dict())
    meta = DataLoader(_items(1, 3), batch_size=3)
    trainer = _trainer(net, _items(0, 8), monai_iteration(meta, L2B(meta_loss="ce+dice"), warmup_epochs=1),
                       epochs=2)
    seen = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: seen.append((e.state.epoch, e.state.l2b)))
    trainer.run()
    assert len(seen) == 4  # 2 epochs x 2 iterations
    for epoch, step in seen:
        assert step.alpha.shape == step.beta.shape == (4, 8, 8)
        assert not step.loss.requires_grad
        if epoch == 1:  # warm-up: CE
            assert step.meta_loss is None and not step.beta.any()
        else:
            assert isinstance(step.meta_loss, float) and step.beta.sum() > 0
            assert float(step.alpha.sum() + step.beta.sum()) == pytest.approx(1.0, abs=1e-5)
    after = net.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before if after[k].is_floating_point())


def test_supervised_trainer_step_equals_the_plain_loop():
    pytest.importorskip("ignite")
    from torch.utils.data import DataLoader

    torch.manual_seed(0)
    net = TinySeg()
    manual = copy.deepcopy(net)
    items, meta_items = _items(0, 4), _items(1, 3)
    _trainer(net, items, monai_iteration(DataLoader(meta_items, batch_size=3)), epochs=1).run()

    x = torch.stack([i["image"] for i in items])
    y = torch.stack([i["label"] for i in items])
    xm = torch.stack([i["image"] for i in meta_items])
    ym = torch.stack([i["label"] for i in meta_items])
    opt = torch.optim.SGD(manual.parameters(), lr=0.05)
    step = l2b_step(manual, x, y, xm, ym, lr=0.05)
    opt.zero_grad()
    step.loss.backward()
    opt.step()
    for (k, a), b in zip(net.state_dict().items(), manual.state_dict().values()):
        torch.testing.assert_close(a, b, msg=k)


def test_supervised_trainer_meta_data_is_restarted_and_a_used_up_iterator_is_named():
    pytest.importorskip("ignite")
    from torch.utils.data import DataLoader

    torch.manual_seed(0)
    meta = DataLoader(_items(1, 2), batch_size=2)  # one batch, re-iterated every iteration
    _trainer(TinySeg(), _items(0, 12), monai_iteration(meta), epochs=1).run()
    one_shot = iter(DataLoader(_items(1, 2), batch_size=2))
    with pytest.raises(ValueError, match="meta_data gave no batch"):
        _trainer(TinySeg(), _items(0, 8), monai_iteration(one_shot), epochs=1).run()


def test_task_defaults_match_the_cli():
    """L2B.for_segmentation / for_classification hold the options `medl2b train` ships for the task."""
    from medl2b.config import load_config

    for task, make in (("segmentation", L2B.for_segmentation), ("skin-lesion-cls", L2B.for_classification)):
        cfg = load_config(task)
        opts = make()
        assert (opts.method, opts.meta_loss, opts.impl, opts.scope) == (cfg.method, cfg.meta_loss, cfg.meta_impl,
                                                                          cfg.meta_scope)
        assert opts.normalise == cfg.meta_normalise
    assert L2B.for_segmentation().normalise == "element" and L2B.for_segmentation().meta_loss == "ce+dice"
    assert L2B.for_classification(meta_loss="ce", impl="reference").impl == "reference"
    with pytest.raises(ValueError):
        L2B.for_segmentation(method="meta-only")
