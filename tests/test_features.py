"""Each training and inference feature does what it says: every test here fails when its feature is
removed or wired wrong (EMA, gradient accumulation, early stopping, schedules, class and head weights,
Mixup/CutMix in comp's own loop, flip TTA, frozen layers, layer-wise lr decay)."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from timm.data import Mixup
from timm.data.mixup import mixup_target

from comp import runs
from comp.config import load_config
from comp.data import labels as L
from comp.data.loader import Normalizer
from comp.inference import predict_probs, predict_views
from comp.models import Head, create_model, layer_groups
from comp.train import engine
from comp.train.engine import train, train_one_epoch
from comp.train.factory import build_fold, create_scheduler
from comp.train.losses import Criterion, class_weights
from comp.train.targets import Targets, age_distribution, create_mixup, target_table

from .conftest import tiny_cfg


def fold_of(root, out, *extra, fold=0):
    cfg = tiny_cfg(root, *extra)
    return build_fold(cfg, runs.train_frame(cfg), fold, out, [])


def spy_targets(f) -> list[torch.Tensor]:
    """The targets the loop hands to the loss, batch by batch."""
    seen, real = [], f.criterion

    def spy(logits, target):
        seen.append(target.clone())
        return real(logits, target)
    f.criterion = spy
    return seen


def params(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def test_ema_is_the_decayed_average_of_the_updates(tiny_root, tmp_path):
    f = fold_of(tiny_root, tmp_path, "train.ema=true", "train.ema_decay=0.9")
    expected, after_each_update = params(f.model), []
    f.optimizer.optimizer.register_step_post_hook(lambda *_: after_each_update.append(params(f.model)))
    train_one_epoch(f, 0)
    assert len(after_each_update) == f.state.step >= 2
    for step, w in enumerate(after_each_update, start=1):  # timm's warm-up: decay 0 at the first update
        d = f.ema.get_decay(step)
        expected = {n: d * expected[n] + (1 - d) * w[n] for n in w}
    ema, raw = params(f.ema.module), params(f.model)
    assert all(torch.allclose(ema[n], expected[n], atol=1e-6) for n in ema)
    assert any(not torch.allclose(ema[n], raw[n], atol=1e-4) for n in ema)  # EMA weights are not the raw ones
    assert f.eval_model is f.ema.module  # what is validated and saved


def test_one_process_trains_at_several_precisions():
    """A sweep runs its trials in one process, and a trial may vary train.mixed_precision; Accelerate keeps
    one state per process and refuses a second precision (ValueError) unless comp starts it afresh."""
    from comp.inference import make_accelerator

    assert [make_accelerator(p).mixed_precision for p in ("bf16", "no", "bf16")] == ["bf16", "no", "bf16"]


def test_grad_accum_2_at_batch_b_equals_batch_2b(tiny_root, tmp_path):
    # GroupNorm instead of BatchNorm: batch statistics would differ between 8 and 16 images.
    # SGD: unlike Adam it is not scale-invariant, so a missing 1/grad_accum would show.
    # fp32: on a CPU with bf16 instructions (AMX) `auto` is bf16 autocast, whose 2^-8 rounding differs between a
    # batch of 16 and two of 8
    common = ["model.kwargs={norm_layer: groupnorm1}", "optim.name=sgd", "optim.lr=0.05", "train.mixed_precision=no"]
    # one at a time: Accelerate's gradient state is shared by every Accelerator of a process
    a = fold_of(tiny_root, tmp_path / "a", *common, "train.batch_size=16")
    start = params(a.model)
    train_one_epoch(a, 0)
    pa = params(a.model)
    b = fold_of(tiny_root, tmp_path / "b", *common, "train.batch_size=8", "train.grad_accum=2")
    train_one_epoch(b, 0)
    pb = params(b.model)
    assert len(a.train_loader) == 2 and len(b.train_loader) == 4  # the same 32 of 35 images (drop_last)
    assert a.state.step == b.state.step == 2
    assert any(not torch.allclose(pa[n], start[n], atol=1e-4) for n in pa)  # it did learn
    assert all(torch.allclose(pa[n], pb[n], atol=2e-5) for n in pa)


def test_early_stopping_stops_at_the_right_epoch(tiny_root, tmp_path, monkeypatch):
    scripted = iter([0.50, 0.60, 0.55, 0.58, 0.90, 0.95])
    real = engine.validate

    def validate(f):
        row, probs, rows = real(f)
        return {**row, "f1": next(scripted)}, probs, rows
    monkeypatch.setattr(engine, "validate", validate)
    r = train(tiny_cfg(tiny_root, "train.epochs=6", "train.early_stopping=2"), tmp_path / "run")
    fold = r.folds[0]
    assert [h["epoch"] for h in fold.history] == [1, 2, 3, 4]  # epochs 3 and 4 did not beat epoch 2
    assert fold.best_epoch == 2 and runs.read_done(tmp_path / "run" / "fold0")["best_epoch"] == 2


def lr_curve(name: str, **kw) -> np.ndarray:
    sc = load_config(None, [f"sched.name={name}", "sched.warmup_epochs=1", "sched.warmup_lr=0.1",
                            "sched.min_lr=0.01", "sched.decay_epochs=2", "sched.decay_rate=0.5"]).sched
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    s = create_scheduler(opt, sc, epochs=5, updates_per_epoch=10)
    out = []
    for t in range(51):  # the engine steps after each update: step_update(1) ... step_update(50)
        s.step_update(t)
        out.append(opt.param_groups[0]["lr"])
    return np.array(out)


def test_schedules_warm_up_per_update_then_follow_their_shape():
    warm = np.linspace(0.1, 1.0, 11)[:-1]  # 10 updates from warmup_lr towards optim.lr
    for name in ("cosine", "constant", "step"):
        assert np.allclose(lr_curve(name)[:10], warm), name
    cos = lr_curve("cosine")
    assert cos[10] == pytest.approx(1.0) and cos[50] == pytest.approx(0.01) and (np.diff(cos[10:]) <= 1e-12).all()
    assert np.allclose(lr_curve("constant")[10:], 1.0)
    step = lr_curve("step")
    assert np.allclose(step[10:30], 1.0) and np.allclose(step[30:50], 0.5) and step[50] == pytest.approx(0.25)


def test_the_loop_steps_the_schedule_to_its_end(tiny_root, tmp_path):
    r = train(tiny_cfg(tiny_root, "train.epochs=2", "sched.min_lr=1e-5"), tmp_path / "cos")
    assert r.folds[0].history[-1]["lr"] == pytest.approx(1e-5)  # the last update reaches min_lr
    r = train(tiny_cfg(tiny_root, "train.epochs=2", "sched.name=constant"), tmp_path / "const")
    assert [h["lr"] for h in r.folds[0].history] == pytest.approx([0.003, 0.003])


def test_class_weights_weigh_rare_classes_up():
    assert np.allclose(class_weights([90, 10], "inverse"), [0.2, 1.8])
    assert np.allclose(class_weights([90, 10], "sqrt"), [0.5, 1.5])
    assert class_weights([90, 10], "none") is None
    y = torch.tensor([0, 0, 0, 1, 2, 2])
    crit = Criterion(load_config(None, ["loss.class_weights=inverse"]).loss, Head("multiclass"), y.numpy())
    logits = torch.randn(6, 18)
    w = torch.tensor(class_weights(np.bincount(y.numpy(), minlength=18), "inverse"), dtype=torch.float32)
    assert torch.allclose(crit(logits, mixup_target(y, 18)), F.cross_entropy(logits, y, weight=w), atol=1e-5)
    plain = Criterion(load_config(None, []).loss, Head("multiclass"), y.numpy())
    assert not torch.allclose(crit(logits, mixup_target(y, 18)), plain(logits, mixup_target(y, 18)))


def test_head_weights_scale_each_heads_loss():
    cfg = load_config(None, ["model.head=multitask", "model.head_weights={mask: 0, gender: 2, age: 0}"])
    head = Head("multitask", cfg.model.head_weights)
    y = torch.tensor([0, 4, 9, 17])
    logits = torch.randn(4, 8, requires_grad=True)
    loss = Criterion(cfg.loss, head)(logits, mixup_target(y, 18))
    gender = torch.as_tensor(L.decode_heads(y.numpy())["gender"])
    assert torch.allclose(loss, 2 * F.cross_entropy(logits[:, 3:5], gender), atol=1e-6)
    loss.backward()
    assert logits.grad[:, 0:3].abs().max() == 0 and logits.grad[:, 5:8].abs().max() == 0


def test_multitask_heads_learn_the_marginals_of_mixed_targets():
    y = torch.tensor([0, 17])  # wear/male/<30 and normal/female/>=60
    mixed = mixup_target(y, 18, lam=0.7)  # row 0: 0.7 of class 0, 0.3 of class 17
    crit = Criterion(load_config(None, ["model.head=multitask"]).loss, Head("multitask"))
    logits = torch.randn(2, 8)
    expected = sum(F.cross_entropy(part, torch.tensor(t), reduction="none")
                   for part, t in [(logits[:, 0:3], [0, 2]), (logits[:, 3:5], [0, 1]), (logits[:, 5:8], [0, 2])])
    flipped = sum(F.cross_entropy(part, torch.tensor(t), reduction="none")
                  for part, t in [(logits[:, 0:3], [2, 0]), (logits[:, 3:5], [1, 0]), (logits[:, 5:8], [2, 0])])
    assert torch.allclose(crit(logits, mixed), (0.7 * expected + 0.3 * flipped).mean(), atol=1e-5)


@pytest.mark.parametrize("mix", ["mixup.mixup_alpha=0.4", "mixup.cutmix_alpha=1.0"])
def test_the_loop_trains_on_mixed_targets_until_off_epoch(tiny_root, tmp_path, mix):
    f = fold_of(tiny_root, tmp_path, mix, "loss.label_smoothing=0.1", "mixup.off_epoch=1")
    assert f.targets.mixup is not None and f.targets.smoothing == 0.1
    seen = spy_targets(f)
    train_one_epoch(f, 0)
    mixed = torch.cat(seen)
    assert torch.allclose(mixed.sum(1), torch.ones(len(mixed)))
    assert ((mixed > 0.1 / 18 + 0.02).sum(1) == 2).any()  # rows holding two classes
    seen.clear()
    train_one_epoch(f, 1)  # mixup.off_epoch=1: clean, smoothed one-hot targets from epoch 1 on
    clean = torch.cat(seen)
    assert ((clean > 0.1 / 18 + 1e-6).sum(1) == 1).all() and torch.allclose(clean.max(1).values, torch.tensor(0.9 + 0.1 / 18))


@pytest.mark.parametrize("cutmix", [0.0, 1.0])
def test_mixing_batch_rows_gives_exactly_timms_mixed_targets(cutmix):
    y = torch.tensor([0, 4, 9, 17, 3, 3])
    x = torch.randn(6, 3, 8, 8)
    kw = dict(mixup_alpha=0.4, cutmix_alpha=cutmix, prob=1.0, switch_prob=0.5)
    np.random.seed(3)
    x_timm, t_timm = Mixup(**kw, label_smoothing=0.1, num_classes=18)(x.clone(), y)
    ours = Targets(target_table(y.numpy(), None, L.AgeBins(), 0.0), 0.1,
                   create_mixup(load_config(None, [f"mixup.{k}={v}" for k, v in kw.items()]).mixup, 8))
    np.random.seed(3)
    x_ours, t_ours = ours(x.clone(), torch.arange(6))
    assert torch.equal(x_ours, x_timm) and torch.allclose(t_ours, t_timm, atol=1e-6)


def test_softened_ages_share_mass_across_the_nearest_boundary_only():
    dist = age_distribution(np.array([59, 60, 45, 29, 20]), L.AgeBins(), sigma=2.0)
    assert np.allclose(dist.sum(1), 1)
    assert 0.3 < dist[0, 2] < 0.5 and dist[0, 1] > 0.5  # 59: mostly 30-59, a good share >=60
    assert 0.3 < dist[1, 1] < 0.5 and dist[1, 2] > 0.5  # 60: the mirror image
    assert dist[2, 1] > 0.999  # 45 is 30-59 whatever the error
    assert dist[3, 0] > 0.5 and dist[3, 1] > 0.3 and dist[3, 2] < 1e-6
    assert np.array_equal(age_distribution(np.array([59, 60, 45]), L.AgeBins(), 0.0), np.eye(3)[[1, 2, 1]])
    assert age_distribution(np.array([57]), L.AgeBins(old_from=58), 2.0)[0, 2] > 0.3  # follows data.old_from
    table = target_table(np.array([L.encode(2, 1, 1)]), np.array([59]), L.AgeBins(), 2.0)
    assert torch.isclose(table.sum(), torch.tensor(1.0))
    assert set(torch.nonzero(table[0] > 1e-6).flatten().tolist()) == {L.encode(2, 1, 1), L.encode(2, 1, 2)}  # same mask, gender


def test_the_loop_trains_on_softened_ages(tiny_root, tmp_path):
    f = fold_of(tiny_root, tmp_path, "loss.age_sigma=3", "loss.label_smoothing=0")
    seen = spy_targets(f)
    train_one_epoch(f, 0)
    t = torch.cat(seen)
    assert ((t > 0.05).sum(1) == 2).any()  # people near an age boundary train on two groups
    assert torch.cdist(t, f.targets.table).min(1).values.max() < 1e-6  # each is its image's softened row
    df = runs.train_frame(tiny_cfg(tiny_root))
    recorded = df.loc[df["fold"] != 0, "label"].to_numpy()
    assert np.array_equal(f.targets.table.argmax(1).numpy(), recorded)  # the recorded group keeps the most mass
    for x, y, rows in f.train_loader:  # and each image is looked up by its own row
        assert torch.equal(f.targets(x, rows)[1].argmax(1), y)


def test_flip_tta_is_the_mean_over_the_image_and_its_mirror():
    torch.manual_seed(0)
    model, head = create_model(load_config(None, ["model.name=resnet10t"]).model).eval(), Head("multiclass")
    x = torch.randint(0, 256, (5, 3, 32, 24), dtype=torch.uint8)
    loader = [(x, torch.zeros(5), torch.arange(5))]
    norm = Normalizer([0.5] * 3, [0.25] * 3)
    forwards = []
    hook = model.register_forward_hook(lambda m, inp, out: forwards.append(len(inp[0])))
    views, idx = predict_views(model, head, loader, norm, tta="flip")
    hook.remove()
    assert forwards == [10]  # both views of the batch in one forward pass
    with torch.no_grad():
        plain = head.probs(model(norm(x))).numpy()
        mirror = head.probs(model(norm(torch.flip(x, dims=[3])))).numpy()  # width is the last axis of NCHW
        upside = head.probs(model(norm(torch.flip(x, dims=[2])))).numpy()
    assert np.allclose(views[0], plain, atol=1e-5) and np.allclose(views[1], mirror, atol=1e-5)
    assert not np.allclose(views[1], upside, atol=1e-3)
    mean, _ = predict_probs(model, head, loader, norm, tta="flip")
    assert np.allclose(mean, (plain + mirror) / 2, atol=1e-5)


def test_auto_precision_is_bf16_only_where_it_runs_natively(monkeypatch):
    from comp import inference

    monkeypatch.setattr(inference, "bf16_native", lambda: False)
    assert inference.precision("auto") == "no" and inference.precision("bf16") == "bf16"
    monkeypatch.setattr(inference, "bf16_native", lambda: True)
    assert inference.precision("auto") == "bf16" and inference.precision("no") == "no"


def test_epoch_hook_sees_each_epoch_and_can_stop_the_run(tiny_root, tmp_path):
    seen = []

    class Stop(Exception):
        pass

    def hook(fold, row):
        seen.append((fold, row["epoch"], row["f1"]))
        if row["epoch"] == 2:
            raise Stop
    with pytest.raises(Stop):
        train(tiny_cfg(tiny_root, "train.epochs=3"), tmp_path / "run", on_epoch=hook)
    assert [s[:2] for s in seen] == [(0, 1), (0, 2)]
    assert len(runs.read_metrics(tmp_path / "run" / "fold0")) == 2  # saved before the hook ran


def test_freeze_keeps_the_first_layer_groups_weights_and_batchnorm_statistics(tiny_root, tmp_path):
    f = fold_of(tiny_root, tmp_path, "model.freeze=2")
    groups = layer_groups(f.model)
    frozen_prefixes = tuple(m + "." for g in (0, 1) for m in groups[g])
    state = {n: t.clone() for n, t in f.model.state_dict().items()}
    trained = {id(p) for g in f.optimizer.param_groups for p in g["params"]}
    train_one_epoch(f, 0)
    after = f.model.state_dict()
    frozen = [n for n in state if n.startswith(frozen_prefixes) and not n.endswith("num_batches_tracked")]
    assert any("running_mean" in n for n in frozen)  # the stem's batch norm is among them
    assert all(torch.equal(state[n], after[n]) for n in frozen)  # weights and running statistics alike
    moved = [n for n in state if not n.startswith(frozen_prefixes) and not torch.equal(state[n], after[n])]
    assert any(n.startswith("layer2.") for n in moved) and any(n.startswith("fc.") for n in moved)
    named = dict(f.model.named_parameters())
    assert not any(id(named[n]) in trained for n in frozen if n in named)  # the optimizer does not hold them


def test_layer_decay_scales_each_groups_lr_down_from_the_head(tiny_root, tmp_path):
    f = fold_of(tiny_root, tmp_path, "optim.layer_decay=0.5", "optim.weight_decay=0")
    lr_of = {}
    for g in f.optimizer.param_groups:
        for p in g["params"]:
            lr_of[id(p)] = g["lr"]
    named = dict(f.model.named_parameters())
    head, stem = lr_of[id(named["fc.weight"])], lr_of[id(named["conv1.0.weight"])]
    n = len(layer_groups(f.model))  # stem, 4 stages, classifier
    assert head > 0 and stem == pytest.approx(head * 0.5 ** (n - 1))
    assert lr_of[id(named["layer4.0.conv1.weight"])] == pytest.approx(head * 0.5)
