"""Codebook bookkeeping: initialization from per-scale moment statistics of encoder outputs, usage EMA and
perplexity, and re-initialization of dead codes from the statistics of the live ones."""
import torch


def codebook_table(autoencoder):
    """The stored codebook parameter (V, E): the raw table under the unit-norm parametrization when the model
    normalizes (its rows are normalized on use), else the codebook itself."""
    embedding = autoencoder.quantize.embedding
    return embedding.parametrizations.weight.original if autoencoder.normalize else embedding.weight


class MomentStats:
    """Running per-channel sums of latent vectors and of their squares, one row per pyramid side."""

    def __init__(self, sides, dim):
        self.sides = list(sides)
        self.count = torch.zeros(len(self.sides), dtype=torch.float64)  # (S,)
        self.sum = torch.zeros(len(self.sides), dim, dtype=torch.float64)  # (S, E)
        self.sum_sq = torch.zeros(len(self.sides), dim, dtype=torch.float64)  # (S, E)

    def update(self, side, latents):
        """Add latents (B, E, side, side) to the statistics of that side."""
        flat = latents.detach().to('cpu', torch.float64).transpose(0, 1).flatten(1)  # (E, B*side*side)
        i = self.sides.index(side)
        self.count[i] += flat.shape[1]
        self.sum[i] += flat.sum(1)
        self.sum_sq[i] += flat.square().sum(1)

    def mean_std(self, side):
        """Per-channel mean and (population) standard deviation of the latents seen at side, (E,) each."""
        i = self.sides.index(side)
        mean = self.sum[i] / self.count[i]
        return mean, (self.sum_sq[i] / self.count[i] - mean.square()).clamp_min(0).sqrt()

    def state_dict(self):
        return {'sides': self.sides, 'count': self.count, 'sum': self.sum, 'sum_sq': self.sum_sq}

    def load_state_dict(self, state):
        if list(state['sides']) != self.sides:
            raise ValueError(f'moment statistics were gathered for sides {state["sides"]}, this run has {self.sides}')
        self.count, self.sum, self.sum_sq = state['count'], state['sum'], state['sum_sq']


def rows_per_scale(counts, n_rows):
    """Codebook rows per scale, in proportion to counts (floored; the largest side with data takes the rest)."""
    total = float(sum(counts))
    rows = [int(n_rows * c / total) for c in counts]
    last = max(i for i, c in enumerate(counts) if c > 0)
    rows[last] += n_rows - sum(rows)
    return rows


@torch.no_grad()
def init_codebook_from_stats(autoencoder, stats, generator):
    """Draw every code from N(mean, std^2) of one scale's latents, scales sharing the rows in proportion to
    the latents seen (ascending sides, consecutive row blocks), and mark the codebook initialized.
    Returns the rows per scale."""
    if stats.count.sum() == 0:
        raise RuntimeError('no latents were gathered to initialize the codebook from')
    table = codebook_table(autoencoder)
    rows = rows_per_scale(stats.count.tolist(), table.shape[0])
    draws = []
    for side, n in zip(stats.sides, rows):
        if n:
            mean, std = stats.mean_std(side)
            draws.append(mean + std * torch.randn(n, table.shape[1], generator=generator, dtype=torch.float64))
    table.copy_(torch.cat(draws))  # (V, E)
    autoencoder.quantize.initialized.fill_(True)
    return rows


@torch.no_grad()
def update_usage(usage, counts, alpha):
    """EMA of code frequencies: usage (V,) <- (1 - alpha) usage + alpha counts / counts.sum(), in place."""
    usage.mul_(1 - alpha).add_(counts / counts.sum().clamp_min(1), alpha=alpha)


def perplexity(frequencies):
    """exp(entropy) of a distribution given by non-negative frequencies (V,): the effective number of codes."""
    p = frequencies / frequencies.sum().clamp_min(1e-30)
    return float(torch.exp(-(p * torch.log(p + 1e-10)).sum()))


def live_codes(usage, threshold):
    """Codes whose share of the usage EMA exceeds threshold / V, (V,) bool."""
    return usage / usage.sum().clamp_min(1e-30) > threshold / usage.numel()


@torch.no_grad()
def reinit_dead_codes(autoencoder, live, generator):
    """Redraw the codes that are not live from N(mean, std^2) of the live (effective) codes; returns how many."""
    dead = (~live).nonzero().squeeze(1)
    if len(dead) == 0 or int(live.sum()) < 2:
        return 0
    codebook = autoencoder.codebook()[live]  # (L, E)
    mean, std = codebook.mean(0), codebook.std(0)
    table = codebook_table(autoencoder)
    table[dead] = mean + std * torch.randn(len(dead), table.shape[1], generator=generator).to(table)
    return len(dead)
