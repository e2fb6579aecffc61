"""Self-calibration of `comp estimate` on the ledger: how far to trust it, measured on the team's own
scored submissions.

The 4th-place team's formula (F1_best · agreement(NEW, best) · c) works because c is fitted on their own
scored submissions. comp's estimator has the same chance: with k >= 3 scored submissions, each is estimated
from the others (leave-one-out, as many references as the real estimate uses) and its error is known. Those
k errors
- correct the bias, as a function of 1 − agreement with the best reference (the estimator errs more, and
  more one way, the further NEW is from what it knows): error ≈ a + b·(1 − agreement), a ridge fit shrunk
  towards no correction, intercept only below 5 submissions;
- widen the interval: the model's own interval holds the public-half luck; what the ledger shows beyond it
  widens it, more the further NEW is from the best reference (1 − agreement = x). From 9 scored
  submissions on, split-conformally: every half-width h becomes h + q·(x + m), m the ledger's median x and q
  the ⌈0.9·(k + 1)⌉-th smallest of its (|honest error| − h)/(x + m), so that 90 % of the ledger's own
  intervals would have held; q < 0 (the model's intervals too wide here) narrows them, to half at most.
  The scale x + m: the estimator misjudges how often NEW is right where it disagrees, an error that grows
  with how much it disagrees, but a near copy misses too (macro F1 moves more than agreement says when the
  few answers it flips sit in a small class: a vote agreeing 99 % with the best, 0.017 off on strong pool
  II), so the scale does not fall to 0 with x. Not a factor on h either: that near copy's tiny model interval
  made a scale factor that stretched every interval of that pool 2.2x. Below 9 submissions (too few for a
  90 % quantile) the excess is taken as extra variance, τ²·x, fitted by maximum likelihood on the honest
  errors, and the interval is Student's t with k − 1 degrees of freedom: a variance known from 3-8 errors
  is itself uncertain (the moment fit with a normal quantile held 73-88 % of the week replay's NEWs with
  ledgers of 3-8, this 92-96 %: benchmarks/estimator.py --protocols week);
- pit comp against the formula on the same ledger. Both are scored by honest leave-one-out errors (the
  correction for submission i is fitted without i); the final estimate blends them with the weights of
  least mean squared error (from the errors' second moments: a submission both miss alike does not decide
  between them), so where the formula does better on this team's ledger it carries the estimate. That
  weight is learned at the agreements the ledger's submissions have with their best reference. Closer
  than all of them, the formula's share falls linearly to 0 at agreement 1: there comp's estimate is the
  reference's known score by construction, while the formula's is best · c, off by however far c is from 1
  (a blend agreeing 98.9 % with the best, on a ledger agreeing 71-90 %: formula +0.088, comp +0.007);
- choose how many references to use. More references narrow the estimate when they err independently, but
  the posterior takes them as independent witnesses: a ledger holding a vote and its own inputs, or five
  seeds of one recipe, makes it too sure where they agree (foreign pool II: a vote of three CNNs estimated
  +0.080 from the best five, +0.037 from the best one). The leave-one-out is run with the best one and with
  the best n, and the estimate uses whichever did better on this ledger (`choose_reference_count`).
"""
from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.stats import norm
from scipy.stats import t as student_t

if TYPE_CHECKING:  # estimate.py calls in here; the types only
    from .estimate import Estimate, Reference

Z90 = 1.6449  # the 95th percentile of N(0, 1): a 90 % two-sided interval
PRIOR_SD = {"a": 0.02, "b": 0.10}  # how large a correction is plausible before the ledger says otherwise


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    return float((a == b).mean())


def formula(new_ans: np.ndarray, refs: list[Reference]) -> float | None:
    """The team's calculator: best · agreement(NEW, best) · c, with c = the mean over the other references of
    F1_j / (best · agreement(j, best)) (1 when there are none)."""
    if not refs:
        return None
    best = max(refs, key=lambda r: r.f1)
    ratios = [r.f1 / (best.f1 * agreement(r.sub.ans, best.sub.ans)) for r in refs
              if r is not best and agreement(r.sub.ans, best.sub.ans) > 0]
    c = float(np.mean(ratios)) if ratios else 1.0
    return best.f1 * agreement(new_ans, best.sub.ans) * c


