"""`comp estimate`: the leaderboard macro F1 of a CSV before a submission slot is spent on it.

Method
------
The eval labels are unknown; every leaderboard score we hold is evidence about them. We build a posterior
q_i(c) over the true class of each eval image i as a product of evidence terms (Dawid–Skene style: the
sources are taken as independent given the true class), starting from the class prior π (train shares):

    log q_i(c) = log π(c) + Σ_s E_s(i, c; θ_s) + const

Each source s contributes one term with one parameter θ_s:
- a reference with probabilities:  E = θ · log(p_i(c) / π(c))       (a tempered likelihood ratio)
- a reference with answers only:   E = θ · #heads of c equal to the answer's (mask, gender, age)
                                   (errors mostly sit in one head, so near classes keep some mass)
- NEW itself, in the same form. A CSV cannot vouch for itself, but leaving it out is worse: a posterior
  built from the references alone makes every answer where NEW leaves them look wrong (measured on
  simulated leaderboards: 0.13–0.23 too low). Taking NEW exactly as sure as the references is the other
  extreme: where they disagree the draw is even, and weaker NEWs come out as good as the references (on
  real utkmask CSVs, 0.11 too high with one reference and answers only). How much of NEW's disagreement is
  right is what nothing measures, so it is integrated over: NEW's θ is the references' mean anchored θ
  times a ratio r, and the draws below are pooled over r uniform on (0, 1) — from "no evidence" to "as sure
  as the references", which are the best scored submissions.
  When NEW and every reference have a labelled twin — what their models predicted on held-out train images
  (validation / out-of-fold files of the runs their JSON names, blended the way the CSV was; same
  distribution as eval) — NEW's θ is measured instead: the pool π·exp(Σ θ_j·data_j) of NEW and the
  references is fitted to the true labels on the images all of them held out (maximum likelihood, jointly,
  so that sources which err together share one weight and NEW earns weight only where it is right and the
  references are not), and NEW keeps its fitted θ, one per bootstrap resample of those images' people (a
  person's photos are right or wrong together). Twins on different images only give each model's own
  temperature; their ratio then scales r's range. A twin on under MIN_TWIN_IMAGES labelled images counts as none.

Anchoring: for each r (or measured θ), each reference's θ is solved (bisection, a few Gauss–Seidel rounds, NEW's θ
following) so that its expected macro F1 under q — per-class expected TP/FP/FN — equals its known public F1.

Then S label vectors are drawn from q together with random public halves, and on each draw we take the
difference D_j = F1(NEW) − F1(ref_j) on that half. The estimate is Σ_j a_j (F1_known_j + D_j), with a the
minimum-variance combination of the references (a = C⁻¹1 / 1ᵀC⁻¹1, C the covariance of the D_j): a
reference close to NEW has a small-variance difference and dominates, NEW == ref_j returns F1_known_j
exactly, and another reference can only lower the variance. The 90 % interval and P(NEW beats the best
reference) come from the same draws, so they include the unknown public split. Accuracy likewise.

Assumptions: eval images are exchangeable with train images (same class shares), the public half is a
random half, sources err independently given the true class (models of one family err together, which
makes q too sure where they agree; anchoring on the known scores absorbs part of it), and NEW is at most
as reliable as the references unless its runs' held-out predictions say otherwise. A twin is of the best
checkpoints without TTA: a CSV predicted with TTA is taken as reliable as its model without it. Measured on real
CSVs, the leaderboard played: benchmarks/estimator.py.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np

from .data import labels as L
from .errors import CompError
from .loocache import LooCache, digest
from .selfcal import combine
from .submission import Submission, Twin, check_same_ids, common_images, read_submission, twin_of

N = L.N_CLASSES
_HEAD_MATCH = sum((L.decode_heads(np.arange(N))[h][:, None] == L.decode_heads(np.arange(N))[h][None, :]).astype(float)
                  for h in L.HEADS)  # (18, 18): heads two classes share


@dataclass
class Reference:
    sub: Submission
    f1: float  # known public macro F1
    acc: float | None = None  # known public accuracy, percent
    name: str = ""


@dataclass
class Source:
    """One evidence term: `evidence(theta)` → (N_images, 18) log-likelihood contribution."""
    kind: str  # "probs" or "answers"
    data: np.ndarray  # log(p/π) (N, 18) for probs; head-match counts (N, 18) for answers
    theta: float = 1.0

    def evidence(self, theta: float | None = None) -> np.ndarray:
        return (self.theta if theta is None else theta) * self.data


def make_source(sub_probs: np.ndarray | None, ans: np.ndarray, prior: np.ndarray) -> Source:
    if sub_probs is not None:
        return Source("probs", np.log(np.clip(sub_probs, 1e-6, 1.0)) - np.log(prior))
    return Source("answers", _HEAD_MATCH[ans])


def posterior(prior: np.ndarray, sources: list[Source], n: int) -> np.ndarray:
    logq = np.broadcast_to(np.log(prior), (n, N)).copy()
    for s in sources:
        logq += s.evidence()
    logq -= logq.max(1, keepdims=True)
    q = np.exp(logq)
    return q / q.sum(1, keepdims=True)


def expected_f1(q: np.ndarray, ans: np.ndarray) -> float:
    """Macro F1 of `ans` with expected per-class TP/FP/FN under label distribution q."""
    tp = np.bincount(ans, weights=q[np.arange(len(ans)), ans], minlength=N)
    return _macro_f1(tp, np.bincount(ans, minlength=N), q.sum(0))


def _macro_f1(tp: np.ndarray, pred: np.ndarray, true: np.ndarray) -> float:
    denom = pred + true  # = 2TP + FP + FN
    present = (pred > 0) | (true > 0.5)
    return float((2 * tp[present] / np.maximum(denom[present], 1e-12)).mean())


THETA_RANGE = {"probs": (0.0, 8.0), "answers": (-2.0, 12.0)}
UNKNOWN_RATIOS = (0.1, 0.3, 0.5, 0.7, 0.9)  # NEW's θ / the references' θ when nothing measures it: U(0, 1)
WARM_STEP = 0.01  # after the first round, a root is first looked for within this share of θ's range of the last one
MIN_TWIN_IMAGES = 100  # a twin on fewer labelled images measures nothing: a weight fitted on 3 people is noise


def _f1_gap(base: np.ndarray, src: Source, theta: float, ref: Reference, pred: np.ndarray | None = None) -> float:
    """Expected F1 of the reference under q = softmax(base + src's evidence at θ), minus its known F1.
    The hot loop of anchoring: q is never normalised in full, only its column sums (one matrix-vector
    product) and its mass on the reference's answers are needed."""
    logq = base + src.evidence(theta)
    logq -= logq.max(1, keepdims=True)
    e = np.exp(logq, out=logq)
    inv = 1.0 / e.sum(1)
    ans = ref.sub.ans
    tp = np.bincount(ans, weights=e[np.arange(len(ans)), ans] * inv, minlength=N)
    return _macro_f1(tp, np.bincount(ans, minlength=N) if pred is None else pred, inv @ e) - ref.f1


def anchor(prior: np.ndarray, refs: list[Reference], sources: list[Source], new: Source | None = None,
           new_ratio: float = 1.0, rounds: int = 4, new_theta: float | None = None) -> list[str]:
    """Solves each reference's θ so its expected F1 under q matches its known F1. NEW's θ, when NEW is a
    source, follows the references' mean θ times `new_ratio`, or stays at `new_theta` (measured on labelled
    images). Returns warnings."""
    from scipy.optimize import brentq

    n = len(refs[0].sub)
    preds = [np.bincount(ref.sub.ans, minlength=N) for ref in refs]
    clamped: dict[int, float] = {}
    solved: set[int] = set()
    for _ in range(rounds):
        before = [s.theta for s in sources] + ([new.theta] if new is not None else [])
        for j, (ref, src) in enumerate(zip(refs, sources, strict=True)):
            others = [s for k, s in enumerate(sources) if k != j] + ([new] if new is not None else [])
            base = np.log(prior) + sum((s.evidence() for s in others), np.zeros((n, N)))

            def gap(t: float, base=base, src=src, ref=ref, pred=preds[j]) -> float:
                return _f1_gap(base, src, t, ref, pred)

            lo, hi = THETA_RANGE[src.kind]
            if j in solved and j not in clamped:  # later rounds move θ a little: look next to the last root first
                step = WARM_STEP * (hi - lo)
                a, b = max(lo, src.theta - step), min(hi, src.theta + step)
                if gap(a) <= 0 <= gap(b):
                    src.theta = brentq(gap, a, b, xtol=1e-6)
                    lo = hi = None
            if lo is not None:
                f_lo, f_hi = gap(lo), gap(hi)
                if f_hi < 0 or f_lo > 0:
                    src.theta = clamped[j] = hi if f_hi < 0 else lo
                else:  # θ to within 1e-6: far below what moves an F1 (Brent: ~8 evaluations where bisection took 24)
                    src.theta = brentq(gap, lo, hi, xtol=1e-6)
                    clamped.pop(j, None)
            solved.add(j)
            if new is not None:
                new.theta = new_theta if new_theta is not None else new_ratio * float(np.mean([s.theta for s in sources]))
        after = [s.theta for s in sources] + ([new.theta] if new is not None else [])
        if np.allclose(before, after, rtol=0, atol=1e-6):
            break  # a fixed point: the θs no longer move one another
    return [f"{refs[j].name}: its known F1 {refs[j].f1:.4f} is out of reach of the model (θ clamped at {t:g}); "
            "its estimate may be off" for j, t in sorted(clamped.items())]


def fit_temperature(source: Source, prior: np.ndarray, y: np.ndarray) -> float:
    """θ maximising the likelihood of true labels y under q ∝ π·exp(θ·data) (temperature scaling)."""
    return float(fit_pool([source.data], prior, y, [THETA_RANGE[source.kind]])[0])


def fit_pool(datas: list[np.ndarray], prior: np.ndarray, y: np.ndarray, bounds: list[tuple[float, float]],
             ridge: float = 1e-4) -> np.ndarray:
    """θ of each source, fitted together: maximum likelihood of the true labels y under the pool
    q ∝ π·exp(Σ_j θ_j·data_j). Unlike one temperature per source, it sees how the sources err together:
    two that make the same mistakes share one weight, and one that is right where the others are wrong
    earns its own. The small ridge on the spread of θ splits the weight of identical sources evenly."""
    from scipy.optimize import minimize

    x = np.stack(datas)  # (m, n, 18)
    rows = np.arange(len(y))
    at_y = x[:, rows, y]  # (m, n)

    def nll(theta):
        logq = np.log(prior) + np.tensordot(theta, x, 1)
        logq -= logq.max(1, keepdims=True)
        z = np.exp(logq)
        total = z.sum(1, keepdims=True)
        z /= total
        dev = theta - theta.mean()
        value = -(logq[rows, y] - np.log(total[:, 0])).mean() + ridge * (dev ** 2).sum()
        grad = (np.einsum("nc,mnc->m", z, x) - at_y.sum(1)) / len(y) + 2 * ridge * dev
        return value, grad

    x0 = np.array([min(max(1.0, lo), hi) for lo, hi in bounds]) / len(datas)
    return minimize(nll, x0, jac=True, method="L-BFGS-B", bounds=bounds).x


# ------------------------------------------------------------------------------------------ sampling
def sample_labels(q: np.ndarray, s: int, rng: np.random.Generator, chunk: int = 200) -> np.ndarray:
    """(s, N_images) label draws from the per-image distributions q."""
    cum = np.cumsum(q, 1)
    cum[:, -1] = 1.0
    out = np.empty((s, len(q)), np.int8)
    for a in range(0, s, chunk):
        u = rng.random((min(chunk, s - a), len(q), 1))
        out[a:a + chunk] = (u > cum[None]).sum(2)
    return out


def f1_batch(y: np.ndarray, ans: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Macro F1 of `ans` against each row of y (s, n), on the images where mask (s, n) is True."""
    s = len(y)
    idx = (np.arange(s)[:, None] * N * N + y.astype(np.int64) * N + ans[None, :])[mask]
    cm = np.bincount(idx, minlength=s * N * N).reshape(s, N, N)
    tp = np.diagonal(cm, axis1=1, axis2=2).astype(float)
    denom = cm.sum(1) + cm.sum(2)
    present = denom > 0
    f1 = np.where(present, 2 * tp / np.maximum(denom, 1), 0.0)
    return f1.sum(1) / np.maximum(present.sum(1), 1)


def acc_batch(y: np.ndarray, ans: np.ndarray, mask: np.ndarray) -> np.ndarray:
    return 100.0 * ((y == ans[None, :]) & mask).sum(1) / np.maximum(mask.sum(1), 1)


# ------------------------------------------------------------------------------------------- results
@dataclass
class Agreement:
    name: str
    overall: float
    heads: dict[str, float]


@dataclass
class Estimate:
    f1: float
    f1_interval: tuple[float, float]
    accuracy: float | None  # None when no reference's accuracy is known: nothing anchors it
    accuracy_interval: tuple[float, float] | None
    p_better: float
    best_ref: str
    best_ref_f1: float
    agreement: list[Agreement] = field(default_factory=list)
    class_changes: list[dict] = field(default_factory=list)  # vs the best reference, most changed first
    evidence: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    raw_f1: float | None = None  # before the ledger's self-calibration (None: none applied)
    self_check: str | None = None  # the ledger's leave-one-out line: how far to trust this estimate
    measured_by: str = "CSVs alone"  # what measured NEW: "same-image twins", "twins, other images", "identical to REF"
    settings: list | None = field(default=None, repr=False)  # keep_luck: each setting's (F1 draws, Luck | None)

    def as_json(self) -> dict:
        r = lambda x: round(float(x), 4)  # noqa: E731
        return {"f1": r(self.f1), "f1_interval": [r(v) for v in self.f1_interval],
                "accuracy": None if self.accuracy is None else r(self.accuracy),
                "accuracy_interval": None if self.accuracy_interval is None else [r(v) for v in self.accuracy_interval],
                "p_better": r(self.p_better), "raw_f1": None if self.raw_f1 is None else r(self.raw_f1),
                "self_check": self.self_check}


def _agreement(new: Submission, ref: Reference) -> Agreement:
    a, b = L.decode_heads(new.ans), L.decode_heads(ref.sub.ans)
    return Agreement(ref.name, float((new.ans == ref.sub.ans).mean()), {h: float((a[h] == b[h]).mean()) for h in L.HEADS})


def _class_changes(new: Submission, ref: Submission) -> list[dict]:
    names = L.class_names()
    nc, rc = np.bincount(new.ans, minlength=N), np.bincount(ref.ans, minlength=N)
    diff = new.ans != ref.ans
    involved = np.bincount(new.ans[diff], minlength=N) + np.bincount(ref.ans[diff], minlength=N)
    order = np.argsort(-involved, kind="stable")
    return [{"class": names[c], "ref": int(rc[c]), "new": int(nc[c]), "rows_changed": int(involved[c])}
            for c in order if involved[c] > 0]


Calibration = Twin  # the estimator's name for a labelled twin


@dataclass
class Draws:
    f1: np.ndarray  # NEW's public F1 per draw
    acc: np.ndarray | None  # NEW's public accuracy per draw (None: no reference accuracy known)
    weights: np.ndarray  # the references' weights in the combination
    luck_new: np.ndarray | None  # NEW's public F1 minus its F1 on all images, per draw (None: not asked)
    luck_refs: np.ndarray | None  # (draws, refs): the same for each reference


def _draws(q: np.ndarray, new: Submission, refs: list[Reference], same: list[int], samples: int,
           rng: np.random.Generator, luck: bool = False) -> Draws:
    """Draws of NEW's public F1 and accuracy: labels from q and a random public half per draw, NEW's score
    as the known score of the references plus its difference to them, combined with minimum variance."""
    n = len(new)
    y = sample_labels(q, samples, rng)
    public = rng.random((samples, n)) < 0.5
    f1_new = f1_batch(y, new.ans, public)
    f1_refs = np.stack([f1_batch(y, r.sub.ans, public) for r in refs], 1)
    d = f1_new[:, None] - f1_refs
    a = np.eye(len(refs))[same[0]] if same else combine(d)
    f1_draws = np.array([r.f1 for r in refs]) @ a + d @ a
    luck_new = luck_refs = None
    if luck:  # only the winner's-curse correction needs it: two more F1 passes per reference
        everywhere = np.ones_like(public)
        luck_new = f1_new - f1_batch(y, new.ans, everywhere)
        luck_refs = f1_refs - np.stack([f1_batch(y, r.sub.ans, everywhere) for r in refs], 1)
    acc_new = acc_batch(y, new.ans, public)
    known_acc = [j for j, r in enumerate(refs) if r.acc is not None]
    if not known_acc:
        return Draws(f1_draws, None, a, luck_new, luck_refs)
    da = np.stack([acc_new - acc_batch(y, refs[j].sub.ans, public) for j in known_acc], 1)
    sub_same = [k for k, j in enumerate(known_acc) if j in same]
    b = np.eye(len(known_acc))[sub_same[0]] if sub_same else combine(da)
    return Draws(f1_draws, np.array([refs[j].acc for j in known_acc]) @ b + da @ b, a, luck_new, luck_refs)


def curse_applies(chosen_from: list[float] | None) -> bool:
    """The winner's-curse correction needs the scores of at least 3 submissions the references were chosen from."""
    return len(chosen_from or []) >= 3


class Luck(NamedTuple):
    """What the winner's-curse correction reads of one setting's draws, per reference: its weight in the
    combination, the variance σ² of its public-half luck, and NEW's share β of that luck (clipped to [0, 1]).
    Kept with a leave-one-out estimate (comp.loocache, which stores it as the tuple of arrays it is), it lets
    the correction be made again for a ledger whose scores have changed, without the draws being made again."""
    weights: np.ndarray
    sigma2: np.ndarray
    beta: np.ndarray


def luck_of(draws: Draws) -> Luck:
    sigma2, beta = np.zeros(draws.luck_refs.shape[1]), np.zeros(draws.luck_refs.shape[1])
    for j in range(len(sigma2)):
        luck = draws.luck_refs[:, j]
        sigma2[j] = float(luck.var())
        if sigma2[j] > 0:
            beta[j] = min(max(float(np.cov(draws.luck_new, luck)[0, 1] / sigma2[j]), 0.0), 1.0)
    return Luck(np.asarray(draws.weights, float), sigma2, beta)


def winners_curse(luck: Luck, refs: list[Reference], chosen_from: list[float]) -> tuple[float, str | None]:
    """How much lower NEW's public F1 is expected than the draws say because the references were picked for
    their public scores. A reference chosen as the best of m scored submissions holds, on average, some
    public-half luck L (empirical Bayes: L = σ²/(σ²+τ²)·(its score − the mean score), σ² the public-half
    noise of a score, τ² the spread of the submissions' true scores). NEW shares a part β of that luck (the
    regression of its luck on the reference's across draws: a near copy shares nearly all, a different
    CSV little), so its expected public F1 is lower by (1 − β)·L per unit of the reference's weight."""
    if not curse_applies(chosen_from):
        return 0.0, None
    scores = np.asarray(chosen_from, float)
    total, parts = 0.0, []
    mean, spread = scores.mean(), scores.var(ddof=1)
    for j, r in enumerate(refs):
        sigma2 = float(luck.sigma2[j])
        if sigma2 <= 0 or r.f1 <= mean:
            continue
        tau2 = max(spread - sigma2, sigma2 / 4)  # never shrink a clear lead all the way to the mean
        expected_luck = sigma2 / (sigma2 + tau2) * (r.f1 - mean)
        total += luck.weights[j] * (1 - luck.beta[j]) * expected_luck
        parts.append(f"{r.name} ({expected_luck:+.4f} luck, NEW shares {luck.beta[j]:.0%})")
    if not parts:
        return 0.0, None
    return total, (f"winner's curse: references picked as the best of {len(scores)} scored submissions carry public-"
                   f"half luck: {'; '.join(parts)}; NEW's estimate lowered by {total:.4f}")


def cursed_draws(settings: list[tuple[np.ndarray, Luck | None]], refs: list[Reference],
                 chosen_from: list[float] | None) -> tuple[np.ndarray, float, str | None]:
    """NEW's F1 draws of every setting (ratio or measured θ), each lowered by its own winner's curse where it has
    the luck to compute it (None: NEW is a reference, no curse): all draws, the mean shift, the last reason."""
    parts, shifts, why = [], [], None
    for f1, luck in settings:
        shift, reason = winners_curse(luck, refs, chosen_from) if luck is not None else (0.0, None)
        parts.append(f1 - shift)
        shifts.append(shift)
        why = reason or why
    return np.concatenate(parts), float(np.mean(shifts)), why


def centre_and_interval(f1_draws: np.ndarray) -> tuple[float, tuple[float, float]]:
    return float(f1_draws.mean()), tuple(np.quantile(f1_draws, [0.05, 0.95]).tolist())


def estimate(new: Submission, refs: list[Reference], prior: np.ndarray | None = None,
             calibration: Calibration | None = None, samples: int = 2000, seed: int = 0,
             ref_calibrations: list[Calibration | None] | None = None,
             chosen_from: list[float] | None = None, keep_luck: bool = False) -> Estimate:
    """NEW's public F1 and accuracy from the references' known scores. `chosen_from`: the public F1 of every
    scored submission the references were picked from (the ledger), for the winner's-curse correction.
    `keep_luck`: the draws and their luck kept in `Estimate.settings` even where no curse applies yet, so
    that it can be applied later for another ledger (cursed_draws; comp.loocache)."""
    if not refs:
        raise CompError("no reference: give --ref REF.csv --ref-f1 F, or add scored submissions with "
                        "`comp submissions add`")
    check_same_ids([new] + [r.sub for r in refs])
    refs = [Reference(r.sub.reorder(new.ids), r.f1, r.acc, r.name or r.sub.path.name) for r in refs]
    n = len(new)
    evidence, guessed_prior = [], []
    if prior is None:
        prior = np.mean([np.bincount(r.sub.ans, minlength=N) for r in refs], 0) / n
        evidence.append("class prior: the references' predicted shares (no train data found)")
        guessed_prior.append("no train set found (no --data, no comp JSON naming one, no dataset in data/ listing "
                             "these ImageIDs): the class prior is the references' predicted shares, which a weak "
                             "reference skews (benchmarks/estimator.py --prior refs, foreign pools II and III, one "
                             "reference: MAE 0.066 and 0.028 against 0.037 and 0.025 with the train shares). Pass "
                             "--data ROOT")
    prior = np.maximum(np.asarray(prior, float), 1e-4)
    prior /= prior.sum()
    # One kind of evidence for all (probabilities when NEW and every reference have them, else answers): a
    # ratio of θs compares like with like. A θ measured on held-out twins needs no such care, so there each
    # source gives what it has.
    use_probs = new.probs is not None and all(r.sub.probs is not None for r in refs)
    kinds = [use_probs] * (len(refs) + 1)  # NEW first
    # NEW is a source as sure as the references are on average (their anchored θ) times a ratio: fitted on
    # held-out predictions of NEW's model and theirs when there are some, else unknown and integrated over
    # (see the module docstring).
    measured = 1.0
    joint = None
    measured_by = "CSVs alone"
    calibration, ref_calibrations = _enough_images(calibration, ref_calibrations, new, refs, evidence)
    if calibration is not None and ref_calibrations and all(c is not None for c in ref_calibrations):
        own = [s.probs is not None for s in [new] + [r.sub for r in refs]]
        joint = measured_weight(calibration, ref_calibrations, prior, own, seed=seed)
        if joint is not None:
            kinds, measured_by = own, "same-image twins"
            evidence.append(f"held-out predictions of NEW's and the references' models on the same labelled images "
                            f"({calibration.note}), fitted together: NEW's weight θ = {joint[0]:.2f} "
                            f"(bootstrap {joint.min():.2f}–{joint.max():.2f})")
        else:
            t_new = fit_temperature(make_source(calibration.probs if use_probs else None, calibration.ans, prior),
                                    prior, calibration.y)
            t_refs = [fit_temperature(make_source(c.probs if use_probs else None, c.ans, prior), prior, c.y)
                      for c in ref_calibrations]
            measured, measured_by = t_new / max(float(np.mean(t_refs)), 1e-6), "twins, other images"
            evidence.append(f"held-out predictions of NEW's and the references' models (not on the same images): "
                            f"NEW {measured:.2f}x as sure as the references ({calibration.note})")
    for r, probs in zip(refs, kinds[1:], strict=True):
        evidence.append(f"reference {r.name}: public F1 {r.f1:.4f}, {'probabilities' if probs else 'answers'}")
    if joint is not None:
        settings = [(1.0, float(t)) for t in joint]
    else:
        settings = [(measured * r, None) for r in UNKNOWN_RATIOS]
        evidence.append(f"averaged over NEW taken {settings[0][0]:.2g}–{settings[-1][0]:.2g}x as sure as the "
                        "references (how much of NEW's disagreement with them is right is not measured by anything)")
    rng = np.random.default_rng(seed)
    same = [j for j, r in enumerate(refs) if np.array_equal(r.sub.ans, new.ans)]
    if same:
        measured_by = f"identical to {refs[same[0]].name}"
    per = -(-samples // len(settings))
    kept, acc_parts, warnings = [], [], []
    lucky = not same and (keep_luck or curse_applies(chosen_from))
    for r, theta in settings:
        sources = [make_source(x.sub.probs if k else None, x.sub.ans, prior) for x, k in zip(refs, kinds[1:], strict=True)]
        new_src = make_source(new.probs if kinds[0] else None, new.ans, prior)
        warnings = anchor(prior, refs, sources, new_src, r, new_theta=theta)
        draws = _draws(posterior(prior, sources + [new_src], n), new, refs, same, per, rng, luck=lucky)
        kept.append((draws.f1, luck_of(draws) if lucky else None))
        acc_parts.append(draws.acc)
    f1_draws, curse, curse_why = cursed_draws(kept, refs, chosen_from)
    if curse_why:
        evidence.append(curse_why.rsplit(";", 1)[0] + f"; NEW's estimate lowered by {curse:.4f}")
    acc_draws = None if acc_parts[0] is None else np.concatenate(acc_parts)
    best = int(np.argmax([r.f1 for r in refs]))
    f1, f1_interval = centre_and_interval(f1_draws)
    return Estimate(
        f1=f1, f1_interval=f1_interval,
        accuracy=None if acc_draws is None else float(acc_draws.mean()),
        accuracy_interval=None if acc_draws is None else tuple(np.quantile(acc_draws, [0.05, 0.95]).tolist()),
        p_better=float((f1_draws > refs[best].f1 + 1e-12).mean()), best_ref=refs[best].name,
        best_ref_f1=refs[best].f1, agreement=[_agreement(new, r) for r in refs],
        class_changes=_class_changes(new, refs[best].sub), evidence=evidence, warnings=guessed_prior + warnings,
        measured_by=measured_by, settings=kept if keep_luck else None)


def _enough_images(calibration: Calibration | None, ref_calibrations: list[Calibration | None] | None,
                   new: Submission, refs: list[Reference], evidence: list[str]):
    """The twins with MIN_TWIN_IMAGES labelled images or more; a smaller one (a blend of runs that held out
    different people meets on a handful of them) counts as none, and the evidence says so."""
    names = [new.path.name] + [r.name for r in refs]
    twins = [calibration] + list(ref_calibrations or [None] * len(refs))
    small = [f"{n} ({len(t.y)})" for n, t in zip(names, twins, strict=True) if t is not None and len(t.y) < MIN_TWIN_IMAGES]
    if not small:
        return calibration, ref_calibrations
    evidence.append(f"held-out predictions on too few labelled images to measure anything, not used: {', '.join(small)}"
                    f" (under {MIN_TWIN_IMAGES})")
    twins = [t if t is None or len(t.y) >= MIN_TWIN_IMAGES else None for t in twins]
    return twins[0], twins[1:] if ref_calibrations is not None else None


# ------------------------------------------------------------------------- evidence from the project
def train_prior(data_root: Path | str | None) -> np.ndarray | None:
    """Class shares of the train set under `data_root`, or None when it cannot be read."""
    from .data.reader import load_train

    if not data_root or not (Path(data_root) / "train" / "train.csv").is_file():
        return None
    try:
        y = load_train(data_root)["label"].to_numpy()
    except CompError:
        return None
    return np.bincount(y, minlength=N) / len(y)


def class_prior(data: Path | str | None, subs: list[Submission]) -> tuple[np.ndarray | None, str]:
    """The train set's class shares and where they came from: --data, else the dataset a submission's JSON
    names (if it is on this machine), else the one in data/ whose eval set these submissions list. None: no
    train set found, and estimate() falls back on the references' predicted shares (and warns)."""
    from .data.reader import find_root

    if data is not None:
        prior = train_prior(data)
        if prior is None:
            raise CompError(f"--data {data}: no readable train/train.csv there; --data is the dataset root "
                            "(train/ and eval/) whose train set gives the class shares")
        return prior, f"class prior: train shares of {data}"
    for root in dict.fromkeys(s.prov.data for s in subs if s.prov.data):
        prior = train_prior(root)
        if prior is not None:
            return prior, f"class prior: train shares of {root}"
    root = find_root(subs[0].ids)
    prior = train_prior(root)
    if prior is not None:
        return prior, f"class prior: train shares of {root} (found in data/: its eval/info.csv lists these ImageIDs)"
    return None, ""


def calibration_for(sub: Submission) -> Calibration | None:
    """The labelled twin of a CSV, built by the code that made it (see comp.submission.TWINS): `comp
    predict` with the best checkpoints, `comp ensemble --fit`, and `comp ensemble` blends of those."""
    if sub.prov.kind == "external":
        return None  # a CSV from elsewhere: no run files, and no reason to import the producers (torch, timm: ~10 s)
    from . import ensemble, predict  # noqa: F401  (importing them registers their twins)

    return twin_of(sub.prov, sub.probs is not None)


def people_of(images: np.ndarray) -> np.ndarray:
    """The person of each train image key (`<person folder>/<shot file>`): the unit a resample must draw,
    as one person's photos share their gender and age and are right or wrong together."""
    return np.array([str(i).rsplit("/", 1)[0] for i in images], dtype=object)


def measured_weight(new: Calibration, refs: list[Calibration], prior: np.ndarray, use_probs: list[bool],
                    boots: int = 5, min_images: int = MIN_TWIN_IMAGES, seed: int = 0) -> np.ndarray | None:
    """NEW's weight θ in the pool with the references, fitted jointly (fit_pool) on the labelled images that
    NEW's and every reference's models held out: how much NEW's disagreements with the references are right,
    measured. `use_probs`: per twin (NEW first), probabilities or answers. One θ per bootstrap resample of the
    people (the fit's uncertainty; resampling images would treat a person's 7 photos as 7 witnesses and
    understate it 2-3x). None when the held-out images do not overlap enough."""
    common = common_images([new.images] + [c.images for c in refs])
    if len(common) < min_images:
        return None
    cals = [c.subset(common) for c in [new] + refs]
    if any(not np.array_equal(c.y, cals[0].y) for c in cals):
        return None  # same images, different labels: other age bins or relabels; not comparable
    datas = [make_source(c.probs if p else None, c.ans, prior).data for c, p in zip(cals, use_probs, strict=True)]
    bounds = [(0.0, THETA_RANGE["probs" if p else "answers"][1]) for p in use_probs]
    rng = np.random.default_rng(seed)
    _, person = np.unique(people_of(common), return_inverse=True)
    photos = np.split(np.argsort(person, kind="stable"), np.cumsum(np.bincount(person))[:-1])
    thetas = []
    for b in range(boots):
        idx = np.arange(len(common)) if b == 0 else np.concatenate(
            [photos[k] for k in rng.integers(0, len(photos), len(photos))])
        thetas.append(fit_pool([d[idx] for d in datas], prior, cals[0].y[idx], bounds)[0])
    return np.array(thetas)


def load_references(ref_paths: list[Path], ref_f1: list[float], ref_acc: list[float] | None,
                    ledger_dir: Path | None) -> list[Reference]:
    """--ref/--ref-f1/--ref-acc triples; --ref alone: each reference's scores from the ledger (the entry with
    the same content); neither: every scored submission of the ledger."""
    folder = ledger_dir or Path("submissions")
    if ref_paths and not ref_f1:
        return [ledger_reference(p, folder) for p in ref_paths]
    if ref_paths:
        if len(ref_f1) != len(ref_paths):
            raise CompError(f"{len(ref_paths)} --ref but {len(ref_f1)} --ref-f1: give one score per reference, or "
                            "none to take them from the ledger")
        if ref_acc and len(ref_acc) != len(ref_paths):
            raise CompError("--ref-acc: give one per --ref, or none")
        accs = ref_acc or [None] * len(ref_paths)
        return [Reference(read_submission(p), f, a, Path(p).name) for p, f, a in zip(ref_paths, ref_f1, accs, strict=True)]
    refs = ledger_references(folder)
    if not refs:
        raise CompError(f"{folder}/ledger.csv has no scored submission; give --ref REF.csv --ref-f1 F")
    return refs


def ledger_reference(path: Path | str, folder: Path) -> Reference:
    """A --ref given without its score: the ledger entry with the same bytes (a copy elsewhere counts)."""
    from .fileio import sha256_file
    from .ledger import read_ledger

    sub = read_submission(path)
    digest = sha256_file(Path(path))
    entry = next((e for e in read_ledger(folder) if e.sha256 == digest), None)
    if entry is None:
        raise CompError(f"{path}: no score for this reference: no entry of {folder}/ledger.csv has its content; give "
                        f"--ref-f1 F (its public F1), or score it into the ledger with `comp submissions add {path} "
                        "--public-f1 F`")
    return Reference(sub, entry.public_f1, entry.public_acc, entry.name)


def ledger_references(folder: Path) -> list[Reference]:
    """Every scored submission of the ledger in `folder` (none when there is no ledger)."""
    from .ledger import read_ledger

    return [Reference(read_submission(e.path(folder)), e.public_f1, e.public_acc, e.name) for e in read_ledger(folder)]


MAX_REFS = 5  # the best this many references: more hardly narrow the estimate, and each costs an anchoring
LOO_SAMPLES = 400  # label draws per leave-one-out estimate (its centre is what counts)


def estimate_file(new_path: Path | str, ref_paths: list[Path] | None = None, ref_f1: list[float] | None = None,
                  ref_acc: list[float] | None = None, ledger_dir: Path | None = None, data: Path | None = None,
                  samples: int = 2000, seed: int = 0, self_check: bool = True, progress=None) -> Estimate:
    """`comp estimate`: NEW against --ref triples or the ledger's best MAX_REFS submissions, then, when the
    ledger (`ledger_dir`, default submissions/) holds >= 3 scored submissions, corrected and widened by how
    the same estimate did on each of them from the others (comp.selfcal)."""
    return estimate_files([new_path], ref_paths, ref_f1, ref_acc, ledger_dir, data, samples, seed, self_check, progress)[0]


def estimate_files(new_paths: list[Path | str], ref_paths: list[Path] | None = None, ref_f1: list[float] | None = None,
                   ref_acc: list[float] | None = None, ledger_dir: Path | None = None, data: Path | None = None,
                   samples: int = 2000, seed: int = 0, self_check: bool = True, progress=None) -> list[Estimate]:
    """estimate_file of several candidates against the same references and ledger, in their order. The
    ledger's self-check is the same for all of them, so its leave-one-out runs once (and `progress` reports
    that one pass): ranking ten candidates costs little more than estimating one. Its estimates are kept in
    the ledger's folder for the next call (comp.loocache)."""
    news = [read_submission(p) for p in new_paths]
    refs = load_references(list(ref_paths or []), list(ref_f1 or []), ref_acc, ledger_dir)
    ledger = ledger_references(ledger_dir or Path("submissions"))
    news, refs, ledger, _ = in_row_order(news, refs, ledger)  # once for the call: the copies outlive the caches below
    prior, prior_note = class_prior(data, news + [r.sub for r in refs + ledger])
    memo, twins, passed = {}, {}, []
    folder = Path(ledger_dir or "submissions")
    cache = LooCache(folder) if self_check and len(ledger) >= 3 and folder.is_dir() else None

    def first_pass(done: int, total: int) -> None:
        if progress is not None and not passed:
            progress(done, total)
        if done == total:
            passed.append(True)

    ests = [estimate_with_ledger(new, refs, ledger, prior, samples, seed, self_check, first_pass, memo=memo, twins=twins,
                                 prior_note=prior_note, cache=cache) for new in news]
    if cache is not None:
        cache.save()
    return ests


def in_row_order(news: list[Submission], refs: list[Reference], ledger: list[Reference]
                 ) -> tuple[list[Submission], list[Reference], list[Reference], bool]:
    """The NEWs, the references and the ledger with their rows in one ImageID order, the ledger's (else the first
    reference's), and whether any had to be copied for it (the same objects where they already are). The
    self-check's correction and the formula compare submissions row by row, and a leaderboard reads a CSV by
    ImageID, not by position: a sorted or shuffled CSV is the same submission and gets the same estimate."""
    if not (ledger or refs):
        return news, refs, ledger, False
    order = (ledger or refs)[0].sub
    copies: dict[int, Submission] = {}  # one copy per submission: a ledger entry that is also a reference stays one
    moved: list[Submission] = []

    def place(sub: Submission) -> Submission:
        if id(sub) not in copies:
            if np.array_equal(sub.ids, order.ids):
                copies[id(sub)] = sub
            else:
                check_same_ids([sub, order])
                copies[id(sub)] = sub.reorder(order.ids)
                moved.append(sub)
        return copies[id(sub)]

    def placed(group: list[Reference]) -> list[Reference]:
        return [r if place(r.sub) is r.sub else Reference(place(r.sub), r.f1, r.acc, r.name) for r in group]

    return [place(s) for s in news], placed(refs), placed(ledger), bool(moved)


def estimate_with_ledger(new: Submission, refs: list[Reference], ledger: list[Reference], prior: np.ndarray | None,
                         samples: int = 2000, seed: int = 0, self_check: bool = True, progress=None,
                         memo: dict | None = None, twins: dict | None = None, prior_note: str = "",
                         cache: LooCache | None = None) -> Estimate:
    """The estimate from the best MAX_REFS of `refs`, with the winner's curse of having picked them from
    `ledger`, and the ledger's leave-one-out self-check (>= 3 scored submissions). `memo` keeps leave-one-out
    estimates by (submission, references) across calls (the benchmark's many NEWs on one ledger); `cache`
    keeps them on disk by content, across runs of `comp estimate` (comp.loocache)."""
    from .selfcal import agreement, choose_reference_count, formula

    refs = sorted(refs, key=lambda r: -r.f1)[:MAX_REFS]
    # One row order for all (see in_row_order). Copies made here live for this call only: the callers' caches
    # are keyed by object identity, and a freed copy's identity can be another object's later, so they sit out.
    (new,), refs, ledger, copied = in_row_order([new], refs, ledger)
    if copied:
        memo, twins, cache = None, None, None
    exact = any(np.array_equal(r.sub.ans, new.ans) for r in refs)
    scored = None if exact else next((r for r in ledger if np.array_equal(r.sub.ans, new.ans)), None)
    if scored is not None:  # already scored, but not among the best: its score is known, not estimated
        refs, exact = sorted(refs[:MAX_REFS - 1] + [scored], key=lambda r: -r.f1), True
    twins = {} if twins is None else twins

    def twin(sub: Submission) -> Calibration | None:
        if id(sub) not in twins:
            twins[id(sub)] = calibration_for(sub)
        return twins[id(sub)]

    def run(new_sub: Submission, use: list[Reference], pool: list[Reference], draws: int, keep_luck: bool = False) -> Estimate:
        return estimate(new_sub, use, prior, twin(new_sub), draws, seed, ref_calibrations=[twin(r.sub) for r in use],
                        chosen_from=[r.f1 for r in pool], keep_luck=keep_luck)

    def content(r: Reference) -> tuple:  # what a leave-one-out estimate reads of a submission (comp.loocache)
        if id(r.sub) not in cache.contents:
            t = twin(r.sub)
            cache.contents[id(r.sub)] = digest(r.sub.ans, "none" if r.sub.probs is None else r.sub.probs,
                                             *(("none",) if t is None else (t.probs if t.probs is not None else "none",
                                                                            t.ans, t.y, t.images)))
        return cache.contents[id(r.sub)], r.f1, r.acc

    def loo_run(n: Reference, use: list[Reference]) -> Estimate:
        key = (id(n.sub), tuple(id(r.sub) for r in use))
        if memo is not None and key in memo:
            return memo[key]
        pool = [r for r in ledger if r is not n]
        stored = cache.key(content(n), [content(r) for r in use], prior, seed, LOO_SAMPLES) if cache is not None else None
        hit = cache.get(stored) if cache is not None else None
        if hit is not None:  # its draws, cursed for the ledger as it is now; only the centre and interval are read
            kept = [(f1, None if luck is None else Luck(*luck)) for f1, luck in hit]
            f1, interval = centre_and_interval(cursed_draws(kept, use, [r.f1 for r in pool])[0])
            e = Estimate(f1, interval, None, None, float("nan"), use[0].name, use[0].f1)
        else:
            e = run(n.sub, use, pool, LOO_SAMPLES, keep_luck=cache is not None)
            if cache is not None:
                cache.put(stored, e.settings)
        if memo is not None:
            memo[key] = e
        return e

    checked = self_check and len(ledger) >= 3 and not exact
    why = why_cached = None
    if checked:
        for r in ledger:  # each twin and fingerprint made once, here, before the leave-one-out's threads ask for it
            twin(r.sub)
            if cache is not None:
                content(r)
        hits = cache.hits if cache is not None else 0
        cal, n_use, why = choose_reference_count(ledger, len(refs), loo_run, progress)
        if cache is not None and cache.hits > hits:
            why_cached = (f"self-check: {cache.hits - hits} leave-one-out estimates reused from {cache.path} (their "
                          "submissions and references unchanged since they were made; the winner's curse made again "
                          "for the ledger's scores now)")
        refs = refs[:n_use]
    est = run(new, refs, ledger if len(ledger) >= 3 else [], samples)
    if prior is not None and prior_note:
        est.evidence.insert(0, prior_note)
    if why:
        est.evidence.append(why)
    if why_cached:
        est.evidence.append(why_cached)
    if checked:
        raw = est.f1
        est = cal.apply(est, 1 - agreement(new.ans, refs[0].sub.ans), formula(new.ans, ledger))
        est.raw_f1, est.self_check = raw, cal.line()
    elif self_check and not exact:
        est.evidence.append(f"no self-check: the ledger holds {len(ledger)} scored submissions (3 needed to "
                            "measure how the estimate does on them)")
    if not checked and not exact and est.measured_by == "CSVs alone":
        est.warnings.append("nothing measures NEW here (no held-out predictions of its runs, no self-check): the estimate "
                            "takes NEW as anything from useless to as sure as the references, and its interval is too "
                            "narrow where NEW is far better or far worse than them (benchmarks/estimator.py, simulated "
                            "pools: it held 14-88 % of such NEWs, not 90 %). Score 3 submissions into the ledger "
                            "(`comp submissions add`) or keep the run files beside the CSVs")
    return est
