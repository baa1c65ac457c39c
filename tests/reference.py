"""An independent NumPy implementation of the seed README's update rules, for tests.

Written from the seed's "How It Works" formulas (float64), with the interval,
accumulation and per-variable bias-correction rules this project states; it shares
no code with the package.
"""

import numpy as np


class NumpyNested:
    def __init__(self, shapes, mode="attention", lr=1e-3, decays=(0.94, 0.994, 0.9999),
                 weights=(0.1, 0.3, 0.6), mix=0.5, beta_1=0.9, beta_2=0.999, eps=1e-7,
                 amsgrad=False, intervals=None, accumulate=True, warmup=0,
                 adaptive_rate=0.1, bound=4.0, scoring="dot", temperature=0.25):
        self.mode, self.lr, self.decays, self.weights, self.mix = mode, lr, decays, weights, mix
        self.b1, self.b2, self.eps, self.amsgrad = beta_1, beta_2, eps, amsgrad
        self.intervals = intervals or [1] * len(shapes)
        self.accumulate, self.warmup = accumulate, warmup
        self.rate, self.bound = adaptive_rate, bound
        self.scoring, self.temperature = scoring, temperature
        z = lambda: [np.zeros(s) for s in shapes]  # noqa: E731
        self.mems = [z(), z(), z()]
        self.m, self.v, self.vhat, self.acc = z(), z(), z(), z()
        self.count = [0] * len(shapes)
        w = np.asarray(weights, float) / sum(weights)
        self.logits = [np.log(np.maximum(w, 1e-6)) for _ in shapes]
        self.t = 0
        self.last_weights = [None] * len(shapes)

    def step(self, params, grads, lr=None):
        lr = self.lr if lr is None else lr
        t = self.t
        out = []
        for i, (p, g) in enumerate(zip(params, grads)):
            p = np.array(p, float)
            g = np.array(g, float)
            k = self.intervals[i]
            due = t < self.warmup or (t - self.warmup + 1) % k == 0
            if not due:
                if self.accumulate:
                    self.acc[i] = self.acc[i] + g
                out.append(p)
                continue
            if self.accumulate and k > 1:
                n = 1 if t < self.warmup else k
                g = (self.acc[i] + g) / n
                self.acc[i] = np.zeros_like(g)
            self.count[i] += 1
            c = self.count[i]
            if self.mode == "none":
                self.m[i] = self.b1 * self.m[i] + (1 - self.b1) * g
                self.v[i] = self.b2 * self.v[i] + (1 - self.b2) * g * g
                v = self.v[i]
                if self.amsgrad:
                    self.vhat[i] = np.maximum(self.vhat[i], v)
                    v = self.vhat[i]
                alpha = lr * np.sqrt(1 - self.b2 ** c) / (1 - self.b1 ** c)
                out.append(p - alpha * self.m[i] / (np.sqrt(v) + self.eps))
                continue
            old = [m[i] for m in self.mems]
            if self.mode == "adaptive":
                cos = np.array([np.sum(g * m) / max(np.linalg.norm(g) * np.linalg.norm(m), 1e-12)
                                for m in old])
                a = self.logits[i]
                w = np.exp(a - a.max()); w /= w.sum()
                a = np.clip(a + self.rate * w * (cos - np.sum(w * cos)), -self.bound, self.bound)
                self.logits[i] = a
            new = [d * m + (1 - d) * g for d, m in zip(self.decays, old)]
            for tier, m in zip(self.mems, new):
                tier[i] = m
            if self.mode == "fixed":
                w = np.asarray(self.weights, float)
            elif self.mode == "attention" and self.scoring == "cosine":
                scores = np.array([np.sum(g * m) / max(np.linalg.norm(g) * np.linalg.norm(m),
                                                       1e-12) for m in new]) / self.temperature
                w = np.exp(scores - scores.max()); w /= w.sum()
            elif self.mode == "attention":
                scores = np.array([np.sum(g * m) for m in new]) / np.sqrt(g.size)
                w = np.exp(scores - scores.max()); w /= w.sum()
            else:
                a = self.logits[i]
                w = np.exp(a - a.max()); w /= w.sum()
            self.last_weights[i] = w
            combined = sum(wj * m for wj, m in zip(w, new))
            eff = (1 - self.mix) * g + self.mix * combined
            self.v[i] = self.b2 * self.v[i] + (1 - self.b2) * eff * eff
            v = self.v[i]
            if self.amsgrad:
                self.vhat[i] = np.maximum(self.vhat[i], v)
                v = self.vhat[i]
            out.append(p - lr * eff / (np.sqrt(v / (1 - self.b2 ** c)) + self.eps))
        self.t += 1
        return out