@dataclass
class LooRow:
    name: str
    truth: float  # its known public F1
    comp: float  # comp's raw estimate from the others
    half_width: float  # half the 90 % interval of that estimate
    formula: float | None
    x: float  # 1 − agreement with the best of its references


CONFORMAL_MIN = 9  # the least k with a 90 % split-conformal quantile: ⌈0.9·(k + 1)⌉ ≤ k
HUBER_K = 1.345  # Huber's constant (95 % efficiency on normal errors), in robust standard deviations


def _ridge(x: np.ndarray, e: np.ndarray, slope: bool) -> tuple[float, float]:
    """error ≈ a + b·x, ridge-shrunk towards 0 with PRIOR_SD, and robust (Huber weights, iterated): a ledger's
    leave-one-out errors are heavy-tailed — the submission far better than every other one, left out, is
    estimated far too low from them — and one such row must not set the correction for every NEW. The noise
    variance and the Huber scale come from the errors themselves (the median absolute deviation)."""
    cols = [np.ones_like(x)] + ([x] if slope else [])
    prior = np.array([PRIOR_SD["a"]] + ([PRIOR_SD["b"]] if slope else []))
    X = np.stack(cols, 1)
    coef = np.zeros(len(cols))
    for _ in range(20):
        resid = e - X @ coef
        scale = max(1.4826 * float(np.median(np.abs(resid - np.median(resid)))), 0.005)
        w = np.minimum(1.0, HUBER_K * scale / np.maximum(np.abs(resid), 1e-12))
        noise = max(float(np.average(resid ** 2, weights=w)), 0.005 ** 2)
        new = np.linalg.solve(X.T @ (w[:, None] * X) + np.diag(noise / prior ** 2), X.T @ (w * e))
        if np.allclose(new, coef, atol=1e-6):
            break
        coef = new
    return float(coef[0]), float(coef[1]) if slope else 0.0


def _excess_variance(honest: np.ndarray, sd: np.ndarray, x: np.ndarray) -> float:
    """τ², by maximum likelihood, of honest_i ~ N(0, sd_i² + τ²·x_i): the spread of the ledger's leave-one-out
    errors beyond the model's own sd, per unit of distance x from the best reference. Each error is weighed
    by its own variance, so a wide interval that held does not cancel a narrow one that missed."""
    var0, xs = np.maximum(sd, 1e-4) ** 2, np.maximum(x, 1e-3)

    def nll(tau2: float) -> float:
        v = var0 + tau2 * xs
        return float(np.sum(np.log(v) + honest ** 2 / v))

    return float(minimize_scalar(nll, bounds=(0.0, 1.0), method="bounded").x)


def combine(d: np.ndarray, ridge: float = 1e-9, centred: bool = True) -> np.ndarray:
    """Minimum-variance weights (sum 1) for estimates whose errors have the columns of d (s, m); `centred=False`:
    minimum mean-squared-error weights, from the errors' second moments (their bias included)."""
    m = d.shape[1]
    if m == 1:
        return np.ones(1)
    c = (np.cov(d, rowvar=False) if centred else d.T @ d / len(d)) + ridge * np.eye(m)
    w = np.linalg.solve(c, np.ones(m))
    return w / w.sum()


def blend_weight(comp_err: np.ndarray, formula_err: np.ndarray, ridge: float = 1e-6) -> float:
    """comp's weight in the minimum mean-squared-error blend with the formula, from their leave-one-out errors'
    second moments (bias included), clipped to [0, 1]. Unlike inverse-MSE weights it sees that the two err
    together: a submission both miss alike (one far better than the rest) inflates both errors and says
    nothing about which to lean on; it cancels here."""
    return float(np.clip(combine(np.stack([comp_err, formula_err], 1), ridge, centred=False)[0], 0.0, 1.0))


@dataclass
class SelfCalibration:
    rows: list[LooRow]
    a: float = 0.0  # bias model: error ≈ a + b·x
    b: float = 0.0
    tau2: float = 0.0  # extra variance per unit of x (below CONFORMAL_MIN submissions)
    quantile: float = Z90  # of the interval below CONFORMAL_MIN: Student's t, k − 1 degrees of freedom
    widen: float | None = None  # split-conformal: every half-width h becomes h + widen·(x + x_median)
    x_median: float = 0.0  # (from CONFORMAL_MIN submissions on)
    mae_raw: float = 0.0  # comp's leave-one-out MAE, uncorrected
    mae_comp: float = 0.0  # corrected (each correction fitted without the submission it corrects)
    mae_formula: float | None = None
    weight_comp: float = 1.0  # in the blend with the formula
    notes: list[str] = field(default_factory=list)

    @classmethod
    def fit(cls, rows: list[LooRow]) -> SelfCalibration:
        x = np.array([r.x for r in rows])
        e = np.array([r.comp - r.truth for r in rows])
        h = np.array([r.half_width / Z90 for r in rows])  # the model's own sd
        slope = len(rows) >= 5
        a, b = _ridge(x, e, slope)
        honest = np.empty_like(e)  # each correction fitted without the row it corrects
        for i in range(len(rows)):
            keep = np.arange(len(rows)) != i
            ai, bi = _ridge(x[keep], e[keep], slope and keep.sum() >= 5)
            honest[i] = e[i] - (ai + bi * x[i])
        cal = cls(rows, a, b, _excess_variance(honest, h, x), float(student_t.ppf(0.95, len(rows) - 1)),
                  mae_raw=float(np.abs(e).mean()), mae_comp=float(np.abs(honest).mean()))
        if len(rows) >= CONFORMAL_MIN:
            cal.x_median = float(np.median(x))
            scores = np.sort((np.abs(honest) - np.array([r.half_width for r in rows])) / cal.reach(x))
            cal.widen = float(scores[int(np.ceil(0.9 * (len(rows) + 1))) - 1])
        f = [(r.formula - r.truth) for r in rows if r.formula is not None]
        if len(f) == len(rows):
            cal.mae_formula = float(np.abs(f).mean())
            cal.weight_comp = blend_weight(honest, np.array(f))
        return cal

    def reach(self, x):
        """The conformal widening's unit at 1 − agreement x: x plus the ledger's median x (see the module docstring)."""
        return np.maximum(x + self.x_median, 1e-3)

    def line(self) -> str:
        """The one line printed with every estimate: how the estimator did on this ledger."""
        k = len(self.rows)
        text = (f"leave-one-out on {k} scored submissions: comp MAE {self.mae_comp:.4f} "
                f"(uncorrected {self.mae_raw:.4f})")
        if self.mae_formula is not None:
            text += f", team formula MAE {self.mae_formula:.4f}"
            if self.mae_formula < self.mae_comp:
                text += f" — the formula did better on this ledger: the estimate leans on it ({1 - self.weight_comp:.0%})"
        return text

    def formula_share(self, x: float) -> float:
        """The formula's weight in the estimate of a NEW at 1 − agreement x with the best reference: the
        ledger's, tapering to 0 below the closest submission it was learned on (see the module docstring)."""
        if self.mae_formula is None:
            return 0.0
        nearest = min(r.x for r in self.rows)
        return (1 - self.weight_comp) * (min(1.0, x / nearest) if nearest > 0 else 1.0)

    def apply(self, est: Estimate, x: float, formula_f1: float | None) -> Estimate:
        """The estimate corrected for the ledger's bias, blended with the formula, its interval widened."""
        center = est.f1 - (self.a + self.b * x)
        if formula_f1 is not None and self.mae_formula is not None:
            share = self.formula_share(x)
            center = (1 - share) * center + share * formula_f1
        model = np.array([est.f1 - est.f1_interval[0], est.f1_interval[1] - est.f1])  # the model's own half-widths
        if self.widen is not None:
            half = np.maximum(model + self.widen * self.reach(x), model / 2)
        else:
            half = self.quantile / Z90 * np.sqrt(model ** 2 + Z90 ** 2 * self.tau2 * max(x, 1e-3))
        lo, hi = center - float(half[0]), center + float(half[1])
        extra = not np.allclose(half, model)
        shift = center - est.f1
        # P(beats the best): the draws' probability moved with the centre, as a normal approximation
        sd = max((hi - lo) / (2 * Z90), 1e-6)
        p = float(norm.sf((est.best_ref_f1 - center) / sd)) if shift or extra else est.p_better
        line = f"{self.line()}; correction {-(self.a + self.b * x):+.4f} at agreement {1 - x:.1%}"
        moved = float(np.mean(half - model))
        if self.widen is not None:
            line += (f"; interval {'widened' if moved >= 0 else 'narrowed'} by {abs(moved):.4f} a side, as 90 % of "
                     f"the ledger's own leave-one-out errors would have fitted")
        else:
            line += (f"; interval widened by {moved:.4f} a side by the ledger's spread, known from only {len(self.rows)} "
                     f"errors (Student's t, {len(self.rows) - 1} degrees of freedom)")
        est.evidence.append(line)
        return replace(est, f1=center, f1_interval=(lo, hi), p_better=p)


LOO_WORKERS = min(8, os.cpu_count() or 1)  # threads: numpy releases the GIL in the posterior's array work (1.7x on 2 cores)


def leave_one_out(refs: list[Reference], n_refs: int, run: Callable[[Reference, list[Reference]], Estimate],
                  progress: Callable[[int, int], None] | None = None) -> SelfCalibration | None:
    """Each scored submission estimated from the best `n_refs` of the others by `run(new, refs)`; None below
    three submissions (one to estimate, one reference, one to fit the formula's c)."""
    if len(refs) < 3:
        return None
    return _passes(refs, [n_refs], run, progress)[0]


def _passes(refs: list[Reference], counts: list[int], run: Callable[[Reference, list[Reference]], Estimate],
            progress: Callable[[int, int], None] | None) -> list[SelfCalibration]:
    """leave_one_out with each number of references in `counts`, every estimate of every pass run at once on
    LOO_WORKERS threads (they are independent and each seeds its own draws: the same result in any order);
    `progress(done, total)` is called from this thread as they finish."""
    jobs = []
    for n_refs in counts:
        for new in refs:
            others = sorted((r for r in refs if r is not new), key=lambda r: -r.f1)
            jobs.append((new, others, others[:max(1, n_refs)]))
    with ThreadPoolExecutor(LOO_WORKERS) as pool:
        futures = [pool.submit(run, new, use) for new, _, use in jobs]
        try:
            for done, future in enumerate(as_completed(futures), start=1):
                future.result()  # a failed estimate raises here
                if progress:
                    progress(done, len(jobs))
        except BaseException:  # it, or Ctrl-C: stop without running the rest first
            pool.shutdown(cancel_futures=True)
            raise
    rows = [LooRow(new.name, new.f1, (e := f.result()).f1, (e.f1_interval[1] - e.f1_interval[0]) / 2,
                   formula(new.sub.ans, others), 1 - agreement(new.sub.ans, use[0].sub.ans))
            for (new, others, use), f in zip(jobs, futures, strict=True)]
    k = len(refs)
    return [SelfCalibration.fit(rows[i * k:(i + 1) * k]) for i in range(len(counts))]


def choose_reference_count(refs: list[Reference], n_refs: int, run: Callable[[Reference, list[Reference]], Estimate],
                           progress: Callable[[int, int], None] | None = None) -> tuple[SelfCalibration | None, int, str | None]:
    """The leave-one-out with the best `n_refs` references and with the best one alone: (its calibration, how many
    to use, a line saying why when one alone did better). Compared by the corrected (honest) leave-one-out MAE;
    a tie keeps `n_refs`. None below three submissions, as leave_one_out."""
    if n_refs <= 1 or len(refs) < 3:
        return leave_one_out(refs, n_refs, run, progress), n_refs, None
    many, one = _passes(refs, [n_refs, 1], run, progress)
    if one.mae_comp < many.mae_comp:
        return one, 1, (f"references: the best one alone, as on this ledger it did better left-one-out than the best "
                        f"{n_refs} (MAE {one.mae_comp:.4f} against {many.mae_comp:.4f}): those err together here")
    return many, n_refs, None
